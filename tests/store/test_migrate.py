"""Moving a site from SQLite to Redis (and back) loses nothing."""

from __future__ import annotations

import time
from pathlib import Path

from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import Forward, HeldEntry, MessageRecord, Store
from fwdmilter.store.migrate import migrate
from tests.harness.redis import RedisServer
from tests.store.conftest import Clock, entry, fwd, rec


def _fill(store: Store, n: int) -> None:
    """A small site: forwards (some moved), records under many addresses, held mail."""
    for i in range(n):
        store.put_forward(fwd(f"u{i}@fwd.example", f"t{i % 7}@dest.example", contact=f"c{i}@x"))
    for i in range(0, n, 10):
        store.delete_forward(f"u{i}@fwd.example", moved_to=f"u{i}@new.example", now=5.0)
    for i in range(n):
        store.record_messages(
            [
                rec(
                    f"srs0=s{i % 40}@fwd.example",
                    f"r{i}.{j}",
                    target=f"t{j}@dest.example",
                    state="BURH"[i % 4],
                )
                for j in range(2)
            ],
            ttl=3600 + i,
        )
    for i in range(n // 4):
        store.hold(entry(f"t{i % 7}@dest.example", f"mx{i % 3}/Q{i}", held_at=float(i)))
        if i % 3 == 0:
            store.mark_requeued(f"t{i % 7}@dest.example", f"mx{i % 3}/Q{i}", 100.0 + i)
        if i % 5 == 0:
            store.mark_alerted(f"t{i % 7}@dest.example", f"mx{i % 3}/Q{i}")


def _everything(store: Store) -> tuple[list[Forward], list[MessageRecord], list[HeldEntry]]:
    items = list(store.export())
    return (
        sorted((i for i in items if isinstance(i, Forward)), key=lambda f: f.rcpt),
        sorted(
            (i for i in items if isinstance(i, MessageRecord)), key=lambda r: (r.srs, r.record_id)
        ),
        sorted(
            (i for i in items if isinstance(i, HeldEntry)), key=lambda e: (e.target, e.entry_id)
        ),
    )


def test_sqlite_to_redis_and_back(tmp_path: Path, redis_server: RedisServer) -> None:
    clock = Clock(time.time())  # Redis TTLs run on real time
    sqlite = open_store(StoreSettings(url=f"sqlite://{tmp_path}/state.db"), clock=clock)
    redis = open_store(StoreSettings(url=redis_server.url, prefix="fwdmilter:mig"), clock=clock)
    back = open_store(StoreSettings(url=f"sqlite://{tmp_path}/back.db"), clock=clock)
    try:
        _fill(sqlite, 200)
        sqlite.record_messages([rec("srs0=gone@fwd.example", "old")], ttl=1)
        clock.advance(2)  # that one has expired: it is not moved
        before = _everything(sqlite)
        assert [len(x) for x in before] == [200, 400, 50]

        counts = migrate(sqlite, redis)
        assert counts == {"forwards": 200, "messages": 400, "held": 50, "stored": 650}
        assert _everything(redis) == before
        assert redis.stats() == sqlite.stats()
        for t in range(7):
            target = f"t{t}@dest.example"
            assert redis.held_counts(target) == sqlite.held_counts(target)
        rcpts = [f"u{i}@fwd.example" for i in range(200)]
        assert redis.rcpt_info(rcpts) == sqlite.rcpt_info(rcpts)
        for i in range(40):
            assert redis.messages(f"srs0=s{i}@fwd.example") == sqlite.messages(
                f"srs0=s{i}@fwd.example"
            )

        assert migrate(redis, back)["stored"] == 650
        assert _everything(back) == before
        assert back.stats() == sqlite.stats()
    finally:
        for store in (sqlite, redis, back):
            store.close()


def test_records_keep_their_remaining_lifetime(tmp_path: Path, redis_server: RedisServer) -> None:
    sqlite = open_store(StoreSettings(url=f"sqlite://{tmp_path}/state.db"))
    redis = open_store(StoreSettings(url=redis_server.url, prefix="fwdmilter:mig-ttl"))
    try:
        sqlite.record_messages([rec(record_id="short")], ttl=120)
        sqlite.record_messages([rec(record_id="long")], ttl=7200)
        migrate(sqlite, redis)
        with redis_server.admin() as r:
            ttl_short = r.ttl(f"fwdmilter:mig-ttl:message:{{{rec().srs}}}:short")
            ttl_long = r.ttl(f"fwdmilter:mig-ttl:message:{{{rec().srs}}}:long")
            ttl_set = r.ttl(f"fwdmilter:mig-ttl:messages:{{{rec().srs}}}")
        assert 115 <= ttl_short <= 120
        assert 7195 <= ttl_long <= 7200
        assert ttl_set >= ttl_long
    finally:
        sqlite.close()
        redis.close()
