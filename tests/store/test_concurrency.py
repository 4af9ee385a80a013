"""200 concurrent held-mail transactions leave counters equal to the entries.

Threads share one store (as libmilter's threads share the milter's); for
SQLite, several processes with their own stores share one file too (as
several milters and fwdctl on one host do).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import Store
from tests.store import workload
from tests.store.conftest import make_backend

N = 200
ROOT = Path(__file__).resolve().parents[2]


def _prepare(store: Store) -> None:
    for i in range(workload.CONTESTED):
        assert store.hold(workload.held(workload.TARGETS[0], f"c/{i}"))


def _check(store: Store, wins: Counter[str]) -> None:
    # Each contested entry was removed exactly once, requeued at most once.
    assert wins["release"] + wins["drop"] == workload.CONTESTED
    assert wins["requeue"] <= workload.CONTESTED
    assert wins["release"] <= wins["requeue"]
    expected = workload.expected_counts(N)
    for target in workload.TARGETS:
        entries = store.held(target)
        from_entries = (
            sum(e.state == "H" for e in entries),
            sum(e.state == "R" for e in entries),
        )
        assert store.held_counts(target) == from_entries == expected[target], target
    stats = store.stats()
    assert stats.held_by_target == {t: c for t, c in expected.items() if c != (0, 0)}
    assert stats.held == {
        "H": sum(h for h, _ in expected.values()),
        "R": sum(r for _, r in expected.values()),
        "N": 0,
    }


@pytest.mark.parametrize("name", ["sqlite", "redis", "redis-cluster"])
def test_threads(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    backend = make_backend(name, request, tmp_path)
    settings = backend.new_settings()
    if name == "sqlite":
        # What is checked is exactness under contention, not latency: 16
        # threads each committing with fsync (synchronous=FULL) on a busy
        # 2-core machine wait longer than the 2 s default for the write lock
        # now and then (SQLITE_BUSY, seen at a load average of 5 and more).
        settings = dataclasses.replace(settings, timeout=30.0)
    store = open_store(settings)
    try:
        _prepare(store)
        wins = workload.run(store, range(N), threads=16)
        _check(store, wins)
    finally:
        store.close()


def test_sqlite_processes_and_threads(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/shared/state.db"
    store = open_store(StoreSettings(url=url))
    try:
        _prepare(store)
        per_process = N // 4
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.store.workload",
                    url,
                    str(first),
                    str(per_process),
                    "4",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for first in range(0, N, per_process)
        ]
        wins: Counter[str] = Counter()
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            wins.update(json.loads(out))
        _check(store, wins)
    finally:
        store.close()
