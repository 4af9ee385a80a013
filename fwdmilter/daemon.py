"""``fwdmilter``: the daemon.

    fwdmilter [--config PATH]           run in the foreground until SIGTERM
    fwdmilter --check-config [--config PATH]
                                        validate, print the effective settings

Logs go to standard error (journald adds time and host), one line per
decision in Postfix's key=value style. The configuration comes from
``--config``, ``$FWDMILTER_CONFIG`` or /etc/fwdmilter/fwdmilter.toml.

Signals: SIGHUP re-reads the configuration and the SRS secrets (new
connections get the new settings; running transactions finish with theirs);
SIGTERM and SIGINT stop accepting connections and let running transactions
finish, for at most ``milter.shutdown_timeout`` seconds.

Two processes. libmilter starts a thread of its own that sigwait()s for
SIGHUP, SIGTERM and SIGINT and stops the milter on any of them, at once,
transactions and all; in a process that also wants SIGHUP for itself there
is no way to be sure which thread a signal reaches (a test saw libmilter win
a SIGHUP sent just after start). So the process systemd starts is a small
supervisor without libmilter: it takes the signals, passes them on as
commands over a pipe, and speaks sd_notify; the milter runs in a worker
process it forks, where these signals are ignored (so the kernel discards
them before libmilter's thread can take one). The worker reports back over
a second pipe (ready, reloading, stopping), and its exit status is the
supervisor's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Final

import Milter
import milter

from fwdmilter import __version__, config, runtime, sdnotify, tcp
from fwdmilter.alerts import AlertSender
from fwdmilter.errors import ConfigError, FwdmilterError, StoreUnavailable
from fwdmilter.milter import WANTED_ACTIONS, FwdMilter
from fwdmilter.store.base import HeldEntry

__all__ = ["main", "build_parser", "Server", "supervise"]

log = logging.getLogger("fwdmilter")

#: sysexits(3): configuration error. systemd is told not to restart on it.
EX_CONFIG: Final = 78
#: sysexits(3): temporary failure (the store cannot be reached at start):
#: systemd restarts the service until it can.
EX_TEMPFAIL: Final = 75
EX_SOFTWARE: Final = 70


class _PostfixStyle(logging.Formatter):
    """``warning: text`` for warnings and worse, plain ``text`` for info, as
    Postfix writes its log."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        if record.levelno < logging.INFO:
            return f"debug: {text}"
        return text


def setup_logging(level: str) -> None:
    # The log shows the message alone: skip what each record would gather
    # for other formats (the caller's file and line, found by walking the
    # stack; thread, process and task names), as the logging HOWTO's
    # "Optimization" section describes. A tenth of the milter's Python time
    # per message went there.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    if not any(getattr(h, "_fwdmilter", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PostfixStyle("%(message)s"))
        handler._fwdmilter = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())


def _socket_path(spec: str) -> str:
    kind, _, rest = spec.partition(":")
    return rest if kind in ("unix", "local") else ""


class Server:
    """Runs the milter in the worker: libmilter on a thread, the supervisor's
    commands (reload, stop) on the main thread. ``tell`` reports to the
    supervisor: "ready STATUS", "reloading", "stopping"."""

    def __init__(self, cfg: config.Config, tell: Callable[[str], None] | None = None) -> None:
        self._tell = tell or (lambda event: None)
        self._rt = runtime.build(cfg)
        self._cfg_path = cfg.path
        self._connections = 0
        self._transactions = 0
        self._active_cond = threading.Condition()
        self._stopping = False
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._alerts = AlertSender(lambda: self._rt.cfg, lambda: self._rt.store)
        self._milter_error: Exception | None = None

    # -- hooks for connections ------------------------------------------------

    @property
    def runtime(self) -> runtime.Runtime:
        return self._rt

    @property
    def stopping(self) -> bool:
        return self._stopping

    def connection_opened(self) -> None:
        with self._active_cond:
            self._connections += 1

    def connection_closed(self) -> None:
        with self._active_cond:
            self._connections -= 1

    def transaction_started(self) -> None:
        with self._active_cond:
            self._transactions += 1

    def transaction_ended(self) -> None:
        with self._active_cond:
            self._transactions -= 1
            self._active_cond.notify_all()

    def alert(self, entry: HeldEntry) -> None:
        self._alerts.enqueue(entry)

    def _new_connection(self) -> FwdMilter:
        return FwdMilter(self._rt, self)

    # -- commands from the supervisor -------------------------------------------

    def command(self, line: str) -> None:
        """Act on one command: "reload" or "stop" (anything else: stop)."""
        if line == "reload":
            self._reload.set()
        else:
            self._stop.set()
        self._wake.set()

    def _read_commands(self, source: BinaryIO) -> None:
        """One command a line; the end of the pipe (the supervisor is gone)
        means stop."""
        with source:
            for raw in source:
                self.command(raw.decode("ascii", "replace").strip())
        self.command("stop")

    # -- running --------------------------------------------------------------

    def _register(self) -> None:
        cfg = self._rt.cfg
        Milter.factory = self._new_connection
        milter.set_flags(WANTED_ACTIONS)
        milter.set_connect_callback(Milter.connect_callback)
        milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
        milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
        milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
        milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
        milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
        milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
        milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
        milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
        milter.set_close_callback(Milter.close_callback)
        milter.setconn(cfg.milter.socket)
        milter.settimeout(cfg.milter.timeout)
        milter.register(
            "fwdmilter",
            data=lambda ctx: ctx.getpriv().data(),
            unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
            negotiate=Milter.negotiate_callback,
        )

    def _open_socket(self) -> None:
        cfg = self._rt.cfg
        path = _socket_path(cfg.milter.socket)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        milter.opensocket(True)
        if path:
            Path(path).chmod(int(cfg.milter.socket_mode, 8))
        port = tcp.listen_port(cfg.milter.socket)
        if port is not None and not tcp.set_nodelay_on_listener(port):
            # Accepted sockets inherit TCP_NODELAY from the listener (fwdmilter.tcp, point 1).
            log.warning("%s: TCP_NODELAY not set; replies may wait for ACKs", cfg.milter.socket)

    def _milter_main(self) -> None:
        try:
            milter.main()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self._milter_error = exc
        finally:
            self._wake.set()

    def run(self, commands: BinaryIO | None = None) -> int:
        """Serve until told to stop; ``commands`` is the supervisor's pipe."""
        cfg = self._rt.cfg
        if commands is not None:
            threading.Thread(
                target=self._read_commands, args=(commands,), name="commands", daemon=True
            ).start()
        try:
            self._register()
            self._open_socket()
        except (milter.error, OSError) as exc:
            log.error("cannot listen on %s: %s", cfg.milter.socket, exc)
            return EX_SOFTWARE
        thread = threading.Thread(target=self._milter_main, name="libmilter", daemon=True)
        thread.start()
        log.info(
            "fwdmilter %s listening on %s, srs domain %s, store %s",
            __version__,
            cfg.milter.socket,
            cfg.srs.domain,
            cfg.as_dict()["store"]["url"],
        )
        self._tell(f"ready listening on {cfg.milter.socket}")
        while thread.is_alive() and not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
        if not self._stop.is_set():
            log.error("libmilter stopped unexpectedly: %s", self._milter_error)
            self._shutdown()
            return EX_SOFTWARE
        self._graceful_stop()
        return 0

    def _graceful_stop(self) -> None:
        """Refuse what is new, let what runs finish (within the bound), stop.

        libmilter's own stop (smfi_stop) would also cut the transactions
        under way, so it comes last: first the socket goes from the file
        system (a unix socket: new connections fail at once) and new
        connections and transactions are refused (the MTA applies
        milter_default_action, or the client gets 451 4.3.2), then the
        running transactions are waited for.
        """
        timeout = self._rt.cfg.milter.shutdown_timeout
        self._tell("stopping")
        self._stopping = True
        path = _socket_path(self._rt.cfg.milter.socket)
        if path:
            with contextlib.suppress(OSError):
                Path(path).unlink()
        with self._active_cond:
            log.info(
                "stopping: no new connections; waiting up to %.0fs for %d transactions"
                " (%d connections)",
                timeout,
                self._transactions,
                self._connections,
            )
            deadline = time.monotonic() + timeout
            while self._transactions > 0 and time.monotonic() < deadline:
                self._active_cond.wait(max(0.0, min(1.0, deadline - time.monotonic())))
            left = self._transactions
        if left:
            log.warning(
                "stopping with %d transactions still running (milter.shutdown_timeout)", left
            )
        # smfi_stop waits for libmilter's accept loop, which looks up from its
        # poll() only every few seconds: it runs on a thread of its own and
        # nothing waits for it.
        threading.Thread(target=milter.stop, name="smfi_stop", daemon=True).start()
        self._shutdown()
        log.info("stopped")

    def _shutdown(self) -> None:
        self._alerts.close()
        self._rt.store.close()
        self._rt.metrics.close()

    def reload(self) -> None:
        """Re-read the configuration and secrets; keep running as before if
        they are unusable."""
        self._tell("reloading")
        old = self._rt
        try:
            cfg = config.load(self._cfg_path or None)
            if cfg.milter.socket != old.cfg.milter.socket:
                log.warning(
                    "reload: milter.socket changed: that takes a restart; keeping %s",
                    old.cfg.milter.socket,
                )
            same_store = cfg.store == old.cfg.store
            same_metrics = cfg.metrics == old.cfg.metrics
            rt = runtime.build(
                cfg,
                store=old.store if same_store else None,
                metrics_=old.metrics if same_metrics else None,
            )
        except FwdmilterError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
        else:
            self._rt = rt
            setup_logging(cfg.logging.level)
            if not same_store:
                # Connections that started before the reload may still use it.
                threading.Timer(old.cfg.milter.shutdown_timeout, old.store.close).start()
            if not same_metrics:
                old.metrics.close()
            log.info("reloaded configuration from %s", cfg.path)
        self._tell(f"ready listening on {self._rt.cfg.milter.socket}")


# -- the supervisor ----------------------------------------------------------------

_NOTIFY: Final = {
    "ready": "READY=1",
    "reloading": "RELOADING=1",
    "stopping": "STOPPING=1",
}


def _worker(cfg: config.Config, commands_fd: int, events_fd: int) -> int:
    """The worker process: the milter itself."""
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        # Ignored, so discarded when sent: libmilter's signal thread never
        # gets one. The supervisor's commands come over the pipe instead.
        signal.signal(sig, signal.SIG_IGN)
    events = os.fdopen(events_fd, "wb", buffering=0)

    def tell(event: str) -> None:
        with contextlib.suppress(OSError):
            events.write(event.encode("utf-8", "replace") + b"\n")

    try:
        server = Server(cfg, tell)
    except ConfigError as exc:
        print(f"fwdmilter: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except StoreUnavailable as exc:
        print(f"fwdmilter: cannot reach the store, will try again: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except FwdmilterError as exc:
        print(f"fwdmilter: cannot start: {exc}", file=sys.stderr)
        return EX_CONFIG
    return server.run(os.fdopen(commands_fd, "rb"))


class _Supervisor:
    def __init__(self, pid: int, commands_fd: int, events_fd: int, stop_bound: float) -> None:
        self.pid = pid
        self.commands_fd = commands_fd
        self.events = os.fdopen(events_fd, "rb", buffering=0)
        self.stop_bound = stop_bound
        self.stop_sent_at = 0.0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        command = b"reload\n" if signum == signal.SIGHUP else b"stop\n"
        if command == b"stop\n" and not self.stop_sent_at:
            self.stop_sent_at = time.monotonic()
        with contextlib.suppress(OSError):
            os.write(self.commands_fd, command)

    def relay(self) -> None:
        """Pass the worker's events on to systemd until the worker closes its pipe."""
        buffered = b""
        while True:
            if self.stop_sent_at and time.monotonic() - self.stop_sent_at > self.stop_bound:
                log.error("the worker did not stop in time; killing it")
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
            ready, _, _ = select.select([self.events], [], [], 1.0)
            if not ready:
                continue
            chunk = self.events.read(4096)
            if not chunk:
                return
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                event, _, status = line.decode("utf-8", "replace").partition(" ")
                state = _NOTIFY.get(event)
                if state is not None:
                    fields = {"STATUS": status} if status else {}
                    sdnotify.notify(state, **fields)


def supervise(cfg: config.Config) -> int:
    """Fork the worker, relay signals to it and its events to systemd, and
    return its exit status."""
    commands_r, commands_w = os.pipe()
    events_r, events_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(commands_w)
        os.close(events_r)
        code = EX_SOFTWARE
        try:
            code = _worker(cfg, commands_r, events_w)
        except BaseException:
            log.exception("the worker failed")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(commands_r)
    os.close(events_w)
    sup = _Supervisor(pid, commands_w, events_r, cfg.milter.shutdown_timeout + 15.0)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, sup.on_signal)
    try:
        sup.relay()
    finally:
        os.close(commands_w)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if status else 0


def _check_config(cfg: config.Config) -> int:
    runtime.make_srs(cfg)  # reads and checks the secrets file
    for section, values in cfg.as_dict().items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {_toml(value)}")
        print()
    return 0


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def build_parser() -> argparse.ArgumentParser:
    """The command line; its own function so that the man page is made from it."""
    parser = argparse.ArgumentParser(
        prog="fwdmilter",
        description="Mail forwarding milter: SPF at MAIL FROM, SRS, no backscatter.",
    )
    parser.add_argument("--config", metavar="PATH", help="configuration file")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration and secrets, print the effective settings, exit",
    )
    parser.add_argument("--version", action="version", version=f"fwdmilter {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
        setup_logging(cfg.logging.level)
        if args.check_config:
            return _check_config(cfg)
    except ConfigError as exc:
        print(f"fwdmilter: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except FwdmilterError as exc:
        print(f"fwdmilter: cannot start: {exc}", file=sys.stderr)
        return EX_CONFIG
    return supervise(cfg)


if __name__ == "__main__":
    sys.exit(main())
