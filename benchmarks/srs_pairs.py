"""SRS speed: forward+reverse pairs per second, ours against Mail::SRS and postsrsd.

Run from the repository root (it borrows the test harness's process helpers)::

    .venv/bin/python -m benchmarks.srs_pairs [--seconds 2] [--rounds 5] [--json]

One *pair* is the forward rewrite of a sender and the reverse of the result,
what a forwarder pays for one message and its bounce. Three implementations
are measured in the same run, on the same secret, hash length and senders:

* ``srs``: our codec, in this process, one thread;
* Mail::SRS (Guarded, the reference): one Perl process runs the loop itself and
  times it with Time::HiRes, so no pipe traffic is counted;
* postsrsd: over Postfix's tcp_table protocol, one persistent connection per
  direction as Postfix's client keeps, one ``get`` on the forward port and one
  on the reverse port per pair. Its figure therefore includes two loopback
  round trips per pair, which is what a Postfix using it pays too.

Each measured process is pinned to one core, the *bench core*: this process
while it runs our codec, the Perl process, and postsrsd with the two processes
it forks for the two connections. postsrsd is measured twice: with its client
(this process) on the bench core too, so that the whole path, daemon, client
and loopback, holds one core; and with the client on the other core, as when
the MTA's lookup runs elsewhere, where every request and reply waits for a
wake-up across cores (on a virtual machine, dearly).

The rounds are interleaved, in an order that rotates from round to round, so
that a burst of noise from other work on the machine hits every implementation
alike; the ratios against Mail::SRS are taken within each round and are the
figures to trust, the absolute rates vary with the machine's load. "pairs/CPU-s"
divides by the CPU time the measured process spent (for postsrsd: its two
connection processes, kernel time included), and "CPU" is that time over the
wall time: below 100% the process waited (for a reply) or was preempted.

Before measuring, the three must agree: every sender of the mix is forwarded by
each, the results must be byte-identical, and each must reverse it back to the
sender. A benchmark of a broken codec is worthless, so a disagreement stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TextIO

from srs import SRS
from tests.harness.peers import PostSRSd

DOMAIN: Final = "fwd.example.net"
SECRET: Final = "bench-secret-Kq7w3NvX"  # noqa: S105 - a throwaway key for the run
HASH_LENGTH: Final = 4
MAX_AGE_DAYS: Final = 21
SEPARATOR: Final = "="
#: The ratio of ours to Mail::SRS that the codec is meant to reach.
TARGET_RATIO: Final = 2.0

#: A day's mix at a forwarder: mostly plain senders, some written in mixed case
#: (the MAC folds case, the address keeps it), and mail that an earlier
#: forwarder already rewrote to SRS0, which becomes SRS1. The bounce of each
#: goes back to the sender as written (an SRS0 sender's tag is already "SRS0").
SENDERS: Final = (
    "alice@example.org",
    "bob.smith@mail.example.com",
    "newsletter-bounces@lists.example.net",
    "j.doe+invoices@example.co.uk",
    "no-reply@notifications.example.io",
    "Alice.B@Example.ORG",
    "John.Doe@Company.Example.COM",
    "SALES@EXAMPLE.NET",
    "SRS0=8Lsq=JM=example.org=carol@relay.example.edu",
    "SRS0=Ab3d=JN=mail.example.com=dave.o@forward.example.org",
)

REFERENCE: Final = "Mail::SRS"

_PERL: Final = r"""
use strict; use warnings;
use Mail::SRS; use JSON::PP;
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC CLOCK_PROCESS_CPUTIME_ID);
$| = 1;
my $json = JSON::PP->new->utf8(1)->canonical;
my $cfg = $json->decode(scalar <STDIN>);
my $srs = Mail::SRS->new(
    Secret => [$cfg->{secret}], HashLength => $cfg->{hash_length},
    HashMin => $cfg->{hash_length}, MaxAge => $cfg->{max_age},
    Separator => $cfg->{separator},
);
my $alias = $cfg->{domain};
# Octets, as an MTA hands them over.
my @senders = @{$cfg->{senders}};
utf8::encode($_) for @senders;
print $json->encode({perl => sprintf('%vd', $^V), mail_srs => "$Mail::SRS::VERSION"}), "\n";
while (my $line = <STDIN>) {
    my $req = $json->decode($line);
    my $reply;
    if ($req->{op} eq 'run') {
        my $pairs = 0;
        my $c0 = clock_gettime(CLOCK_PROCESS_CPUTIME_ID);
        my $t0 = clock_gettime(CLOCK_MONOTONIC);
        my $end = $t0 + $req->{seconds};
        my $t;
        do {
            $srs->reverse($srs->forward($_, $alias)) for @senders;
            $pairs += @senders;
        } while (($t = clock_gettime(CLOCK_MONOTONIC)) < $end);
        my $cpu = clock_gettime(CLOCK_PROCESS_CPUTIME_ID) - $c0;
        $reply = {pairs => $pairs, wall => $t - $t0, cpu => $cpu};
    } else {
        my $addr = $req->{addr};
        utf8::encode($addr);
        my $out = eval {
            $req->{op} eq 'forward' ? $srs->forward($addr, $alias) : $srs->reverse($addr);
        };
        if (defined $out) { utf8::decode($out); $reply = {ok => $out}; }
        else { (my $err = $@) =~ s/\s+at \S+ line \d+.*//s; $reply = {error => $err}; }
    }
    print $json->encode($reply), "\n";
}
"""


class BenchmarkError(Exception):
    """The benchmark cannot give a meaningful figure (a peer failed or disagrees)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One timed run: how many pairs, in how much wall-clock and CPU time."""

    pairs: int
    wall: float
    cpu: float
    #: For postsrsd, the CPU time of the client (this process) in the run.
    client_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.pairs / self.wall

    @property
    def cpu_rate(self) -> float | None:
        return self.pairs / self.cpu if self.cpu > 0 else None


# -- ours -----------------------------------------------------------------


def run_ours(codec: SRS, senders: Sequence[str], seconds: float) -> Sample:
    """Pairs through our codec for ``seconds``, in this thread.

    The clock is read by the codec (``now`` left out), as Mail::SRS and
    postsrsd read theirs.
    """
    forward, reverse = codec.forward, codec.reverse
    pairs = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for sender in senders:
            reverse(forward(sender))
        pairs += len(senders)
        t = time.perf_counter()
        if t >= end:
            break
    return Sample(pairs, t - t0, time.process_time() - c0)


# -- Mail::SRS --------------------------------------------------------------


class PerlMailSRS:
    """One Perl process with one Mail::SRS object, pinned to ``cpu``."""

    def __init__(self, senders: Sequence[str], cpu: int) -> None:
        self._proc = subprocess.Popen(
            ["perl", "-e", _PERL],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        os.sched_setaffinity(self._proc.pid, {cpu})
        config = {
            "secret": SECRET,
            "domain": DOMAIN,
            "hash_length": HASH_LENGTH,
            "max_age": MAX_AGE_DAYS,
            "separator": SEPARATOR,
            "senders": list(senders),
        }
        self.versions = self._call(config)

    def _call(self, request: dict[str, object]) -> dict[str, object]:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        if stdin is None or stdout is None:
            raise BenchmarkError("the Perl process has no pipes")
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise BenchmarkError("the Perl process running Mail::SRS died")
        answer: dict[str, object] = json.loads(line)
        return answer

    def _rewrite(self, op: str, address: str) -> str:
        answer = self._call({"op": op, "addr": address})
        if "error" in answer:
            raise BenchmarkError(f"Mail::SRS refused to {op} {address!r}: {answer['error']}")
        return str(answer["ok"])

    def forward(self, address: str) -> str:
        return self._rewrite("forward", address)

    def reverse(self, address: str) -> str:
        return self._rewrite("reverse", address)

    def run(self, seconds: float) -> Sample:
        answer = self._call({"op": "run", "seconds": seconds})
        return Sample(
            int(str(answer["pairs"])), float(str(answer["wall"])), float(str(answer["cpu"]))
        )

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        if self._proc.stdout:
            self._proc.stdout.close()


# -- postsrsd ---------------------------------------------------------------


def _table_key(address: str) -> bytes:
    """``address`` as Postfix's tcp_table client sends it: %XX for '%', space,
    controls and octets outside ASCII (tcp_table(5))."""
    out = bytearray()
    for octet in address.encode("utf-8"):
        if octet <= 0x20 or octet >= 0x7F or octet == 0x25:
            out += b"%%%02X" % octet
        else:
            out.append(octet)
    return bytes(out)


def _read_reply(recv: Callable[[int], bytes]) -> bytes:
    reply = recv(4096)
    while not reply.endswith(b"\n"):
        chunk = recv(4096)
        if not chunk:
            raise BenchmarkError("postsrsd closed the connection")
        reply += chunk
    return reply


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()}


def _cpu_seconds(pid: int) -> float:
    """User plus system time of process ``pid`` so far, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5); the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postsrsd_version() -> str:
    try:
        out = subprocess.run(
            ["postsrsd", "-v"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except OSError:
        return "?"
    return out.split()[-1] if out.split() else "?"


class PostSRSdPeer:
    """A postsrsd daemon pinned to ``cpu``, with one open connection per table."""

    def __init__(self, workdir: Path, senders: Sequence[str], cpu: int) -> None:
        self._daemon = PostSRSd(
            workdir, DOMAIN, [SECRET], SEPARATOR, hash_length=HASH_LENGTH, hash_min=HASH_LENGTH
        )
        try:
            self.version = _postsrsd_version()
            # postsrsd forks one process per connection; they inherit this.
            os.sched_setaffinity(self._daemon.proc.pid, {cpu})
            before = _children(self._daemon.proc.pid)
            self._fwd = socket.create_connection(("127.0.0.1", self._daemon.forward_port), 5)
            self._rev = socket.create_connection(("127.0.0.1", self._daemon.reverse_port), 5)
            self._requests = [b"get " + _table_key(s) + b"\n" for s in senders]
            self.forward(senders[0])  # both connection processes exist after a reply
            self.reverse(self.forward(senders[0]))
            self._servers = sorted(_children(self._daemon.proc.pid) - before)
            if len(self._servers) != 2:
                raise BenchmarkError(f"expected 2 postsrsd connection processes: {self._servers}")
            for pid in self._servers:
                if os.sched_getaffinity(pid) != {cpu}:
                    raise BenchmarkError(f"postsrsd process {pid} is not pinned to CPU {cpu}")
        except BaseException:
            self.close()
            raise

    def _get(self, sock: socket.socket, key: bytes) -> str:
        sock.sendall(b"get " + key + b"\n")
        reply = _read_reply(sock.recv).decode("utf-8", "surrogateescape").rstrip("\n")
        code, _, value = reply.partition(" ")
        if code != "200":
            raise BenchmarkError(f"postsrsd answered {reply!r} to {key!r}")
        # The reply is %-encoded as the request is.
        return urllib.parse.unquote(value, errors="surrogateescape")

    def forward(self, address: str) -> str:
        return self._get(self._fwd, _table_key(address))

    def reverse(self, address: str) -> str:
        return self._get(self._rev, _table_key(address))

    def run(self, seconds: float) -> Sample:
        """Pairs through postsrsd for ``seconds``; the CPU time is the daemon's."""
        fsend, frecv = self._fwd.sendall, self._fwd.recv
        rsend, rrecv = self._rev.sendall, self._rev.recv
        requests = self._requests
        cpu0 = sum(_cpu_seconds(pid) for pid in self._servers)
        client0 = time.process_time()
        pairs = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            for request in requests:
                fsend(request)
                reply = _read_reply(frecv)
                if reply[:4] != b"200 ":
                    raise BenchmarkError(f"postsrsd answered {reply!r} to {request!r}")
                # The value comes back encoded as a key is: send it on as is.
                rsend(b"get " + reply[4:])
                reply = _read_reply(rrecv)
                if reply[:4] != b"200 ":
                    raise BenchmarkError(f"postsrsd answered {reply!r} in reverse")
            pairs += len(requests)
            t = time.perf_counter()
            if t >= end:
                break
        cpu = sum(_cpu_seconds(pid) for pid in self._servers) - cpu0
        return Sample(pairs, t - t0, cpu, time.process_time() - client0)

    def close(self) -> None:
        for name in ("_fwd", "_rev"):
            sock: socket.socket | None = getattr(self, name, None)
            if sock is not None:
                sock.close()
        self._daemon.stop()


# -- correctness ----------------------------------------------------------

Rewriter = Callable[[str], str]


def _try(rewrite: Rewriter, address: str) -> str:
    try:
        return rewrite(address)
    except Exception as exc:  # noqa: BLE001 - any failure is a disagreement to report
        return f"<{type(exc).__name__}: {exc}>"


def _disagreements(
    peers: dict[str, tuple[Rewriter, Rewriter]], senders: Sequence[str]
) -> list[str]:
    problems: list[str] = []
    for sender in senders:
        written = {name: _try(forward, sender) for name, (forward, _) in peers.items()}
        if len(set(written.values())) != 1:
            problems.append(f"forward {sender!r}: {written}")
            continue
        address = next(iter(written.values()))
        for name, (_, reverse) in peers.items():
            back = _try(reverse, address)
            if back != sender:
                problems.append(f"{name} reverses {address!r} to {back!r}, not {sender!r}")
    return problems


def verify(peers: dict[str, tuple[Rewriter, Rewriter]], senders: Sequence[str]) -> None:
    """Every sender: the same SRS address from each, and each reverses it back.

    Raises BenchmarkError on any difference. The day stamp comes from each
    one's clock, so a check that straddles midnight is run again.
    """
    for _ in range(2):
        day = int(time.time() // 86400)
        problems = _disagreements(peers, senders)
        if not problems or int(time.time() // 86400) == day:
            break
    if problems:
        raise BenchmarkError("the implementations disagree:\n  " + "\n  ".join(problems))


# -- measuring and reporting -------------------------------------------------


def measure(
    runners: dict[str, Callable[[float], Sample]],
    seconds: float,
    rounds: int,
    log: TextIO,
) -> dict[str, list[Sample]]:
    """``rounds`` samples of each runner, interleaved in a rotating order."""
    for run in runners.values():  # warm up: caches, Perl's and postsrsd's first calls
        run(min(0.3, seconds))
    names = list(runners)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(runners[name](seconds))
        rates = ", ".join(f"{name} {samples[name][-1].rate:,.0f}" for name in names)
        print(f"round {r + 1}/{rounds}: pairs/s {rates}", file=log, flush=True)
    return samples


@dataclasses.dataclass(frozen=True, slots=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """One implementation's figures over all rounds."""

    name: str
    label: str
    pairs_per_s: Spread
    #: Its rate over Mail::SRS's in the same round, round by round.
    ratio_to_mail_srs: Spread
    pairs_per_cpu_s: float | None
    #: CPU time of the measured process over wall time (1.0: never waited).
    cpu_share: float
    #: The same for the postsrsd client; None for the others.
    client_cpu_share: float | None
    samples: list[Sample]


def summarise(samples: dict[str, list[Sample]], labels: dict[str, str]) -> list[Result]:
    """Median and spread of each rate, and of each per-round ratio to Mail::SRS."""
    reference = samples[REFERENCE]
    results: list[Result] = []
    for name, runs in samples.items():
        cpu_rates = [r for r in (s.cpu_rate for s in runs) if r is not None]
        client = [s.client_cpu / s.wall for s in runs if s.client_cpu is not None]
        results.append(
            Result(
                name=name,
                label=labels[name],
                pairs_per_s=Spread.of([s.rate for s in runs]),
                ratio_to_mail_srs=Spread.of(
                    [s.rate / ref.rate for s, ref in zip(runs, reference, strict=True)]
                ),
                pairs_per_cpu_s=statistics.median(cpu_rates) if cpu_rates else None,
                cpu_share=statistics.median(s.cpu / s.wall for s in runs),
                client_cpu_share=statistics.median(client) if client else None,
                samples=runs,
            )
        )
    return results


def _machine() -> dict[str, object]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    debian = "?"
    with contextlib.suppress(OSError):
        debian = Path("/etc/debian_version").read_text().strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "debian": debian,
        "kernel": platform.release(),
    }


def table(results: Sequence[Result]) -> str:
    """The results as a plain-text table, one implementation a row."""
    header = (
        f"{'implementation':<38} {'pairs/s':>9} {'min-max':>17} {'vs Mail::SRS':>12} "
        f"{'min-max':>11} {'pairs/CPU-s':>11} {'CPU':>5}"
    )
    lines = [header, "-" * len(header)]
    for res in results:
        rate, ratio = res.pairs_per_s, res.ratio_to_mail_srs
        rate_range = f"{rate.min:,.0f}-{rate.max:,.0f}"
        ratio_range = f"{ratio.min:.2f}-{ratio.max:.2f}"
        cpu_rate = "?" if res.pairs_per_cpu_s is None else f"{res.pairs_per_cpu_s:,.0f}"
        lines.append(
            f"{res.label:<38} {rate.median:>9,.0f} {rate_range:>17} {ratio.median:>11.2f}x "
            f"{ratio_range:>11} {cpu_rate:>11} {res.cpu_share:>5.0%}"
        )
    return "\n".join(lines)


def _as_json(report: dict[str, object], results: Sequence[Result]) -> str:
    rows = []
    for res in results:
        row = dataclasses.asdict(res)
        row["samples"] = [
            {"pairs": s.pairs, "wall_s": s.wall, "cpu_s": s.cpu, "pairs_per_s": s.rate}
            for s in res.samples
        ]
        rows.append(row)
    return json.dumps({**report, "results": rows}, indent=2)


def run_all(
    seconds: float, rounds: int, bench_cpu: int, other_cpu: int | None
) -> tuple[dict[str, list[Sample]], dict[str, str]]:
    """Start the peers, check that all agree, measure; the samples and row labels."""
    # While it only waits, this process stays off the bench core.
    idle_cpu = bench_cpu if other_cpu is None else other_cpu

    def on(cpu: int, run: Callable[[float], Sample]) -> Callable[[float], Sample]:
        def pinned(seconds: float) -> Sample:
            os.sched_setaffinity(0, {cpu})
            try:
                return run(seconds)
            finally:
                os.sched_setaffinity(0, {idle_cpu})

        return pinned

    ours = SRS([SECRET], DOMAIN, hash_length=HASH_LENGTH, max_age_days=MAX_AGE_DAYS)
    with tempfile.TemporaryDirectory(prefix="srs-bench-") as tmp:
        perl = PerlMailSRS(SENDERS, bench_cpu)
        try:
            postsrsd = PostSRSdPeer(Path(tmp), SENDERS, bench_cpu)
            try:
                os.sched_setaffinity(0, {idle_cpu})
                verify(
                    {
                        "srs": (ours.forward, ours.reverse),
                        "Mail::SRS": (perl.forward, perl.reverse),
                        "postsrsd": (postsrsd.forward, postsrsd.reverse),
                    },
                    SENDERS,
                )
                runners = {
                    "srs": on(bench_cpu, functools.partial(run_ours, ours, SENDERS)),
                    "Mail::SRS": perl.run,
                    # The whole path on one core: daemon, client and loopback.
                    "postsrsd": on(bench_cpu, postsrsd.run),
                }
                if other_cpu is not None:
                    # As when the MTA's lookup runs on another core: each
                    # request and reply then waits for a wake-up across cores.
                    runners["postsrsd/2 cores"] = on(other_cpu, postsrsd.run)
                samples = measure(runners, seconds, rounds, sys.stderr)
            finally:
                postsrsd.close()
        finally:
            perl.close()
    labels = {
        "srs": f"srs (Python {platform.python_version()})",
        "Mail::SRS": f"Mail::SRS {perl.versions['mail_srs']} (Perl {perl.versions['perl']})",
        "postsrsd": f"postsrsd {postsrsd.version}, client same core",
        "postsrsd/2 cores": f"postsrsd {postsrsd.version}, client other core",
    }
    return samples, labels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.srs_pairs",
        description="SRS forward+reverse pairs per second: srs, Mail::SRS and postsrsd.",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one sample")
    parser.add_argument("--rounds", type=int, default=5, help="samples of each implementation")
    parser.add_argument("--cpu", type=int, help="the core for the measured processes")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")
    allowed = sorted(os.sched_getaffinity(0))
    bench_cpu: int = allowed[-1] if args.cpu is None else args.cpu
    if bench_cpu not in allowed:
        parser.error(f"--cpu {bench_cpu} is not one of the usable CPUs {allowed}")
    other_cpu = next((c for c in allowed if c != bench_cpu), None)

    load_before = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.UTC)
    samples, labels = run_all(args.seconds, args.rounds, bench_cpu, other_cpu)
    load_after = os.getloadavg()[0]
    results = summarise(samples, labels)
    ours_ratio = results[0].ratio_to_mail_srs
    met = ours_ratio.median >= TARGET_RATIO
    machine = _machine()

    if args.json:
        report: dict[str, object] = {
            "date": started.isoformat(timespec="seconds"),
            "command": " ".join(["python -m benchmarks.srs_pairs", *sys.argv[1:]]),
            "machine": machine,
            "load_average_1min": {"before": load_before, "after": load_after},
            "settings": {
                "seconds": args.seconds,
                "rounds": args.rounds,
                "bench_cpu": bench_cpu,
                "other_cpu": other_cpu,
                "hash_length": HASH_LENGTH,
                "senders": list(SENDERS),
            },
            "verified": True,
            "target": {"ratio": TARGET_RATIO, "median": ours_ratio.median, "met": met},
        }
        print(_as_json(report, results))
        return 0
    print(
        f"SRS forward+reverse pairs, {started:%Y-%m-%d %H:%M} UTC, {machine['cpus']} CPUs "
        f"({machine['cpu_model']}), Debian {machine['debian']}"
    )
    print(
        f"{args.rounds} rounds of {args.seconds:g} s, measured processes on CPU {bench_cpu}, "
        f"load {load_before:.2f} before, {load_after:.2f} after"
    )
    print(f"verified: the three agree on all {len(SENDERS)} senders of the mix\n")
    print(table(results))
    for res in results:
        if res.client_cpu_share is not None:
            print(
                f"  {res.label}: CPU use of postsrsd {res.cpu_share:.0%}, "
                f"of the client (Python) {res.client_cpu_share:.0%}"
            )
    print(
        f"\ntarget srs >= {TARGET_RATIO:g}x Mail::SRS: {'met' if met else 'NOT met'} "
        f"(median {ours_ratio.median:.2f}x, rounds {ours_ratio.min:.2f}-{ours_ratio.max:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as exc:
        print(f"srs_pairs: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
