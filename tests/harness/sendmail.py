"""Private Sendmail 8.17 instances on loopback, built for fast tests.

Sendmail conflicts with Postfix as a Debian package, so it is never
installed: ``scripts/unpack-sendmail`` unpacks Debian's sendmail-bin,
sendmail-base and sendmail-cf into ``.cache/sendmail``, and each instance
here runs that binary with its own ``.cf``, built with m4 from the unpacked
``cf/m4/cf.m4`` and an ``.mc`` written here.

API::

    sm = SendmailInstance("border", base=tmp / "sm", runtime=rt, hostname="border.fwd.example",
                          routes={"inner.example": 2525, ".": sink_port},
                          loop_domains=["fwd.example"], relay_domains=["fwd.example"],
                          milter="unix:/run/fwdmilter-e2e-x/fwd.sock")
    sm.start()                       # returns when both daemons listen
    sm.port, sm.loop_port            # the MTA daemon; the loop-back daemon (see below)
    sm.queue_files()                 # {"6ANFlIvA007957": "qf", ...}; "hf" = quarantined
    sm.quarantined(); sm.in_flight(); sm.wait_idle()
    sm.mailq(quarantined=True)       # the text of ``mailq -qQ``
    sm.command("-qI6ANFlIvA007957")  # any sendmail command line, in the instance's namespace
    sm.log(); sm.wait_log(r"Milter: .*quarantine"); sm.problems(); sm.explain()
    sm.stop()                        # also run at interpreter exit if a test forgot

Routing (``FEATURE(mailertable)``): each entry of ``routes`` (a domain, or
"." for everything else) goes to 127.0.0.1 on the given port, through a
mailer of its own (``A=TCP $h PORT``: Sendmail's mailertable has no port
syntax). ``loop_domains`` go to the instance's second daemon on
``loop_port``: that is how the bounces Sendmail itself generates reach the
milter (docs/sendmail.md), since Sendmail runs milters on SMTP input only.
The loop-back mailer has the ``k`` flag, or Sendmail would refuse to talk to
a server that greets with its own name ("config error: mail loops back to
me").

Why a namespace: every sendmail invocation resolves the machine's host name
before it reads its ``.cf``, and when that name is not fully qualified (a
test VM's "vm") it logs "unqualified host name ... sleeping for retry" and
sleeps 60 seconds -- the daemon and every ``mailq``. Sendmail also logs
only through syslog(3), to /dev/log, which a test machine may not have. So
each command runs under ``unshare --mount --uts`` with a small script
(``ns.sh``): the host name is the instance's, /etc/hosts and
/etc/resolv.conf are the instance's (nothing leaves loopback, no lookup
waits on a DNS server), and /dev is a folder holding the devices Sendmail
opens plus ``log``, a link to the instance's syslog socket, where a thread
of the test process writes every line to ``maillog``. Nothing outside the
namespace changes. This needs root (CAP_SYS_ADMIN), as Postfix's harness
does.

Every file Sendmail reads or writes lives in a root-owned 0755 folder under
the harness's runtime folder (Sendmail refuses files and milter sockets
under a world-writable folder such as /tmp), removed with it at the end of
the session; ``base`` (in pytest's temporary folder, which stays) holds
``maillog``, ``sendmail.out`` and a copy of the ``.mc`` for post-mortems.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from tests.harness.postfix import RuntimeDir
from tests.harness.proc import Process, free_port, poll, wait_until

__all__ = [
    "SENDMAIL_ROOT",
    "SendmailError",
    "SendmailInstance",
    "Syslog",
    "sendmail_available",
]

_REPO = Path(__file__).resolve().parents[2]
SENDMAIL_ROOT = Path(os.environ.get("FWDMILTER_SENDMAIL_ROOT", _REPO / ".cache" / "sendmail"))
_LIBEXEC = SENDMAIL_ROOT / "usr" / "libexec" / "sendmail"
SENDMAIL = _LIBEXEC / "sendmail"
MAKEMAP = _LIBEXEC / "makemap"
CF_DIR = SENDMAIL_ROOT / "usr" / "share" / "sendmail" / "cf"

#: The flags of the generated .cf's esmtp mailer, plus 8 (pass 8-bit data as
#: it is, as the relay mailer does).
_MAILER_FLAGS = "mDFMuXa8"
#: The devices Sendmail (and the C library under it) may open.
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

_live: set[SendmailInstance] = set()


@atexit.register
def _stop_forgotten() -> None:
    for sm in list(_live):
        with contextlib.suppress(Exception):
            sm.stop()


class SendmailError(Exception):
    """A Sendmail command or instance failed; the message carries its log."""


def sendmail_available() -> str:
    """Why Sendmail cannot run here, or "" if it can."""
    if not SENDMAIL.exists():
        return f"{SENDMAIL} is missing: run scripts/unpack-sendmail"
    if not (CF_DIR / "m4" / "cf.m4").exists():
        return f"{CF_DIR}/m4/cf.m4 is missing: run scripts/unpack-sendmail"
    for tool in ("m4", "unshare", "mount", "hostname"):
        if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(":")):
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "Sendmail's test instances need root (namespaces, queue as root)"
    return ""


class Syslog:
    """A syslog socket (datagrams, RFC 3164 as glibc sends them) written to a file.

    Lines keep Sendmail's own text with the time stamp glibc put in; the
    priority prefix becomes the severity's name, so ``problems()`` can pick
    warnings and worse.
    """

    _PRI = re.compile(rb"^<(\d{1,3})>")

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        if socket_path.exists() or socket_path.is_symlink():
            socket_path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(socket_path))
        socket_path.chmod(0o666)  # delivery agents may run as another user
        self._sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._file = log_path.open("a", encoding="utf-8", errors="replace")
        self._thread = threading.Thread(target=self._run, name="sendmail-syslog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            m = self._PRI.match(data)
            severity = _SEVERITIES[int(m.group(1)) & 7] if m else "info"
            text = data[m.end() if m else 0 :].decode("utf-8", "replace").rstrip("\n\0")
            line = f"{severity}: {text}"
            with self._lock:
                self._lines.append(line)
                self._file.write(line + "\n")
                self._file.flush()

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        with self._lock:
            self._file.close()
        with contextlib.suppress(OSError):
            self.socket_path.unlink()


class SendmailInstance:
    """One Sendmail daemon: its own .cf, queue, log, namespace and ports."""

    def __init__(
        self,
        name: str,
        *,
        base: Path,
        runtime: RuntimeDir,
        hostname: str,
        routes: Mapping[str, int],
        loop_domains: Iterable[str] = (),
        relay_domains: Iterable[str] = (),
        relay_clients: Iterable[str] = ("127.0.0.1",),
        milter: str | None = None,
        milter_timeouts: str = "C:5s;S:10s;R:30s;E:1m",
        milter_flags: str = "T",
        queue_interval: str = "1s",
        extra_mc: Sequence[str] = (),
    ) -> None:
        problem = sendmail_available()
        if problem:
            raise SendmailError(problem)
        self.name = name
        self.base = base
        self.hostname = hostname
        base.mkdir(parents=True, exist_ok=True)
        self.dir = runtime.path / f"sendmail-{name}"
        self.dir.mkdir(mode=0o755)
        self.queue_dir = self.dir / "queue"
        self.queue_dir.mkdir(mode=0o700)
        self.cf = self.dir / "sendmail.cf"
        self.mc = self.dir / "sendmail.mc"
        self.pid_file = self.dir / "sendmail.pid"
        self.log_path = base / "maillog"
        self.port = free_port()
        self.loop_port = free_port()
        self.routes = dict(routes)
        self.loop_domains = list(loop_domains)
        self.relay_domains = list(relay_domains)
        self.relay_clients = list(relay_clients)
        self.milter = milter
        self.milter_timeouts = milter_timeouts
        self.milter_flags = milter_flags
        self.queue_interval = queue_interval
        self.extra_mc = list(extra_mc)
        self._proc: Process | None = None
        self._syslog: Syslog | None = None
        self._write_namespace()

    # -- files -----------------------------------------------------------------

    def _write_namespace(self) -> None:
        d = self.dir
        (d / "hosts").write_text(f"127.0.0.1 {self.hostname} localhost\n")
        # Lookups go to 127.0.0.1:53, where a test machine has no server: they
        # fail at once instead of waiting on the network's resolver.
        (d / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (d / "service.switch").write_text("hosts files\naliases files\n")
        dev = d / "dev"
        dev.mkdir()
        for name in _DEVICES:
            (dev / name).touch()
        (dev / "fd").symlink_to("/proc/self/fd")
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            (dev / name).symlink_to(f"/proc/self/fd/{i}")
        (dev / "log").symlink_to(d / "syslog.sock")
        q = shlex.quote
        binds = "\n".join(
            f"mount --bind /dev/{n} {q(str(dev / n))}"
            for n in _DEVICES
            if Path(f"/dev/{n}").exists()
        )
        script = f"""\
# Runs "$@" as Sendmail instance {self.name}: see tests/harness/sendmail.py.
set -e
hostname {q(self.hostname)}
mount --bind {q(str(d / "hosts"))} /etc/hosts
mount --bind {q(str(d / "resolv.conf"))} /etc/resolv.conf
{binds}
mount --bind {q(str(dev))} /dev
exec "$@"
"""
        (d / "ns.sh").write_text(script)

    def _argv(self, *args: str) -> list[str]:
        """A sendmail command line run in the instance's namespace."""
        return [
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            str(self.dir / "ns.sh"),
            str(SENDMAIL),
            "-C",
            str(self.cf),
            *args,
        ]

    def mc_text(self) -> str:
        """The .mc of this instance."""
        d = self.dir
        lines = [
            "divert(-1)",
            f"include(`{CF_DIR}/m4/cf.m4')",
            "divert(0)dnl",
            f"VERSIONID(`fwdmilter test harness: {self.name}')dnl",
            "OSTYPE(`linux')dnl",
            f"define(`confDOMAIN_NAME', `{self.hostname}')dnl",
            "define(`confDONT_PROBE_INTERFACES', `True')dnl",
            f"define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl",
            f"define(`confHOSTS_FILE', `{d}/hosts')dnl",
            f"define(`QUEUE_DIR', `{self.queue_dir}')dnl",
            f"define(`ALIAS_FILE', `{d}/aliases')dnl",
            f"define(`STATUS_FILE', `{d}/statistics')dnl",
            f"define(`confPID_FILE', `{self.pid_file}')dnl",
            "define(`confLOG_LEVEL', `13')dnl",
            "define(`confMILTER_LOG_LEVEL', `13')dnl",
            # Fast tests: nothing waits on ident, slow peers or the load average.
            "define(`confTO_IDENT', `0')dnl",
            "define(`confTO_CONNECT', `5s')dnl",
            "define(`confTO_ICONNECT', `5s')dnl",
            "define(`confMCI_CACHE_SIZE', `0')dnl",
            "define(`confMIN_QUEUE_AGE', `0')dnl",
            "define(`confQUEUE_LA', `1000')dnl",
            "define(`confREFUSE_LA', `1000')dnl",
            "define(`confDELAY_LA', `0')dnl",
            "define(`confMAX_DAEMON_CHILDREN', `0')dnl",
            "define(`confCONNECTION_RATE_THROTTLE', `0')dnl",
            "define(`confAUTH_MECHANISMS', `')dnl",
            "FEATURE(`no_default_msa')dnl",
            "FEATURE(`accept_unresolvable_domains')dnl",
            f"FEATURE(`mailertable', `hash -o {d}/mailertable')dnl",
            f"DAEMON_OPTIONS(`Port={self.port}, Addr=127.0.0.1, Name=MTA')dnl",
            f"DAEMON_OPTIONS(`Port={self.loop_port}, Addr=127.0.0.1, Name=MTA-loop')dnl",
        ]
        relay = [*self.relay_domains, *self.relay_clients]
        if relay:
            lines.append(f"RELAY_DOMAIN(`{' '.join(relay)}')dnl")
        if self.milter:
            lines.append(
                f"INPUT_MAIL_FILTER(`fwdmilter', "
                f"`S={self.milter}, F={self.milter_flags}, T={self.milter_timeouts}')dnl"
            )
        lines += self.extra_mc
        lines.append("MAILER(`smtp')dnl")
        lines.append("MAILER_DEFINITIONS")
        for mailer, port, flags in self._mailers():
            lines.append(
                f"M{mailer}, P=[IPC], F={flags}, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, "
                f"E=\\r\\n, L=990, T=DNS/RFC822/SMTP, A=TCP $h {port}"
            )
        return "\n".join(lines) + "\n"

    def _mailers(self) -> list[tuple[str, int, str]]:
        out = [(f"hop{port}", port, _MAILER_FLAGS) for port in sorted(set(self.routes.values()))]
        if self.loop_domains:
            out.append(("fwdloop", self.loop_port, _MAILER_FLAGS + "k"))
        return out

    def mailertable(self) -> dict[str, str]:
        table = {domain: f"hop{port}:[127.0.0.1]" for domain, port in self.routes.items()}
        table.update({domain: "fwdloop:[127.0.0.1]" for domain in self.loop_domains})
        return table

    def _write_config(self) -> None:
        d = self.dir
        self.mc.write_text(self.mc_text())
        done = subprocess.run(
            ["m4", str(self.mc)], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0 or not done.stdout:
            raise SendmailError(f"m4 {self.mc} failed: {done.stderr}")
        self.cf.write_text(done.stdout)
        (self.base / "sendmail.mc").write_text(self.mc_text())
        table = "".join(f"{k}\t{v}\n" for k, v in self.mailertable().items())
        self._run([str(MAKEMAP), "-C", str(self.cf), "hash", str(d / "mailertable")], stdin=table)
        (d / "aliases").write_text(
            f"MAILER-DAEMON: postmaster\npostmaster: postmaster+{self.name}@postmaster.example\n"
        )
        (d / "statistics").touch()
        self.command("-bi")

    @staticmethod
    def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise SendmailError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done.stdout + done.stderr

    def command(self, *args: str, check: bool = True) -> str:
        """``sendmail -C CF ARGS`` in the instance's namespace; its output."""
        return self._run(self._argv(*args), check=check)

    # -- life ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon; return once both ports listen."""
        if self.running:
            return
        if self._syslog is None:
            self._syslog = Syslog(self.dir / "syslog.sock", self.log_path)
        self._write_config()
        self._proc = Process(
            self._argv("-bD", f"-q{self.queue_interval}"), self.base / "sendmail.out"
        )
        _live.add(self)
        try:
            wait_until(
                lambda: not self.running or (_listening(self.port) and _listening(self.loop_port)),
                timeout,
                f"Sendmail {self.name} listens on {self.port} and {self.loop_port}",
            )
        except TimeoutError as e:
            self.stop()
            raise SendmailError(f"{e}\n{self.explain()}") from None
        if not self.running:
            out = self._proc.output() if self._proc else ""
            self.stop()
            raise SendmailError(f"Sendmail {self.name} did not start:\n{out}\n{self.explain()}")

    def _session(self) -> list[int]:
        """Processes of the daemon's session: the daemon and every child it forked."""
        if self._proc is None:
            return []
        sid = self._proc.pid
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 3 and int(fields[3]) == sid:
                found.append(int(entry.name))
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon and its children; safe to call twice."""
        _live.discard(self)
        if self._proc is not None:
            if self._proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while self._proc.alive() and time.monotonic() < deadline:
                    time.sleep(0.05)
            # Children (SMTP sessions, queue runners) that outlived the daemon.
            for pid in self._session():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._proc.stop()
            self._proc = None
        if self._syslog is not None:
            time.sleep(0.1)  # the last lines of the exiting daemon
            self._syslog.close()
            self._syslog = None

    def daemon_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- queue -------------------------------------------------------------------

    def queue_files(self) -> dict[str, str]:
        """Queue id -> kind of control file: "qf" queued, "hf" quarantined,
        "Qf" lost (Sendmail gave up on a broken file), "tf" being written."""
        out: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in self.queue_dir.iterdir():
                kind = entry.name[:2]
                if kind in ("qf", "hf", "Qf", "tf"):
                    out[entry.name[2:]] = kind
        return out

    def queued(self) -> list[str]:
        return sorted(q for q, kind in self.queue_files().items() if kind == "qf")

    def quarantined(self) -> list[str]:
        return sorted(q for q, kind in self.queue_files().items() if kind == "hf")

    def in_flight(self) -> list[str]:
        """Queue ids Sendmail is working on: control files it holds locked,
        or is still writing. Deferred and quarantined mail is not in flight."""
        locked = _locked_inodes()
        busy: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.queue_dir.iterdir():
                kind = entry.name[:2]
                if kind == "tf":
                    busy.append(entry.name[2:])
                elif kind in ("qf", "hf"):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat().st_ino in locked:
                            busy.append(entry.name[2:])
        return sorted(busy)

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until nothing is in flight, twice in a row."""
        deadline = time.monotonic() + timeout
        calm = 0
        while calm < 2:
            busy = self.in_flight()
            calm = 0 if busy else calm + 1
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Sendmail {self.name} still busy after {timeout}s: {busy}\n{self.explain()}"
                )
            time.sleep(0.1)

    def wait_queue(
        self,
        predicate: Callable[[dict[str, str]], object],
        timeout: float = 20.0,
        what: str = "the queue reaches the expected state",
    ) -> dict[str, str]:
        """Poll the queue folder until ``predicate(queue_files())`` holds."""
        return poll(
            self.queue_files,
            predicate,
            timeout,
            what,
            lambda files: f"queue of {self.name}: {files}\n{self.explain()}",
        )

    def milter_settings(self) -> dict[str, dict[str, str]]:
        """The [mta] settings of a fwdmilter that works with this instance:
        submissions through its daemon, its queue read through its files."""
        return {
            "mta": {
                "type": "sendmail",
                "submit": f"127.0.0.1:{self.port}",
                "sendmail_queue_dir": str(self.queue_dir),
                "sendmail_cf": str(self.cf),
                "command_dir": str(SENDMAIL_ROOT / "usr" / "libexec" / "sendmail"),
            }
        }

    def mailq(self, quarantined: bool = False) -> str:
        """``mailq`` (``sendmail -bp``), or ``mailq -qQ`` for quarantined mail."""
        return self.command("-bp", *(["-qQ"] if quarantined else []))

    def run_queue(self) -> str:
        """One queue run now, in the foreground (``sendmail -q``)."""
        return self.command("-q")

    # -- log ---------------------------------------------------------------------

    def log(self) -> str:
        return "\n".join(self._syslog.lines()) if self._syslog is not None else self._log_file()

    def _log_file(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        """The log lines matching ``pattern`` once there are ``count`` of them."""
        rx = re.compile(pattern)

        def lines() -> list[str]:
            return [line for line in self.log().splitlines() if rx.search(line)]

        try:
            wait_until(lambda: len(lines()) >= count, timeout, f"{self.name} logs /{pattern}/")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.explain()}") from None
        return lines()

    def problems(self) -> list[str]:
        """Log lines of severity warning or worse, but for the start-up noise
        of a host without SASL or TLS configured."""
        noise = re.compile(r"safesasl|STARTTLS: .*missing|engine=")
        return [
            line
            for line in self.log().splitlines()
            if line.split(":", 1)[0] in _SEVERITIES[:5] and not noise.search(line)
        ]

    def explain(self, lines: int = 60) -> str:
        return (
            f"--- maillog of Sendmail {self.name} ({self.log_path}), last {lines} lines:\n"
            + self.log_tail(lines)
            + f"\n--- queue of {self.name}: {self.queue_files()}"
        )

    def __repr__(self) -> str:
        return f"<SendmailInstance {self.name} port={self.port} loop_port={self.loop_port}>"


def _listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:port, without connecting to it."""
    hexport = f"0100007F:{port:04X}"
    with Path("/proc/net/tcp").open() as f:
        return any(
            parts[1] == hexport and parts[3] == "0A"
            for parts in (line.split() for line in f)
            if len(parts) > 3
        )


def _locked_inodes() -> set[int]:
    """Inodes of files someone holds a lock on (/proc/locks), without taking one."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError), Path("/proc/locks").open() as f:
        for line in f:
            parts = line.split()
            # "1: FLOCK  ADVISORY  WRITE 17825 fe:00:2158821 0 EOF"; a blocked
            # waiter has "->" after the number.
            if len(parts) > 5 and parts[1] == "->":
                parts = parts[:1] + parts[2:]
            if len(parts) > 5:
                with contextlib.suppress(ValueError, IndexError):
                    inodes.add(int(parts[5].rsplit(":", 1)[1]))
    return inodes
