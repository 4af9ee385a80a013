"""Store cost per forwarded message: SQLite against Redis, in one run.

Run from the repository root (it borrows the test harness's Redis server)::

    .venv/bin/python -m benchmarks.store_cost [--seconds 2] [--rounds 5]
        [--recipients 1] [--pin CPU] [--json]

One *transaction* is what the milter asks of its store for one forwarded
message: ``rcpt_info`` for its recipients (at RCPT) and ``record_messages``
of one record per recipient (at end of message), in the steady state (the
recipients' targets already seen, so Redis needs its two round trips).

Measured, each in this process and one thread, as one libmilter thread sees it:

* ``sqlite``: a new database file in a temporary folder on the machine's disk
  (WAL, ``synchronous=NORMAL``: what the milter uses);
* ``redis-tcp``: a private ``redis-server`` on a free loopback port
  (no persistence), through redis-py's connection pool;
* ``redis-unix``: the same server through its unix socket.

The store holds 1,000 forwards, some held mail, and grows by one record per
recipient per transaction.

A Redis round trip on loopback costs mostly the wake-up of the other process;
on a virtual machine a wake-up across cores costs several times one on the
same core. ``--pin CPU`` puts this process and redis-server on one core (a
Redis on the same host, lightly loaded); without it the scheduler decides
(closer to a Redis on another core or host, minus the network).

Rounds are interleaved, in an order that rotates, so that noise from other
work on the machine hits every backend alike; the ratio SQLite/Redis is taken
within each round and is the figure to trust.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import Forward, HeldEntry, MessageRecord, Store
from fwdmilter.store.redis import RedisStore
from tests.harness.redis import RedisServer

FORWARDS = 1000
TTL = 21 * 86400.0


def _fill(store: Store) -> None:
    store.import_items(
        Forward(f"u{i}@fwd.example", (f"t{i % 100}@dest.example",), created=1.0, updated=1.0)
        for i in range(FORWARDS)
    )
    for i in range(0, 100, 10):
        store.hold(
            HeldEntry(
                f"t{i}@dest.example",
                f"mx1/Q{i}",
                "H",
                "",
                "u@fwd.example",
                f"Q{i}",
                "mx1",
                "550 5.1.1 unknown",
                1.0,
            )
        )


class Bench:
    """One backend's store and its transaction counter."""

    def __init__(self, name: str, store: Store, recipients: int) -> None:
        self.name = name
        self.store = store
        self.recipients = recipients
        self.done = 0

    def transaction(self) -> None:
        i = self.done
        self.done += 1
        rcpts = [f"u{(i * 7 + j) % FORWARDS}@fwd.example" for j in range(self.recipients)]
        infos = self.store.rcpt_info(rcpts)
        if any(info.forward is None for info in infos):
            raise SystemExit(f"{self.name}: a forward is missing")
        now = time.time()
        srs = f"srs0=h{i % 997:03x}=tt=sender{i % 997}.example=user@fwd.example"
        self.store.record_messages(
            [
                MessageRecord(
                    srs,
                    f"{i}.{j}",
                    f"{i}@mx1",
                    "U",
                    f"user@sender{i % 997}.example",
                    rcpt,
                    f"t{j}@dest.example",
                    now,
                    "mx1",
                    f"Q{i:08X}",
                )
                for j, rcpt in enumerate(rcpts)
            ],
            ttl=TTL,
        )

    def sample(self, seconds: float) -> float:
        """Mean microseconds per transaction over about ``seconds``."""
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            for _ in range(50):
                self.transaction()
            count += 50
            now = time.perf_counter()
            if now >= deadline:
                return (now - started) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one sample")
    parser.add_argument("--rounds", type=int, default=5, help="samples of each backend")
    parser.add_argument("--recipients", type=int, default=1, help="recipients per message")
    parser.add_argument(
        "--pin",
        type=int,
        metavar="CPU",
        help="run this process and redis-server on core CPU (no cross-core wake-ups)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})

    with tempfile.TemporaryDirectory(prefix="fwdmilter-bench-") as tmp:
        folder = Path(tmp)
        server = RedisServer(folder, unix_socket=True)
        if args.pin is not None and server.proc is not None:
            os.sched_setaffinity(server.proc.pid, {args.pin})
        benches: list[Bench] = []
        try:
            for name, url in (
                ("sqlite", f"sqlite://{folder}/state.db"),
                ("redis-tcp", server.url),
                ("redis-unix", server.unix_url),
            ):
                prefix = f"fwdmilter:{name}"
                store = open_store(StoreSettings(url=url, prefix=prefix), instance="bench")
                _fill(store)
                bench = Bench(name, store, args.recipients)
                for _ in range(FORWARDS):  # warm: every target seen, pools, statements
                    bench.transaction()
                benches.append(bench)
            trips = {}
            for bench in benches:
                if isinstance(bench.store, RedisStore):
                    before = bench.store.round_trips
                    bench.transaction()
                    trips[bench.name] = bench.store.round_trips - before

            samples: dict[str, list[float]] = {b.name: [] for b in benches}
            ratios: dict[str, list[float]] = {b.name: [] for b in benches[1:]}
            for r in range(args.rounds):
                order = benches[r % len(benches) :] + benches[: r % len(benches)]
                this_round = {b.name: b.sample(args.seconds) for b in order}
                for name, us in this_round.items():
                    samples[name].append(us)
                for name, values in ratios.items():
                    values.append(this_round["sqlite"] / this_round[name])
        finally:
            for bench in benches:
                bench.store.close()
            server.stop()

    summary = {
        name: {
            "mean_us": statistics.median(values),
            "min_us": min(values),
            "round_trips": trips.get(name),
            "sqlite_over_this": statistics.median(ratios[name]) if name in ratios else None,
        }
        for name, values in samples.items()
    }
    if args.json:
        json.dump({"args": vars(args), "samples": samples, "summary": summary}, sys.stdout)
        print()
        return 0
    pinned = f", pinned to core {args.pin}" if args.pin is not None else ""
    print(
        f"store cost per forwarded message ({args.recipients} recipient(s): rcpt_info +"
        f" record_messages), {args.rounds} rounds of {args.seconds:g} s{pinned}, median of rounds"
    )
    print(f"{'backend':<12} {'µs/message':>11} {'best':>9} {'round trips':>12} {'SQLite/this':>12}")
    for name, s in summary.items():
        rt = "" if s["round_trips"] is None else str(s["round_trips"])
        ratio = "" if s["sqlite_over_this"] is None else f"{s['sqlite_over_this']:.2f}"
        print(f"{name:<12} {s['mean_us']:>11.1f} {s['min_us']:>9.1f} {rt:>12} {ratio:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
