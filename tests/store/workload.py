"""Held-mail transactions racing on shared targets, for the concurrency tests.

Run as ``python -m tests.store.workload URL FIRST COUNT THREADS`` it opens its
own store (another process, as another milter or fwdctl would) and prints
the number of successful contested operations as JSON.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import HeldEntry, Store

TARGETS = ("a@dest.example", "b@dest.example", "c@dest.example")
#: Entries every transaction fights over (all on TARGETS[0]).
CONTESTED = 25


def held(target: str, entry_id: str) -> HeldEntry:
    return HeldEntry(target, entry_id, "H", "s@x.example", "r@fwd.example", "Q", "mx", "550", 1.0)


def transaction(store: Store, i: int) -> Counter[str]:
    """One entry's life, then a grab at a contested entry."""
    target, entry_id = TARGETS[i % len(TARGETS)], f"w/{i}"
    kind = i % 4
    ok = store.hold(held(target, entry_id))
    if kind == 0:
        ok &= store.drop(target, entry_id)
    elif kind == 1:
        ok &= store.mark_requeued(target, entry_id, 2.0) and store.release(target, entry_id)
    elif kind == 2:
        ok &= store.mark_requeued(target, entry_id, 2.0)
        ok &= store.rehold(target, entry_id, "Q2", "mx", "again", 3.0)
    else:
        ok &= store.mark_requeued(target, entry_id, 2.0)
    if not ok:
        raise AssertionError(f"transaction {i} was refused a step on its own entry")
    contested = f"c/{i % CONTESTED}"
    wins: Counter[str] = Counter()
    wins["requeue"] += store.mark_requeued(TARGETS[0], contested, 2.0)
    wins["release"] += store.release(TARGETS[0], contested)
    wins["drop"] += store.drop(TARGETS[0], contested)
    return wins


def expected_counts(n: int) -> dict[str, tuple[int, int]]:
    """(H, R) each target has once transactions 0..n-1 are done."""
    counts = {t: [0, 0] for t in TARGETS}
    for i in range(n):
        if i % 4 in (2, 3):
            counts[TARGETS[i % len(TARGETS)]][i % 4 - 2] += 1
    return {t: (h, r) for t, (h, r) in counts.items()}


def run(store: Store, ids: range, threads: int) -> Counter[str]:
    total: Counter[str] = Counter()
    with ThreadPoolExecutor(threads) as pool:
        for wins in pool.map(lambda i: transaction(store, i), ids):
            total.update(wins)
    return total


def main() -> None:
    url, first, count, threads = sys.argv[1], *map(int, sys.argv[2:5])
    store = open_store(StoreSettings(url=url, timeout=30))
    try:
        wins = run(store, range(first, first + count), threads)
    finally:
        store.close()
    print(json.dumps(dict(wins)))


if __name__ == "__main__":
    main()
