"""Private Postfix instances on loopback, built for fast tests.

An instance has its config and queue under the pytest temp folder and its
``data_directory`` under ``runtime`` (see below); it listens on a free port
of 127.0.0.1 and never touches the system Postfix in /etc/postfix.

API::

    pf = PostfixInstance("border", base=tmp / "border", runtime=rt, hostname="border.fwd.example",
                         main={"relay_domains": "fwd.example"})
    pf.write_map("transport", {"inner.example": "smtp:[127.0.0.1]:2525"})  # -> "hash:..."
    port2 = pf.add_smtpd("noMilter", {"smtpd_milters": ""})   # a second listener, -o options
    pf.start()                       # returns when master has bound its ports
    pf.port                          # the main smtpd listener
    pf.set_main(smtpd_milters="unix:/run/x.sock")   # writes main.cf and reloads if running
    pf.queue() / pf.queue("hold")    # postqueue -j, parsed into QueueEntry
    pf.wait_queue(lambda q: ..., timeout=10)
    pf.flush(); pf.postsuper("-H", "ALL"); pf.postcat(queue_id)
    pf.log(); pf.log_tail(); pf.wait_log(r"milter triggers HOLD"); pf.problems()
    pf.stop()                        # also run at interpreter exit if a test forgot

Why ``runtime``: pytest's temp folder is private to root (mode 0700) and
Postfix reaches some paths as user ``postfix`` after dropping privileges:
``master.lock`` in the data directory and the milter sockets. Those live in
a root-owned, world-traversable folder (``RuntimeDir``), removed at the end.

The master runs as ``postfix -c DIR start-fg`` (a ``quick-start`` file skips
the slow integrity check; the queue folders are made here, as
``post-install`` would), so it is our child and its log goes to
``maillog_file`` from the first line: read ``pf.log()`` when something fails.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import json
import os
import pty
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.proc import Process, free_port, poll, wait_until

__all__ = [
    "FAST_MAIN",
    "MILTER_UNAVAILABLE",
    "PostfixError",
    "PostfixInstance",
    "QueueEntry",
    "RuntimeDir",
    "hash_map",
]


#: What Postfix answers when a milter is unavailable or times out and
#: milter_default_action is tempfail: never the milter's own reply.
MILTER_UNAVAILABLE = "451 4.7.1 Service unavailable - try again later"


class PostfixError(Exception):
    """A Postfix command or instance failed; the message carries its log."""


# Tuning for tests: retries within a second or two, nothing waits on DNS or
# on idle connections, every error is visible at once.
FAST_MAIN: dict[str, str] = {
    "compatibility_level": "3.6",
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "mydestination": "",
    "mynetworks": "127.0.0.1/32",
    "relay_domains": "",
    "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
    "alias_maps": "",
    "alias_database": "",
    "local_recipient_maps": "",
    "biff": "no",
    "append_dot_mydomain": "no",
    "readme_directory": "no",
    "smtp_dns_support_level": "disabled",
    "smtp_address_preference": "ipv4",
    "smtpd_peername_lookup": "no",
    "queue_run_delay": "1s",
    # qmgr takes a deferred file back at the first queue run where its time
    # stamp (deferral + backoff, in whole seconds) is at most a second ahead
    # (qmgr_active.c). With a 1 s backoff that can be milliseconds after the
    # deferral, while the delivery agent still holds the file: qmgr then
    # logs "skipped, still being delivered" and parks the message for 60 s.
    # 3 s leaves the agent a second at least (measured: retries 1.1-2.2 s
    # apart; with 1 s/2 s some came 0.07 s apart). See flush() too.
    "minimal_backoff_time": "3s",
    "maximal_backoff_time": "3s",
    "maximal_queue_lifetime": "1h",
    "bounce_queue_lifetime": "1h",
    "delay_warning_time": "0",
    "in_flow_delay": "0",
    "smtp_connect_timeout": "2s",
    "smtp_helo_timeout": "20s",
    "smtp_mail_timeout": "20s",
    "smtp_rcpt_timeout": "20s",
    "smtp_data_init_timeout": "20s",
    "smtp_data_xfer_timeout": "20s",
    "smtp_data_done_timeout": "20s",
    "smtp_connection_cache_on_demand": "no",
    "smtpd_error_sleep_time": "0",
    "smtpd_soft_error_limit": "1000",
    "smtpd_hard_error_limit": "1000",
    "smtpd_junk_command_limit": "1000",
}

# master.cf without chroot (column 5 "n"); the smtpd listener is added by
# the instance. Only the services a relay-only MTA uses.
_MASTER = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# The queue folders as Postfix's post-install makes them (postfix-files).
_QUEUE_DIRS = (
    ("active", "postfix", "root", 0o700),
    ("bounce", "postfix", "root", 0o700),
    ("corrupt", "postfix", "root", 0o700),
    ("defer", "postfix", "root", 0o700),
    ("deferred", "postfix", "root", 0o700),
    ("flush", "postfix", "root", 0o700),
    ("hold", "postfix", "root", 0o700),
    ("incoming", "postfix", "root", 0o700),
    ("private", "postfix", "root", 0o700),
    ("saved", "postfix", "root", 0o700),
    ("trace", "postfix", "root", 0o700),
    ("maildrop", "postfix", "postdrop", 0o730),
    ("public", "postfix", "postdrop", 0o710),
    ("pid", "root", "root", 0o755),
)

_live: set[PostfixInstance] = set()


@atexit.register
def _stop_forgotten() -> None:
    for pf in list(_live):
        with contextlib.suppress(Exception):
            pf.stop()


class RuntimeDir:
    """A root-owned 0755 folder outside pytest's private temp tree.

    For what Postfix reaches as user ``postfix``: data directories and
    milter sockets. Under /run when it is writable (short paths: a unix
    socket path holds at most 107 bytes; and Sendmail refuses sockets under a
    world-writable folder such as /tmp).
    """

    def __init__(self, prefix: str = "fwdmilter-e2e-") -> None:
        parent = "/run" if os.access("/run", os.W_OK) else None
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self.path.chmod(0o755)

    def socket(self, name: str) -> Path:
        """A path for a unix socket named ``name`` (the file is not made)."""
        return self.path / f"{name}.sock"

    def data_dir(self, name: str) -> Path:
        path = self.path / f"{name}-data"
        path.mkdir(mode=0o700)
        os.chown(path, pwd.getpwnam("postfix").pw_uid, -1)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class QueueEntry:
    """One message as ``postqueue -j`` lists it."""

    queue_name: str
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    delay_reasons: tuple[str, ...]
    arrival_time: int
    message_size: int
    raw: dict[str, object] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, line: str) -> QueueEntry:
        raw = json.loads(line)
        rcpts = raw.get("recipients") or []
        return cls(
            queue_name=str(raw["queue_name"]),
            queue_id=str(raw["queue_id"]),
            # showq writes the null sender as $empty_address_recipient's
            # default, "MAILER-DAEMON"; a real address would be qualified.
            sender=_sender(str(raw.get("sender", ""))),
            recipients=tuple(str(r["address"]) for r in rcpts),
            delay_reasons=tuple(str(r.get("delay_reason", "")) for r in rcpts),
            arrival_time=int(raw.get("arrival_time", 0)),
            message_size=int(raw.get("message_size", 0)),
            raw=raw,
        )


def _write_old(path: Path, text: str) -> None:
    """Write a config file dated a minute ago.

    Postfix reads main.cf only once its time stamp is in the past, and polls
    every 0.3 s until then (dict_load_file): a file written this very second
    costs every Postfix command about 1.5 s.
    """
    path.write_text(text)
    then = time.time() - 60
    os.utime(path, (then, then))


def _master_option(key: str, value: str) -> str:
    # master.cf(5): "-o { name = value }" lets a value hold spaces (Postfix 3.0).
    if re.search(r"\s", value):
        return f"  -o {{ {key} = {value} }}"
    return f"  -o {key}={value}"


def _sender(shown: str) -> str:
    return "" if shown == "MAILER-DAEMON" else shown


def hash_map(
    path: Path, entries: Mapping[str, str] | Iterable[tuple[str, str]], config_dir: Path
) -> str:
    """Write a Postfix lookup table and ``postmap`` it; return ``hash:PATH``."""
    items = entries.items() if isinstance(entries, Mapping) else entries
    path.write_text("".join(f"{k} {v}\n" for k, v in items))
    _run(["postmap", "-c", str(config_dir), f"hash:{path}"])
    return f"hash:{path}"


def _run(argv: list[str], env: Mapping[str, str] | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        errors="replace",
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise PostfixError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class PostfixInstance:
    """One Postfix: its own config, queue, data directory, log and ports."""

    def __init__(
        self,
        name: str,
        *,
        base: Path,
        runtime: RuntimeDir,
        hostname: str,
        main: Mapping[str, str | None] | None = None,
        master_extra: Iterable[str] = (),
        port: int | None = None,
    ) -> None:
        self.name = name
        self.base = base
        self.hostname = hostname
        self.config_dir = base / "etc"
        self.queue_dir = base / "queue"
        self.log_path = base / "maillog"
        self.port = port or free_port()
        for d in (self.config_dir, self.queue_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.data_dir = runtime.data_dir(name)
        self._make_queue_dirs()
        self.main: dict[str, str] = {
            **FAST_MAIN,
            "myhostname": hostname,
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(base),
        }
        self._listeners: list[tuple[str, int, dict[str, str]]] = []
        self._master_extra = list(master_extra)
        self.update_main(main or {})
        self._proc: Process | None = None

    # -- configuration ---------------------------------------------------------

    def _make_queue_dirs(self) -> None:
        for sub, user, group, mode in _QUEUE_DIRS:
            path = self.queue_dir / sub
            path.mkdir(exist_ok=True)
            os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
            path.chmod(mode)

    def update_main(self, changes: Mapping[str, str | None]) -> None:
        """Set (or with ``None`` remove) main.cf parameters; no reload."""
        for key, value in changes.items():
            if value is None:
                self.main.pop(key, None)
            else:
                self.main[key] = value

    def set_main(self, **changes: str | None) -> None:
        """Change main.cf and, if running, reload so that new processes use it."""
        self.update_main(changes)
        if self.running:
            self._write_config()
            self.reload()

    def write_map(self, name: str, entries: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
        """A hash table in the config dir; return ``hash:PATH`` for main.cf.

        Postfix daemons notice a rebuilt table and restart on their own, but
        ``reload()`` after a change makes the switch immediate.
        """
        if not (self.config_dir / "main.cf").exists():
            self._write_config()
        return hash_map(self.config_dir / name, entries, self.config_dir)

    def add_smtpd(self, label: str, options: Mapping[str, str] | None = None) -> int:
        """Another smtpd listener on a free port with ``-o`` options; return its port.

        ``label`` names it in the log (``syslog_name=postfix/LABEL``). When the
        instance runs, master.cf is rewritten and master reloaded.
        """
        port = free_port()
        opts = {"syslog_name": f"postfix/{label}", **(options or {})}
        self._listeners.append((label, port, opts))
        if self.running:
            self._write_config()
            self.reload()
            wait_until(lambda: self._listening(port), 10, f"{self.name} listens on {port}")
        return port

    @property
    def listener_ports(self) -> dict[str, int]:
        """The extra smtpd listeners: label -> port."""
        return {label: port for label, port, _ in self._listeners}

    def _write_config(self) -> None:
        main = "".join(f"{k} = {v}\n" for k, v in self.main.items())
        _write_old(self.config_dir / "main.cf", main)
        lines = [f"{self.port}      inet  n       -       n       -       -       smtpd"]
        for _, port, opts in self._listeners:
            lines.append(f"{port}      inet  n       -       n       -       -       smtpd")
            lines += [_master_option(k, v) for k, v in opts.items()]
        master = "\n".join(lines) + "\n" + _MASTER + "".join(x + "\n" for x in self._master_extra)
        _write_old(self.config_dir / "master.cf", master)

    def postconf(self, *args: str) -> str:
        """``postconf -c CONFIG_DIR ARGS``; e.g. ``postconf("-h", "myhostname")``."""
        return _run(["postconf", "-c", str(self.config_dir), *args])

    # -- life ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def start(self, timeout: float = 20.0) -> None:
        """Start master; return once it listens. Fails with the reason and the log."""
        for _ in range(3):
            try:
                self._start(timeout)
            except PostfixError as e:
                # Another program took a port between free_port() and bind().
                if "Address already in use" not in str(e):
                    raise
                self.port = free_port()
                self._listeners = [(lb, free_port(), o) for lb, _, o in self._listeners]
            else:
                return
        raise PostfixError(f"Postfix {self.name}: no free ports after three tries")

    def _start(self, timeout: float) -> None:
        if self.running:
            return
        self._write_config()
        (self.queue_dir / "quick-start").touch()
        started = self.log().count("daemon started")
        self._proc = Process(
            ["postfix", "-c", str(self.config_dir), "start-fg"], self.base / "start-fg.out"
        )
        _live.add(self)
        try:
            wait_until(
                lambda: not self.running or self.log().count("daemon started") > started,
                timeout,
                f"Postfix {self.name} starts",
            )
        except TimeoutError as e:
            self.stop()
            raise PostfixError(f"{e}\n{self.explain()}") from None
        if not self.running:
            self.stop()
            raise PostfixError(
                f"Postfix {self.name} did not start: {self.diagnose()}\n{self.explain()}"
            )
        wait_until(lambda: self._listening(self.port), timeout, f"{self.name} listens")

    def diagnose(self) -> str:
        """What ``postfix check`` says about this instance.

        The postfix command writes its early fatal errors (a bad main.cf, an
        address it cannot bind) only to a terminal, never to maillog_file:
        give it a pseudo-terminal to hear them.
        """
        primary, secondary = pty.openpty()
        try:
            subprocess.run(
                ["postfix", "-c", str(self.config_dir), "check"],
                stdin=subprocess.DEVNULL,
                stdout=secondary,
                stderr=secondary,
                timeout=60,
                check=False,
            )
        finally:
            os.close(secondary)
        out = b""
        with contextlib.suppress(OSError):  # EIO once the terminal is closed
            while chunk := os.read(primary, 4096):
                out += chunk
        os.close(primary)
        return out.decode(errors="replace").strip() or "postfix check found nothing"

    def _listening(self, port: int) -> bool:
        """Whether a socket listens on 127.0.0.1:port, without connecting to it."""
        hexport = f"0100007F:{port:04X}"
        with Path("/proc/net/tcp").open() as f:
            return any(
                parts[1] == hexport and parts[3] == "0A"  # 0A: LISTEN
                for parts in (line.split() for line in f)
                if len(parts) > 3
            )

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def reload(self, timeout: float = 10.0) -> None:
        """``postfix reload``: master rereads its config, daemons restart when idle."""
        pid = self.master_pid()
        if pid is None or not self.running:
            raise PostfixError(f"Postfix {self.name} is not running")
        before = self.log().count("reload -- version")
        os.kill(pid, signal.SIGHUP)
        wait_until(
            lambda: self.log().count("reload -- version") > before,
            timeout,
            f"Postfix {self.name} reloads",
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop master and every daemon it started; safe to call twice."""
        _live.discard(self)
        if self._proc is None:
            return
        pid = self.master_pid()
        if pid is not None and self._proc.alive():
            # master has its own session: signal it, not our child's group.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._proc.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        self._proc.stop()
        self._proc = None

    # -- queue ---------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {"MAIL_CONFIG": str(self.config_dir)}

    def queue(self, queue_name: str | None = None) -> list[QueueEntry]:
        """``postqueue -j``: every message in the queue, or only those in ``queue_name``."""
        out = _run(["postqueue", "-c", str(self.config_dir), "-j"])
        entries = [QueueEntry.parse(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if queue_name is None or e.queue_name == queue_name]

    def hold_queue(self) -> list[QueueEntry]:
        return self.queue("hold")

    def in_flight(self) -> list[QueueEntry]:
        """Messages Postfix is still working on (not deferred, not held)."""
        return [e for e in self.queue() if e.queue_name in ("maildrop", "incoming", "active")]

    def wait_queue(
        self,
        predicate: Callable[[list[QueueEntry]], object],
        timeout: float = 20.0,
        what: str = "the queue reaches the expected state",
    ) -> list[QueueEntry]:
        """Poll ``postqueue -j`` until ``predicate(entries)`` holds; return the entries."""
        return poll(
            self.queue,
            predicate,
            timeout,
            what,
            lambda entries: f"queue of {self.name}: {entries}\n{self.explain()}",
        )

    def flush(self, timeout: float = 10.0) -> None:
        """``postqueue -f``: retry every deferred message now.

        First waits until no process holds a deferred queue file open. A
        delivery agent keeps the file (and a shared lock on it) for a moment
        after it told qmgr the delivery was deferred; a flush in that moment
        makes qmgr find the file locked ("skipped, still being delivered"),
        and qmgr then parks it in the incoming queue for 60 seconds
        (qmgr_active.c: ``qmgr_active_defer(..., MAIL_QUEUE_INCOMING, 60)``),
        longer than any wait of the tests.
        """
        wait_until(
            lambda: not self.open_queue_files("deferred"),
            timeout,
            f"no process of {self.name} holds a deferred queue file",
        )
        _run(["postqueue", "-c", str(self.config_dir), "-f"])

    def open_queue_files(self, queue_name: str) -> list[str]:
        """Queue ids of ``queue_name`` whose file some process has open."""
        files: dict[tuple[int, int], str] = {}
        for path in (self.queue_dir / queue_name).rglob("*"):
            with contextlib.suppress(OSError):
                st = path.stat()
                if path.is_file():
                    files[(st.st_dev, st.st_ino)] = path.name
        if not files:
            return []
        held: set[str] = set()
        for fd_dir in Path("/proc").glob("[0-9]*/fd"):
            with contextlib.suppress(OSError):
                for fd in os.scandir(fd_dir):
                    with contextlib.suppress(OSError):
                        st = fd.stat()  # follows the link to the open file
                        queue_id = files.get((st.st_dev, st.st_ino))
                        if queue_id is not None:
                            held.add(queue_id)
        return sorted(held)

    def parked(self) -> list[str]:
        """Queue ids qmgr found locked and parked in incoming for 60 s (see
        :meth:`flush`): each one stalls every wait for its queue state."""
        return sorted(set(re.findall(r"(\w+): skipped, still being delivered", self.log())))

    def postsuper(self, *args: str) -> str:
        """``postsuper -c CONFIG_DIR ARGS``, e.g. ``("-H", queue_id)`` to release from hold."""
        return _run(["postsuper", "-c", str(self.config_dir), *args])

    def postcat(self, queue_id: str, *flags: str) -> str:
        """``postcat -c CONFIG_DIR FLAGS -q QUEUE_ID``; default flags show everything."""
        return _run(
            ["postcat", "-c", str(self.config_dir), *(flags or ("-e", "-h", "-b")), "-q", queue_id]
        )

    # -- log -----------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until a log line matches the regular expression; return the match."""
        regex = re.compile(pattern, re.MULTILINE)
        found: re.Match[str] | None = None

        def check() -> bool:
            nonlocal found
            found = regex.search(self.log())
            return found is not None

        try:
            wait_until(check, timeout, f"{self.name} logs /{pattern}/")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.explain()}") from None
        assert found is not None
        return found

    def problems(self) -> list[str]:
        """Log lines with warning, error, fatal or panic."""
        return [
            line
            for line in self.log().splitlines()
            if re.search(r"\]: (warning|error|fatal|panic): ", line)
        ]

    def explain(self, lines: int = 40) -> str:
        parked = self.parked()
        note = (
            f"--- {self.name}: qmgr parked {', '.join(parked)} in incoming for 60 s"
            " (queue file locked by a delivery agent when qmgr reopened it)\n"
            if parked
            else ""
        )
        return (
            note
            + f"--- maillog of {self.name} ({self.log_path}), last {lines} lines:\n"
            + self.log_tail(lines)
        )

    def __repr__(self) -> str:
        return f"<PostfixInstance {self.name} port={self.port} config={self.config_dir}>"
