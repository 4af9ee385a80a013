"""Mail throughput through real Postfix, with and without milters, in one run.

Run from the repository root as root (it borrows the test harness's Postfix,
DNS and Redis servers)::

    .venv/bin/python -m benchmarks.milter_rate [--messages 300] [--sessions 10]
        [--rounds 5] [--dns-ttl 0] [--variants none,fwd-unix,...] [--json]

One private Postfix (tests.harness.postfix.PostfixInstance) has one smtpd
listener per variant, each with its own ``smtpd_milters``, and relays
everything to Postfix's ``smtp-sink``, which appends every message it gets
to a dump file. ``smtp-source`` sends ``--messages`` messages of 1 KiB in
``--sessions`` parallel SMTP sessions (a new connection per message, as
most mail reaches an MX), from ``bench@pass.example`` (whose SPF record
passes 127.0.0.0/8 in the harness's dnsmasq) to ``Nfwd@fwd.example``: N is
smtp-source's sequence number, and each of those addresses forwards to
``tN@dest.example`` in fwdmilter's store. The zone's records have the TTL
``--dns-ttl``: with 0 (the default) no answer is cached and fwdmilter asks
DNS for every message, as for mail from a domain not seen for a while; with
a real TTL (300 s is common for SPF records) every check after the first
is answered from fwdmilter's cache, as for a run of mail from one domain.

The variants:

=========== ==============================================================
none        Postfix alone: the baseline of every ratio
null-unix   a pymilter that does nothing (benchmarks.null_milter: every
            callback it can skip negotiated away), on a unix socket
fwd-unix    fwdmilter with its SQLite store, on a unix socket
fwd-inet    the same fwdmilter configuration on ``inet:PORT@127.0.0.1``
null-inet   the do-nothing pymilter on an inet socket
fwd-redis   fwdmilter with a private Redis (TCP loopback), unix socket
pyspf-unix  Debian's pyspf-milter (pymilter + pyspf), unix socket, SPF
            checked for every client (its loopback exemptions removed)
=========== ==============================================================

``--mix`` sends benchmarks.smtp_load's realistic mix instead of
smtp-source's one sender; ``--latency N`` adds N one-at-a-time
transactions per variant after the rounds (p50/p99, client side).

fwdmilter trusts no client here (``trusted.networks = []``), so SPF is
checked for every message, and every message is forwarded: its sender
becomes an SRS0 address and its recipient is replaced by the target.

A round sends one batch through each variant, in an order that rotates from
round to round, and waits until the sink has every message of a batch
before the next one starts (so that no variant's deliveries overlap
another's batch). Two rates are measured per batch:

* **accepted/s**: messages over the time smtp-source took to hand them all
  to Postfix (Postfix answered 250 to the end of each): the SMTP side,
  where the milters sit. Ratios and targets use this rate.
* **delivered/s**: messages over the time until the sink had all of them
  (the queue manager and the SMTP client included).

Ratios against ``none`` are taken within each round, then the median over
rounds is reported (the machine is shared: compare within a run only).

Correctness is checked on everything the sink received: the right count per
batch; for fwdmilter, an SRS0 sender in our domain, the target as the
recipient, and our trace header; for the others, the original envelope.
Exit status 2 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import smtp_load
from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import Forward
from tests.harness.dns import ZONES, DnsServer
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.proc import Process, free_port, wait_for_port, wait_until
from tests.harness.redis import RedisServer

SENDER = "bench@pass.example"
HELO = "helo.pass.example"
RCPT = "fwd@fwd.example"  # smtp-source -N makes it 1fwd@..., 2fwd@...
FWD_DOMAIN = "fwd.example"
TARGET_DOMAIN = "dest.example"
MESSAGE_BYTES = 1024
TRACE_HEADER = "Fwdmilter-Trace:"

#: Every variant, in the order the table lists them.
VARIANTS: dict[str, str] = {
    "none": "Postfix, no milter",
    "null-unix": "do-nothing pymilter, unix socket",
    "fwd-unix": "fwdmilter (SQLite), unix socket",
    "fwd-inet": "fwdmilter (SQLite), inet socket",
    "null-inet": "do-nothing pymilter, inet socket",
    "fwd-redis": "fwdmilter (Redis), unix socket",
    "pyspf-unix": "pyspf-milter 3.0.4 (Debian), unix socket",
}

#: Debian's pyspf-milter, run by Debian's interpreter (its modules are not in
#: our virtual environment), its DNS pointed at the benchmark's server. Its
#: pyspf resolves through dnspython when that is importable (as on Debian 12,
#: where python3-spf pulls it in) and through pydns otherwise, so both are
#: pointed there. Arguments: DNS port, config file.
PYSPF_PYTHON = "/usr/bin/python3"
PYSPF_BOOT = """
import os, sys
os.umask(0)  # the socket must be writable by Postfix's user
port = int(sys.argv.pop(1))
import dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = port
dns.resolver.default_resolver = resolver
import DNS
DNS.defaults["server"] = ["127.0.0.1"]
DNS.defaults["port"] = port
import spf
import spf_engine.milter_spf
print("pyspf DNS:", spf.DNSLookup.__name__, flush=True)
spf_engine.milter_spf.main()
"""


#: The components whose CPU time is shown per message, in table order.
CPU_COLUMNS = ("postfix", "milter", "dns", "redis", "smtp-source", "sink")


class BenchError(Exception):
    """A check failed or a component misbehaved; the text says which."""


# -- the sink ----------------------------------------------------------------


@dataclass
class Delivered:
    """One message as smtp-sink dumped it: envelope and header names."""

    mail_from: str
    rcpts: list[str]
    headers: list[str]


def parse_dump(text: str) -> list[Delivered]:
    """The messages of a stretch of smtp-sink's dump file (-D).

    Each message starts with smtp-sink's ``X-Client-Addr:`` line; then its
    X-Mail-Args, X-Rcpt-Args, a Received: header and the message as relayed.
    """
    out: list[Delivered] = []
    for chunk in re.split(r"^(?=X-Client-Addr: )", text, flags=re.MULTILINE):
        if not chunk.startswith("X-Client-Addr: "):
            continue
        head = chunk.split("\n\n", 1)[0]
        mail_from = ""
        rcpts: list[str] = []
        headers: list[str] = []
        for line in head.splitlines():
            if line.startswith("X-Mail-Args: "):
                mail_from = line.removeprefix("X-Mail-Args: ").split()[0]
            elif line.startswith("X-Rcpt-Args: "):
                rcpts.append(line.removeprefix("X-Rcpt-Args: ").split()[0])
            elif line and not line[0].isspace() and ":" in line:
                headers.append(line.split(":", 1)[0] + ":")
        out.append(Delivered(mail_from, rcpts, headers))
    return out


class Sink:
    """smtp-sink on a free port, dumping every message to one file."""

    def __init__(self, folder: Path) -> None:
        self.dump = folder / "sink.dump"
        self.dump.touch()
        self.port = free_port()
        self.proc = Process(
            [
                "smtp-sink",
                "-u",
                "root",
                "-h",
                "sink.example",
                "-D",
                str(self.dump),
                f"127.0.0.1:{self.port}",
                "256",
            ],
            folder / "smtp-sink.out",
        )
        try:
            wait_for_port(self.port, timeout=10)
        except TimeoutError:
            self.proc.stop()
            raise BenchError("smtp-sink did not start:\n" + self.proc.output()) from None
        self._offset = 0
        self._tail = b""
        #: Messages seen in the dump so far.
        self.count = 0

    def _poll(self) -> None:
        with self.dump.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        text = self._tail + data
        # Count whole envelope lines only; keep a partial last line for later.
        cut = text.rfind(b"\n") + 1
        whole = text[:cut]
        self.count += whole.count(b"\nX-Mail-Args: ") + whole.startswith(b"X-Mail-Args: ")
        self._tail = text[cut:]

    def wait(self, count: int, timeout: float) -> None:
        """Until the sink has had ``count`` messages since it started."""
        deadline = time.monotonic() + timeout
        while True:
            self._poll()
            if self.count >= count:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the sink has {self.count} of {count} messages after {timeout}s")
            time.sleep(0.005)

    def messages(self) -> list[Delivered]:
        """Every message dumped so far, in order."""
        return parse_dump(self.dump.read_text("utf-8", "replace"))

    def stop(self) -> None:
        self.proc.stop()


# -- milters -----------------------------------------------------------------


class PyspfMilterProc:
    """Debian's pyspf-milter in a child process, configured as shipped except
    for what a private run needs: its socket, root, no skipped or internal
    addresses (every client is checked, as fwdmilter checks every one here),
    and the authserv-id of fwdmilter's configuration. ``TestOnly = 1`` is
    its normal mode: SPF fail refused at MAIL."""

    def __init__(self, sock_path: Path, folder: Path, dns_port: int) -> None:
        self.sock = f"unix:{sock_path}"
        conf = folder / "pyspf-milter.conf"
        conf.write_text(
            "debugLevel = 1\n"
            "TestOnly = 1\n"
            "HELO_reject = Fail\n"
            "Mail_From_reject = Fail\n"
            "PermError_reject = False\n"
            "TempError_Defer = False\n"
            "skip_addresses = 192.0.2.255/32\n"
            "InternalHosts = 192.0.2.254\n"
            f"Socket = local:{sock_path}\n"
            f"PidFile = {folder}/pyspf-milter.pid\n"
            "UserID = root\n"
            "UMask = 0\n"
            "Authserv_Id = border.fwd.example\n"
        )
        self.proc = Process(
            [PYSPF_PYTHON, "-c", PYSPF_BOOT, str(dns_port), str(conf)],
            folder / "pyspf-milter.log",
        )

    def stop(self) -> None:
        self.proc.stop(timeout=0.5)


class NullMilterProc:
    """benchmarks.null_milter in a child process."""

    def __init__(self, sock: str, folder: Path) -> None:
        self.sock = sock
        self.proc = Process(
            [sys.executable, "-m", "benchmarks.null_milter", sock],
            folder / f"null-{free_port()}.log",
            cwd=Path(__file__).resolve().parents[1],
        )

    def stop(self) -> None:
        # libmilter notices SIGTERM only when its 5 s select() times out.
        self.proc.stop(timeout=0.5)


def _postfix_spec(libmilter_spec: str) -> str:
    """``inet:PORT@HOST`` (libmilter) as ``inet:HOST:PORT`` (Postfix)."""
    kind, _, rest = libmilter_spec.partition(":")
    if kind != "inet":
        return libmilter_spec
    port, _, host = rest.partition("@")
    return f"inet:{host}:{port}"


@dataclass
class Setup:
    """Everything a run needs, started."""

    postfix: PostfixInstance
    sink: Sink
    ports: dict[str, int]
    fwd_milters: dict[str, FwdMilter] = field(default_factory=dict)
    #: Processes whose CPU time is measured per batch: name -> pid. The
    #: milter of each variant is "milter:VARIANT".
    pids: dict[str, int] = field(default_factory=dict)
    #: Forwarding addresses in each fwdmilter store: 1fwd@... to {forwards}fwd@...
    forwards: int = 0
    #: Bytes per message.
    size: int = MESSAGE_BYTES


def _fill_store(url: str, count: int) -> None:
    """``1fwd@fwd.example`` … ``{count}fwd@...`` forward to ``tN@dest.example``."""
    store = open_store(StoreSettings(url=url), instance="bench")
    try:
        now = time.time()
        store.import_items(
            Forward(f"{i}{RCPT}", (f"t{i}@{TARGET_DOMAIN}",), created=now, updated=now)
            for i in range(1, count + 1)
        )
    finally:
        store.close()


def _start_fwdmilter(
    stack: ExitStack,
    name: str,
    folder: Path,
    runtime: RuntimeDir,
    dns_port: int,
    messages: int,
    pids: dict[str, int],
    fwd_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> FwdMilter:
    """fwdmilter for variant ``name`` (and its Redis), started, stopped by ``stack``."""
    workdir = folder / name
    store_url = f"sqlite://{workdir}/state.db"
    if name == "fwd-redis":
        redis = RedisServer(folder)
        stack.callback(redis.stop)
        if redis.proc is not None:
            pids["redis"] = redis.proc.pid
        store_url = redis.url
    sock = f"inet:{free_port()}@127.0.0.1" if name == "fwd-inet" else f"unix:{runtime.socket(name)}"
    fm = FwdMilter(
        runtime.socket(name),
        workdir,
        dns_port=dns_port,
        store_url=store_url,
        settings={
            "milter": {"socket": sock},
            "forwarding": {"domains": [FWD_DOMAIN]},
            # Every client is an outsider: SPF is checked.
            "trusted": {"networks": []},
            **(fwd_settings or {}),
        },
    )
    workdir.mkdir(parents=True, exist_ok=True)
    _fill_store(store_url, messages)
    fm.serve()
    stack.callback(fm.stop)
    if fm.proc is not None:
        pids[f"milter:{name}"] = fm.proc.pid
    return fm


@contextmanager
def started(
    folder: Path,
    variants: Sequence[str],
    messages: int,
    dns_ttl: int = 0,
    fwd_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[Setup]:
    """DNS, sink, Redis, the milters and Postfix; all stopped on the way out.
    ``fwd_settings``: more configuration for every fwdmilter (benchmarks.metrics_picture)."""
    with ExitStack() as stack:
        runtime = RuntimeDir(prefix="fwdmilter-bench-")
        stack.callback(runtime.remove)
        dns = DnsServer(folder / "dns", zones=(*ZONES, *smtp_load.mix_zones()), ttl=dns_ttl)
        stack.callback(dns.stop)
        sink = Sink(folder)
        stack.callback(sink.stop)

        specs: dict[str, str] = {"none": ""}
        pids: dict[str, int] = {"sink": sink.proc.pid}
        if dns.proc is not None:
            pids["dns"] = dns.proc.pid
        fwd: dict[str, FwdMilter] = {}
        for name in variants:
            if name.startswith("null-"):
                sock = (
                    f"unix:{runtime.socket(name)}"
                    if name.endswith("unix")
                    else f"inet:{free_port()}@127.0.0.1"
                )
                null = NullMilterProc(sock, folder)
                stack.callback(null.stop)
                pids[f"milter:{name}"] = null.proc.pid
                specs[name] = sock
            elif name == "pyspf-unix":
                pyspf = PyspfMilterProc(runtime.socket(name), folder, dns.port)
                stack.callback(pyspf.stop)
                pids[f"milter:{name}"] = pyspf.proc.pid
                specs[name] = pyspf.sock
            elif name.startswith("fwd-"):
                fm = _start_fwdmilter(
                    stack, name, folder, runtime, dns.port, messages, pids, fwd_settings
                )
                fwd[name] = fm
                specs[name] = str(fm.settings["milter"]["socket"])
        for name, sock in specs.items():
            if sock.startswith("inet:"):
                wait_for_port(int(sock.split(":")[1].split("@")[0]), timeout=20)
            elif sock:
                path = Path(sock.removeprefix("unix:"))
                wait_until(path.exists, 20, f"{name} listens on {path}")

        pf = PostfixInstance(
            "bench",
            base=folder / "postfix",
            runtime=runtime,
            hostname="border.fwd.example",
            main={
                "relay_domains": FWD_DOMAIN,
                "mynetworks": "127.0.0.1/32",
                "smtpd_milters": "",
                "non_smtpd_milters": "",
                "milter_default_action": "tempfail",
                # Postfix may run as many smtpd processes per listener as
                # there are sessions (the default limit, 100, is plenty).
            },
        )
        pf.update_main(
            {"transport_maps": pf.write_map("transport", {"*": f"smtp:[127.0.0.1]:{sink.port}"})}
        )
        ports: dict[str, int] = {}
        for name in variants:
            ports[name] = pf.add_smtpd(name, {"smtpd_milters": _postfix_spec(specs[name])})
        pf.start()
        stack.callback(pf.stop)
        yield Setup(pf, sink, ports, fwd, pids, messages)


# -- measuring ---------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state first)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and of its children it has reaped."""
    try:
        f = _stat(pid)
    except (OSError, ValueError):
        return 0.0
    return sum(int(x) for x in f[11:15]) / _TICK


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and all they reaped:
    fwdmilter's supervisor and the worker that runs the milter."""
    total = process_cpu(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(tree_cpu(int(child)) for child in children)


def tree_rss_kib(pid: int) -> int:
    """Resident memory (KiB) of a process and its live descendants."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(tree_rss_kib(int(child)) for child in children)


def session_cpu(sid: int) -> float:
    """CPU seconds of every live process of a session, with their reaped
    children: Postfix's master and all its daemons (master runs in a
    session of its own and reaps the daemons it started)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            f = _stat(int(entry.name))
        except (OSError, ValueError):
            continue
        if int(f[3]) == sid:
            total += sum(int(x) for x in f[11:15])
    return total / _TICK


def cpu_snapshot(setup: Setup, variant: str) -> dict[str, float]:
    """CPU seconds so far of Postfix, the variant's milter, DNS, Redis, the sink
    and this process's reaped children (smtp-source)."""
    out: dict[str, float] = {}
    master = setup.postfix.master_pid()
    if master is not None:
        out["postfix"] = session_cpu(os.getsid(master))
    for name, pid in setup.pids.items():
        if name == f"milter:{variant}":
            out["milter"] = tree_cpu(pid)
        elif not name.startswith("milter:"):
            out[name] = process_cpu(pid)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["smtp-source"] = kids.ru_utime + kids.ru_stime
    return out


@dataclass
class Batch:
    """One measured batch; its messages are ``first`` up to ``first +
    messages`` in the order the sink got them."""

    variant: str
    round: int
    accept_s: float
    deliver_s: float
    first: int
    #: CPU seconds per component over the batch (until the sink had all).
    cpu: dict[str, float] = field(default_factory=dict)
    #: Resident memory of the variant's milter (process tree) after the batch.
    rss_kib: int = 0
    #: The mix only: what was sent and what the client saw.
    plan: list[smtp_load.Planned] = field(default_factory=list)
    outcomes: list[smtp_load.Outcome] = field(default_factory=list)
    #: Messages the sink should have got from this batch.
    delivered: int = 0

    def rate(self, messages: int, which: str = "accept") -> float:
        return messages / (self.accept_s if which == "accept" else self.deliver_s)


def send_batch(
    setup: Setup, variant: str, messages: int, sessions: int, timeout: float
) -> tuple[float, float, dict[str, float]]:
    """smtp-source into ``variant``'s listener: (seconds until Postfix
    accepted the last message, seconds until the sink had it, CPU seconds
    per component)."""
    expected = setup.sink.count + messages
    cpu0 = cpu_snapshot(setup, variant)
    argv = [
        "smtp-source",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(setup.size),
        "-N",
        "-f",
        SENDER,
        "-t",
        RCPT,
        "-M",
        HELO,
        f"127.0.0.1:{setup.ports[variant]}",
    ]
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    t1 = time.perf_counter()
    if done.returncode != 0:
        raise BenchError(
            f"{variant}: smtp-source exited {done.returncode}: {done.stderr.strip()}\n"
            + setup.postfix.log_tail(20)
        )
    setup.sink.wait(expected, timeout)
    t2 = time.perf_counter()
    cpu1 = cpu_snapshot(setup, variant)
    return t1 - t0, t2 - t0, {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}


@dataclass
class MixState:
    """The SRS addresses each fwdmilter variant wrote (bounces go back to them)."""

    srs_pass: dict[str, list[str]] = field(default_factory=dict)
    srs_unverified: dict[str, list[str]] = field(default_factory=dict)
    serial: int = 0

    def learn(self, variant: str, got: Sequence[Delivered]) -> None:
        for m in got:
            origin = smtp_load.srs_origin(m.mail_from)
            if origin is None or not origin[0].endswith(".mix.example"):
                continue
            index = int(origin[0].split(".")[0].removeprefix("d"))
            kind = smtp_load.domain_kind(index)
            pool = self.srs_pass if kind == "pass" else self.srs_unverified
            pool.setdefault(variant, []).append(m.mail_from.strip("<>"))
            del pool[variant][:-500]

    def pools(self, variant: str) -> tuple[list[str], list[str]]:
        """Bounce targets for ``variant``: its own SRS addresses; for a
        variant without SRS, those of any fwdmilter variant (or a made-up
        one: the other milters do not read them)."""

        def pick(pool: dict[str, list[str]]) -> list[str]:
            if variant in pool:
                return pool[variant]
            if variant.startswith("fwd-"):
                return []
            for addresses in pool.values():
                return addresses
            return [f"SRS0=abcd=AB={smtp_load.mix_domain(4)}=user1@{FWD_DOMAIN}"]

        return pick(self.srs_pass), pick(self.srs_unverified)


def send_mix_batch(
    setup: Setup, variant: str, messages: int, sessions: int, timeout: float, mix: MixState
) -> tuple[float, float, dict[str, float], list[smtp_load.Planned], list[smtp_load.Outcome], int]:
    """The mix into ``variant``'s listener: as send_batch, with the plan,
    what the client saw and how many messages the sink should get."""
    mix.serial += 1
    srs_pass, srs_unverified = mix.pools(variant)
    plan = smtp_load.plan_mix(
        messages, mix.serial, setup.forwards, srs_pass, srs_unverified, setup.size, FWD_DOMAIN
    )
    cpu0 = cpu_snapshot(setup, variant)
    t0 = time.perf_counter()
    try:
        outcomes = smtp_load.send_mix("127.0.0.1", setup.ports[variant], plan, sessions)
    except (OSError, ConnectionError) as exc:
        raise BenchError(f"{variant}: the mix client failed: {exc}") from exc
    t1 = time.perf_counter()
    held = variant.startswith("fwd-")
    delivered = sum(
        1
        for m, o in zip(plan, outcomes, strict=True)
        if o.code == 250 and not (held and m.kind == "held")
    )
    expected = setup.sink.count + delivered
    setup.sink.wait(expected, timeout)
    t2 = time.perf_counter()
    cpu1 = cpu_snapshot(setup, variant)
    cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    return t1 - t0, t2 - t0, cpu, plan, outcomes, delivered


def check_mix(got: Sequence[Delivered], batch: Batch) -> list[str]:
    """What is wrong with a mix batch: the replies each kind of message
    should get from this variant, and what the sink received."""
    errors: list[str] = []
    spf_milter = batch.variant != "none" and not batch.variant.startswith("null-")
    fwd = batch.variant.startswith("fwd-")
    wrong: dict[str, int] = {}
    for m, o in zip(batch.plan, batch.outcomes, strict=True):
        refused = spf_milter and m.kind == "fail"
        # pyspf-milter refuses at MAIL; fwdmilter gives the SPF verdict at
        # RCPT TO, per recipient (a recipient may have its own action).
        stage = "rcpt" if fwd else "mail"
        ok = (o.code == 550 and o.stage == stage) if refused else o.code == 250
        # fwdmilter defers U mail to a target that has held bounces (451 at
        # RCPT, until the target releases them): the mix's held bounces do that.
        ok = ok or (fwd and m.kind == "unverified" and o.code == 451 and o.stage == "rcpt")
        if not ok:
            key = f"{m.kind}: {o.code} at {o.stage}"
            wrong[key] = wrong.get(key, 0) + 1
    errors += [f"{batch.variant} round {batch.round}: {n} x {k}" for k, n in wrong.items()]
    if len(got) != batch.delivered:
        errors.append(f"{batch.variant}: the sink got {len(got)} messages, not {batch.delivered}")
    if fwd:
        want_srs = sum(
            1
            for m, o in zip(batch.plan, batch.outcomes, strict=True)
            if m.kind in ("pass", "unverified") and o.code == 250
        )
        srs = sum(1 for m in got if m.mail_from.startswith("<SRS0="))
        if srs != want_srs:
            errors.append(f"{batch.variant}: {srs} forwarded with an SRS0 sender, not {want_srs}")
        origins = {f"<{m.origin}>" for m in batch.plan if m.kind == "bounce"}
        back = sum(1 for m in got if m.mail_from == "<>" and set(m.rcpts) <= origins)
        want_back = sum(1 for m in batch.plan if m.kind == "bounce")
        if back != want_back:
            errors.append(
                f"{batch.variant}: {back} bounces sent back to their senders, not {want_back}"
            )
    return errors[:5]


def check_batch(got: Sequence[Delivered], batch: Batch, messages: int) -> list[str]:
    """What is wrong with what the sink received for ``batch`` (empty: nothing)."""
    errors: list[str] = []
    if len(got) != messages:
        errors.append(f"{batch.variant} round {batch.round}: {len(got)} messages, not {messages}")
    fwd = batch.variant.startswith("fwd-")
    expected = {
        f"<t{i}@{TARGET_DOMAIN}>" if fwd else f"<{i}{RCPT}>" for i in range(1, messages + 1)
    }
    seen: set[str] = set()
    for m in got:
        seen.update(m.rcpts)
        if fwd:
            if not (m.mail_from.startswith("<SRS0=") and m.mail_from.endswith(f"@{FWD_DOMAIN}>")):
                errors.append(f"{batch.variant}: sender {m.mail_from} is not an SRS0 address")
            if TRACE_HEADER not in m.headers:
                errors.append(f"{batch.variant}: a message without {TRACE_HEADER}")
        elif batch.variant == "pyspf-unix" and "Authentication-Results:" not in m.headers:
            errors.append(f"{batch.variant}: a message without Authentication-Results:")
        if not fwd and m.mail_from != f"<{SENDER}>":
            errors.append(f"{batch.variant}: sender {m.mail_from}, not <{SENDER}>")
    if seen != expected:
        missing = sorted(expected - seen)[:3]
        extra = sorted(seen - expected)[:3]
        errors.append(f"{batch.variant}: recipients differ: missing {missing}, unexpected {extra}")
    return errors[:5]


def _spread(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summarize(
    batches: list[Batch], variants: Sequence[str], messages: int
) -> dict[str, dict[str, Any]]:
    rounds = sorted({b.round for b in batches})
    by = {(b.variant, b.round): b for b in batches}
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        acc = [by[v, r].rate(messages) for r in rounds]
        dlv = [by[v, r].rate(messages, "deliver") for r in rounds]
        row: dict[str, Any] = {
            "label": VARIANTS[v],
            "accepted_per_s": _spread(acc),
            "delivered_per_s": _spread(dlv),
            # Median over rounds of CPU milliseconds per message, by component.
            "cpu_ms_per_message": {
                k: statistics.median(by[v, r].cpu.get(k, 0.0) * 1000 / messages for r in rounds)
                for k in CPU_COLUMNS
            },
            # Resident memory of the milter after the first and the last round.
            "rss_mib": (by[v, rounds[0]].rss_kib / 1024, by[v, rounds[-1]].rss_kib / 1024),
            "rss_mib_by_round": [by[v, r].rss_kib / 1024 for r in rounds],
        }
        if "none" in variants:
            row["accepted_vs_none"] = _spread(
                [by[v, r].rate(messages) / by["none", r].rate(messages) for r in rounds]
            )
            row["delivered_vs_none"] = _spread(
                [
                    by[v, r].rate(messages, "deliver") / by["none", r].rate(messages, "deliver")
                    for r in rounds
                ]
            )
        out[v] = row
    pairs: dict[str, tuple[str, str]] = {
        "fwd-inet/fwd-unix": ("fwd-inet", "fwd-unix"),
        "null-inet/null-unix": ("null-inet", "null-unix"),
        "fwd-unix/fwd-redis (SQLite/Redis)": ("fwd-unix", "fwd-redis"),
        "fwd-unix/null-unix": ("fwd-unix", "null-unix"),
        "fwd-unix/pyspf-unix": ("fwd-unix", "pyspf-unix"),
        "fwd-redis/pyspf-unix": ("fwd-redis", "pyspf-unix"),
    }
    ratios: dict[str, Any] = {}
    cpu_ratios: dict[str, Any] = {}
    for label, (a, b) in pairs.items():
        if a in variants and b in variants:
            ratios[label] = _spread(
                [by[a, r].rate(messages) / by[b, r].rate(messages) for r in rounds]
            )
            if b == "pyspf-unix":
                # Milter CPU per message, fwdmilter's over pyspf-milter's, per round.
                cpu_ratios[label] = _spread(
                    [by[a, r].cpu.get("milter", 0.0) / by[b, r].cpu["milter"] for r in rounds]
                )
    out["_ratios"] = ratios
    out["_cpu_ratios"] = cpu_ratios
    return out


def _ratio(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return f"{'':>8} {'':>11}"
    med, low, high = row[key]
    return f"{med:>8.2f} {low:>5.2f}-{high:<5.2f}"


def latency_summary(
    samples: dict[str, list[float]],
) -> dict[str, dict[str, float]]:
    """p50 and p99 in milliseconds per variant, and what each adds to no
    milter and to pyspf-milter (differences of the percentiles)."""
    out: dict[str, dict[str, float]] = {}
    for v, values in samples.items():
        out[v] = {
            "p50_ms": _percentile(values, 0.5) * 1000,
            "p99_ms": _percentile(values, 0.99) * 1000,
        }
    for v, row in out.items():
        for base in ("none", "pyspf-unix"):
            if base in out and base != v:
                row[f"p50_vs_{base}_ms"] = row["p50_ms"] - out[base]["p50_ms"]
                row[f"p99_vs_{base}_ms"] = row["p99_ms"] - out[base]["p99_ms"]
    return out


def print_table(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"milter_rate: {args.messages} messages of {args.size} B, {args.sessions} sessions,"
        f" {args.rounds} rounds (median, min-max over rounds; ratios within each round)"
    )
    print(
        f"{'variant':<10} {'accepted/s':>10} {'min-max':>13} {'vs none':>8} {'min-max':>11}"
        f" {'delivered/s':>11} {'vs none':>8}  what"
    )
    rows = {v: row for v, row in summary.items() if not v.startswith("_")}
    for v, row in rows.items():
        a, amin, amax = row["accepted_per_s"]
        d = row["delivered_per_s"][0]
        rd = f"{row['delivered_vs_none'][0]:>8.2f}" if "delivered_vs_none" in row else " " * 8
        print(
            f"{v:<10} {a:>10.1f} {amin:>6.1f}-{amax:<6.1f} {_ratio(row, 'accepted_vs_none')}"
            f" {d:>11.1f} {rd}  {row['label']}"
        )
    print()
    print("CPU ms per message (median over rounds, until the sink had every message):")
    print(f"{'variant':<10} " + " ".join(f"{c:>11}" for c in CPU_COLUMNS) + f" {'total':>8}")
    for v, row in rows.items():
        cpu = row["cpu_ms_per_message"]
        print(
            f"{v:<10} "
            + " ".join(f"{cpu[c]:>11.2f}" for c in CPU_COLUMNS)
            + f" {sum(cpu.values()):>8.2f}"
        )
    print()
    warm = summary.get("_warm_rss_mib", {})
    total = args.warmup + args.rounds * args.messages
    print(
        f"Milter resident memory, MiB (after the warm-up, after round 1, after round"
        f" {args.rounds}: {total} messages through each):"
    )
    for v, row in rows.items():
        first, last = row["rss_mib"]
        if first:
            print(f"{v:<10} {warm.get(v, 0.0):>8.1f} {first:>8.1f} {last:>8.1f}")
    ratios = summary["_ratios"]
    if ratios:
        print()
        for label, (med, low, high) in ratios.items():
            print(f"{label:<36} {med:.2f}  ({low:.2f}-{high:.2f})")
    cpu_ratios = summary.get("_cpu_ratios", {})
    for label, (med, low, high) in cpu_ratios.items():
        print(f"milter CPU {label:<25} {med:.2f}  ({low:.2f}-{high:.2f})")
    print_latency(summary.get("_latency", {}), args)
    print_targets(summary, rows, ratios)


def print_latency(latency: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    if latency:
        print()
        print(f"Latency of one transaction, one session at a time ({args.latency} each), ms:")
        print(
            f"{'variant':<10} {'p50':>7} {'p99':>7} {'+p50/none':>10} {'+p99/none':>10}"
            f" {'+p50/pyspf':>11} {'+p99/pyspf':>11}"
        )
        for v, lat in latency.items():
            extra = "".join(
                f" {lat[k]:>10.2f}" if k in lat else f" {'':>10}"
                for k in ("p50_vs_none_ms", "p99_vs_none_ms")
            ) + "".join(
                f" {lat[k]:>11.2f}" if k in lat else f" {'':>11}"
                for k in ("p50_vs_pyspf-unix_ms", "p99_vs_pyspf-unix_ms")
            )
            print(f"{v:<10} {lat['p50_ms']:>7.2f} {lat['p99_ms']:>7.2f}{extra}")


def print_targets(
    summary: dict[str, dict[str, Any]], rows: dict[str, dict[str, Any]], ratios: dict[str, Any]
) -> None:
    print()
    checks = []
    rows_cpu = {v: row["cpu_ms_per_message"]["milter"] for v, row in rows.items()}
    if "pyspf-unix" in rows_cpu:
        for v in ("fwd-unix", "fwd-redis"):
            if v in rows_cpu:
                x = rows_cpu[v] / rows_cpu["pyspf-unix"]
                checks.append((f"{v} milter CPU/message <= pyspf-milter's", x, x <= 1.0))
        for label in ("fwd-unix/pyspf-unix", "fwd-redis/pyspf-unix"):
            if label in ratios:
                x = ratios[label][0]
                checks.append((f"{label} accepted rate >= 0.90", x, x >= 0.9))
    if "accepted_vs_none" in rows.get("fwd-unix", {}):
        x = rows["fwd-unix"]["accepted_vs_none"][0]
        checks.append(("fwdmilter unix >= 0.70 of no milter", x, x >= 0.7))
    if "fwd-inet/fwd-unix" in ratios:
        x = ratios["fwd-inet/fwd-unix"][0]
        checks.append(("fwdmilter inet within 10% of unix", x, x >= 0.9))
    if "fwd-unix/fwd-redis (SQLite/Redis)" in ratios:
        x = ratios["fwd-unix/fwd-redis (SQLite/Redis)"][0]
        checks.append(("SQLite >= 0.90 of Redis", x, x >= 0.9))
    for what, x, ok in checks:
        print(f"target: {what}: {x:.2f} {'met' if ok else 'MISSED'}")


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_latency(setup: Setup, variants: Sequence[str], count: int) -> dict[str, list[float]]:
    """``count`` transactions through each variant, one at a time and
    interleaved (message i through every variant before i + 1): the
    client-side seconds of each, connect to the 250 for the message."""
    out: dict[str, list[float]] = {v: [] for v in variants}
    expected = setup.sink.count
    for i in range(count):
        rcpt = f"{i % setup.forwards + 1}{RCPT}"
        body = smtp_load.message(SENDER, rcpt, i, setup.size)
        for v in variants:
            try:
                out[v].append(
                    smtp_load.transaction_seconds(
                        "127.0.0.1", setup.ports[v], SENDER, rcpt, HELO, body
                    )
                )
            except (OSError, ConnectionError) as exc:
                raise BenchError(f"{v}: latency transaction {i}: {exc}") from exc
            expected += 1
    setup.sink.wait(expected, 120)
    return out


def run(
    folder: Path, variants: Sequence[str], args: argparse.Namespace
) -> tuple[list[Batch], list[str], dict[str, int], dict[str, list[float]]]:
    """Warm up, measure the rounds, check what the sink got: (batches, errors,
    resident KiB of each milter after the warm-up, latency samples)."""
    batches: list[Batch] = []
    errors: list[str] = []
    mix = MixState()
    warm_rss: dict[str, int] = {}
    latency: dict[str, list[float]] = {}
    with started(folder, variants, max(args.messages, args.warmup), args.dns_ttl) as setup:
        setup.size = args.size

        def one(v: str, messages: int, r: int) -> Batch:
            first = setup.sink.count
            if args.mix:
                a, d, cpu, plan, outcomes, delivered = send_mix_batch(
                    setup, v, messages, args.sessions, args.timeout, mix
                )
                if v.startswith("fwd-"):
                    mix.learn(v, setup.sink.messages()[first : first + delivered])
            else:
                a, d, cpu = send_batch(setup, v, messages, args.sessions, args.timeout)
                plan, outcomes, delivered = [], [], messages
            pid = setup.pids.get(f"milter:{v}")
            rss = tree_rss_kib(pid) if pid else 0
            return Batch(v, r, a, d, first, cpu, rss, plan, outcomes, delivered)

        for v in variants:
            warm = one(v, args.warmup, -1)
            warm_rss[v] = warm.rss_kib
        for r in range(args.rounds):
            order = [*variants[r % len(variants) :], *variants[: r % len(variants)]]
            for v in order:
                batch = one(v, args.messages, r)
                batches.append(batch)
                print(
                    f"round {r + 1} {v:<10} accepted {args.messages / batch.accept_s:7.1f}/s"
                    f"  delivered {args.messages / batch.deliver_s:7.1f}/s"
                    f"  rss {batch.rss_kib / 1024:.1f} MiB",
                    file=sys.stderr,
                )
        if args.latency:
            latency = measure_latency(setup, variants, args.latency)
        time.sleep(0.5)  # the last message's end may still be on its way to the file
        got = setup.sink.messages()
        if len(got) != setup.sink.count:
            errors.append(f"the sink dumped {len(got)} messages, counted {setup.sink.count}")
        for batch in batches:
            mine = got[batch.first : batch.first + batch.delivered]
            errors += (
                check_mix(mine, batch) if args.mix else check_batch(mine, batch, args.messages)
            )
        # Warnings about the clock or the like are the machine's, not ours.
        errors += [
            f"postfix: {line}"
            for line in setup.postfix.problems()
            if re.search(r": (fatal|panic|error): |: warning: .*milter", line)
        ][:5]
    return batches, errors, warm_rss, latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per batch")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions")
    parser.add_argument("--size", type=int, default=MESSAGE_BYTES, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=5, help="batches of each variant")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of: " + ", ".join(VARIANTS),
    )
    parser.add_argument(
        "--dns-ttl",
        type=int,
        default=0,
        metavar="S",
        help="TTL of the test zones' records (0: every SPF check asks the DNS server)",
    )
    parser.add_argument("--warmup", type=int, default=50, help="messages per variant, unmeasured")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for one batch")
    parser.add_argument(
        "--mix",
        action="store_true",
        help="send the realistic mix (benchmarks.smtp_load) instead of smtp-source's one sender",
    )
    parser.add_argument(
        "--latency",
        type=int,
        default=0,
        metavar="N",
        help="after the rounds, N transactions per variant one at a time: p50/p99 latency",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variants: {unknown}")
    for tool in ("smtp-source", "smtp-sink", "postfix", "dnsmasq"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on the PATH")
    if "fwd-redis" in variants and shutil.which("redis-server") is None:
        parser.error("redis-server is not on the PATH")
    if "pyspf-unix" in variants and not Path("/usr/lib/python3/dist-packages/spf_engine").is_dir():
        parser.error("pyspf-unix needs Debian's pyspf-milter package (scripts/bench installs it)")

    folder = Path(tempfile.mkdtemp(prefix="fwdmilter-milter-rate-"))
    try:
        batches, errors, warm_rss, latency = run(folder, variants, args)
    except BenchError as exc:
        print(f"milter_rate: {exc}\nwork folder: {folder}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    summary = summarize(batches, variants, args.messages)
    summary["_warm_rss_mib"] = {v: kib / 1024 for v, kib in warm_rss.items()}
    summary["_latency"] = latency_summary(latency)
    if args.json:
        json.dump(
            {
                "args": vars(args),
                "batches": [
                    {k: x for k, x in vars(b).items() if k not in ("plan", "outcomes")}
                    for b in batches
                ],
                "latency_samples": latency,
                "summary": summary,
                "errors": errors,
            },
            sys.stdout,
        )
        print()
    else:
        print_table(summary, args)
    if errors:
        print("checks FAILED:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 2
    if args.keep:
        print(f"work folder: {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
