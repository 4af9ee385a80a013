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
=========== ==============================================================

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

from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import Forward
from tests.harness.dns import DnsServer
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
}


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


def _fill_store(url: str, count: int) -> None:
    """``1fwd@fwd.example`` … ``{count}fwd@...`` forward to ``tN@dest.example``."""
    store = open_store(StoreSettings(url=url), instance="bench")
    try:
        now = time.time()
        store.import_items(
            Forward(f"{i}{RCPT}", f"t{i}@{TARGET_DOMAIN}", created=now, updated=now)
            for i in range(1, count + 1)
        )
    finally:
        store.close()


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
        dns = DnsServer(folder / "dns", ttl=dns_ttl)
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
            elif name.startswith("fwd-"):
                workdir = folder / name
                store_url = f"sqlite://{workdir}/state.db"
                if name == "fwd-redis":
                    redis = RedisServer(folder)
                    stack.callback(redis.stop)
                    if redis.proc is not None:
                        pids["redis"] = redis.proc.pid
                    store_url = redis.url
                sock = (
                    f"inet:{free_port()}@127.0.0.1"
                    if name == "fwd-inet"
                    else f"unix:{runtime.socket(name)}"
                )
                fm = FwdMilter(
                    runtime.socket(name),
                    workdir,
                    dns_port=dns.port,
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
                fwd[name] = fm
                if fm.proc is not None:
                    pids[f"milter:{name}"] = fm.proc.pid
                specs[name] = sock
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
        yield Setup(pf, sink, ports, fwd, pids)


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
        str(MESSAGE_BYTES),
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
        elif m.mail_from != f"<{SENDER}>":
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
    }
    ratios: dict[str, Any] = {}
    for label, (a, b) in pairs.items():
        if a in variants and b in variants:
            ratios[label] = _spread(
                [by[a, r].rate(messages) / by[b, r].rate(messages) for r in rounds]
            )
    out["_ratios"] = ratios
    return out


def _ratio(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return f"{'':>8} {'':>11}"
    med, low, high = row[key]
    return f"{med:>8.2f} {low:>5.2f}-{high:<5.2f}"


def print_table(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"milter_rate: {args.messages} messages of {MESSAGE_BYTES} B, {args.sessions} sessions,"
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
    print(f"Milter resident memory, MiB (after round 1, after round {args.rounds}):")
    for v, row in rows.items():
        first, last = row["rss_mib"]
        if first:
            print(f"{v:<10} {first:>8.1f} {last:>8.1f}")
    ratios = summary["_ratios"]
    if ratios:
        print()
        for label, (med, low, high) in ratios.items():
            print(f"{label:<36} {med:.2f}  ({low:.2f}-{high:.2f})")
    print()
    checks = []
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


def run(
    folder: Path, variants: Sequence[str], args: argparse.Namespace
) -> tuple[list[Batch], list[str]]:
    """Warm up, measure the rounds, check what the sink got: (batches, errors)."""
    batches: list[Batch] = []
    errors: list[str] = []
    with started(folder, variants, max(args.messages, args.warmup), args.dns_ttl) as setup:
        for v in variants:
            send_batch(setup, v, args.warmup, args.sessions, args.timeout)
        for r in range(args.rounds):
            order = [*variants[r % len(variants) :], *variants[: r % len(variants)]]
            for v in order:
                first = setup.sink.count
                a, d, cpu = send_batch(setup, v, args.messages, args.sessions, args.timeout)
                pid = setup.pids.get(f"milter:{v}")
                rss = tree_rss_kib(pid) if pid else 0
                batches.append(Batch(v, r, a, d, first, cpu, rss))
                print(
                    f"round {r + 1} {v:<10} accepted {args.messages / a:7.1f}/s"
                    f"  delivered {args.messages / d:7.1f}/s",
                    file=sys.stderr,
                )
        time.sleep(0.5)  # the last message's end may still be on its way to the file
        got = setup.sink.messages()
        if len(got) != setup.sink.count:
            errors.append(f"the sink dumped {len(got)} messages, counted {setup.sink.count}")
        for batch in batches:
            errors += check_batch(
                got[batch.first : batch.first + args.messages], batch, args.messages
            )
        # Warnings about the clock or the like are the machine's, not ours.
        errors += [
            f"postfix: {line}"
            for line in setup.postfix.problems()
            if re.search(r": (fatal|panic|error): |: warning: .*milter", line)
        ][:5]
    return batches, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per batch")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions")
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

    folder = Path(tempfile.mkdtemp(prefix="fwdmilter-milter-rate-"))
    try:
        batches, errors = run(folder, variants, args)
    except BenchError as exc:
        print(f"milter_rate: {exc}\nwork folder: {folder}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    summary = summarize(batches, variants, args.messages)
    if args.json:
        json.dump(
            {
                "args": vars(args),
                "batches": [vars(b) for b in batches],
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
