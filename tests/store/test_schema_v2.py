"""Schema version 2: one normal form for every address, the new entry
fields and operations (run against every backend), and the migrations of
version-1 stores (SQLite and Redis) that re-key mixed-case data."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_py

from fwdmilter.config import StoreSettings
from fwdmilter.errors import StoreUnavailable
from fwdmilter.store import open_store
from fwdmilter.store.base import SCHEMA_VERSION, Forward, HeldEntry, RcptInfo, Store
from fwdmilter.store.migrate import migrate
from fwdmilter.store.redis import RedisStore
from fwdmilter.store.sqlite import MIGRATIONS, SQLiteStore
from tests.harness.redis import RedisServer
from tests.store.conftest import Clock, entry, fwd, rec


def _case_variants(address: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in address)


# -- the one normal form (contract) -------------------------------------------------------


def test_a_forward_typed_in_capitals_meets_its_targets_entries(store: Store) -> None:
    store.put_forward(Forward("carol@fwd.example", ("Nobody@Broken.Example",)))
    assert store.get_forward("carol@fwd.example") == Forward(
        "carol@fwd.example", ("nobody@broken.example",)
    )
    assert store.hold(entry("nobody@broken.example", "mx1/Q1"))
    (info,) = store.rcpt_info(["Carol@FWD.example"])
    assert info.held == 1
    assert info.forward is not None and info.forward.target == "nobody@broken.example"
    # Written in another case, an entry still counts for the same target.
    assert store.hold(entry("NOBODY@broken.example", "mx1/Q2"))
    assert not store.hold(entry("nobody@BROKEN.example", "mx1/Q2"))  # the same entry
    assert store.held_counts("Nobody@Broken.Example") == (2, 0)
    assert [e.target for e in store.held("NoBoDy@broken.example")] == ["nobody@broken.example"] * 2
    assert store.rcpt_info(["carol@fwd.example"]) == [
        RcptInfo(Forward("carol@fwd.example", ("nobody@broken.example",)), 2)
    ]
    assert store.drop("NOBODY@BROKEN.EXAMPLE", "mx1/Q1")
    assert store.rcpt_info(["carol@fwd.example"])[0].held == 1


def test_deferral_count_and_entries_agree_whatever_the_case(store: Store) -> None:
    rng = random.Random(14)
    target = "nobody@broken.example"
    store.put_forward(Forward("Carol@Fwd.Example", (_case_variants(target, rng),)))
    ids = [f"mx1/Q{i}" for i in range(12)]
    for step in range(80):
        t = _case_variants(target, rng)
        entry_id = rng.choice(ids)
        op = rng.choice(["hold", "requeue", "unrequeue", "release", "drop", "rehold"])
        if op == "hold":
            store.hold(entry(t, entry_id))
        elif op == "requeue":
            store.mark_requeued(t, entry_id, float(step))
        elif op == "unrequeue":
            store.unrequeue(t, entry_id)
        elif op == "release":
            store.release(t, entry_id)
        elif op == "drop":
            store.drop(t, entry_id)
        else:
            store.rehold(t, entry_id, "Q9", "mx1", "again", float(step))
        entries = store.held(_case_variants(target, rng))
        counted = sum(e.state in ("H", "R") for e in entries)
        (info,) = store.rcpt_info([_case_variants("carol@fwd.example", rng)])
        assert info.held == counted, (step, op)
        h, r = store.held_counts(_case_variants(target, rng))
        assert (h, r) == (
            sum(e.state == "H" for e in entries),
            sum(e.state == "R" for e in entries),
        )
    stats = store.stats()
    assert set(stats.held_by_target) <= {target}


def test_records_are_keyed_in_normal_form(store: Store) -> None:
    srs = "SRS0=HhHh=TT=Sender.Example=Bob@FWD.example"
    store.record_messages([rec(srs, "r1", rcpt="Alice@Fwd.Example", target="A@Dest.Example")], 60)
    (found,) = store.messages(srs.lower())
    assert (found.srs, found.rcpt, found.target) == (
        srs.lower(),
        "alice@fwd.example",
        "a@dest.example",
    )
    assert found.sender == "bob@sender.example"  # not a key: kept as written
    assert store.set_message_state(srs, "r1", "H")
    assert store.messages(srs.upper())[0].state == "H"


def test_forwards_and_moves_in_any_case(store: Store) -> None:
    store.put_forward(fwd("Dave@Fwd.Example", "D@Dest.Example", contact="Dave.Alt@Other.Example"))
    (f,) = store.list_forwards()
    assert (f.rcpt, f.target, f.contact) == (
        "dave@fwd.example",
        "d@dest.example",
        "Dave.Alt@Other.Example",
    )
    assert store.delete_forward("DAVE@fwd.example", moved_to="Dave@New.Example", now=9.0)
    moved = store.get_forward("dave@FWD.EXAMPLE")
    assert moved is not None and moved.moved_to == "Dave@New.Example"


# -- new fields and operations (contract) ----------------------------------------------------


def test_unrequeue_puts_an_entry_back_as_it_was(store: Store) -> None:
    store.hold(entry(held_at=2000.0))
    store.mark_alerted(entry().target, entry().entry_id, ["Admin@Admin.Example"])
    assert not store.unrequeue(entry().target, entry().entry_id)  # H: nothing to undo
    assert store.mark_requeued(entry().target, entry().entry_id, 3000.0)
    assert store.set_requeue_id(entry().target, entry().entry_id, "4QX1")
    assert store.held_counts(entry().target) == (0, 1)
    assert store.unrequeue(entry().target.upper(), entry().entry_id)
    back = store.get_held(entry().target, entry().entry_id)
    assert back is not None
    assert (back.state, back.held_at, back.alerted, back.alerted_to, back.requeue_id) == (
        "H",
        2000.0,
        True,
        ("admin@admin.example",),
        "",
    )
    assert store.held_counts(entry().target) == (1, 0)
    assert not store.unrequeue(entry().target, entry().entry_id)
    assert not store.unrequeue(entry().target, "mx1/none")


def test_requeue_id_is_set_on_r_entries_only_and_cleared_by_rehold(store: Store) -> None:
    e = entry()
    store.hold(e)
    assert not store.set_requeue_id(e.target, e.entry_id, "4QX1")
    store.mark_requeued(e.target, e.entry_id, 3000.0)
    assert store.set_requeue_id(e.target, e.entry_id, "4QX1", "SRS0=New@Fwd.Example", "m-new")
    got = store.get_held(e.target, e.entry_id)
    assert got is not None
    assert (got.requeue_id, got.srs, got.msg_id) == ("4QX1", "srs0=new@fwd.example", "m-new")
    assert store.set_requeue_id(e.target, e.entry_id, "4QX2")  # srs, msg_id kept
    got = store.get_held(e.target, e.entry_id)
    assert got is not None and (got.requeue_id, got.srs) == ("4QX2", "srs0=new@fwd.example")
    store.mark_alerted(e.target, e.entry_id, ["a@x.example"])
    assert store.rehold(e.target, e.entry_id, "5NEW", "mx1", "550 again", 4000.0)
    got = store.get_held(e.target, e.entry_id)
    assert got is not None
    assert (got.state, got.requeue_id, got.alerted, got.alerted_to) == ("H", "", False, ())
    assert not store.set_requeue_id(e.target, "mx1/none", "X")


def test_mark_alerted_records_who_was_told(store: Store) -> None:
    e = entry()
    store.hold(e)
    assert store.mark_alerted(e.target, e.entry_id, ["Admin@A.Example"], complete=False)
    got = store.get_held(e.target, e.entry_id)
    assert got is not None and (got.alerted, got.alerted_to) == (False, ("admin@a.example",))
    assert store.mark_alerted(
        e.target, e.entry_id, ["admin@a.example", "c@b.example"], complete=True
    )
    got = store.get_held(e.target, e.entry_id)
    assert got is not None
    assert (got.alerted, got.alerted_to) == (True, ("admin@a.example", "c@b.example"))
    # The version-1 call still means "alerted, nothing more to say".
    store.hold(entry(entry_id="mx1/Q7"))
    assert store.mark_alerted(e.target, "mx1/Q7")
    got = store.get_held(e.target, "mx1/Q7")
    assert got is not None and (got.alerted, got.alerted_to) == (True, ())
    assert not store.mark_alerted(e.target, "mx1/none", ["x@y.example"])


def test_entries_by_queue_file(store: Store) -> None:
    store.hold(entry("a@dest.example", "mx1/Q1", queue_id="Q1", host="mx1"))
    store.hold(entry("b@dest.example", "mx1/Q1", queue_id="Q1", host="mx1", state="N"))
    store.hold(entry("c@dest.example", "mx2/Q1", queue_id="Q1", host="mx2"))
    store.hold(entry("a@dest.example", "mx1/Q2", queue_id="Q2", host="mx1"))
    assert sorted(e.target for e in store.held_by_queue("mx1", "Q1")) == [
        "a@dest.example",
        "b@dest.example",
    ]
    assert [e.target for e in store.held_by_queue("mx2", "Q1")] == ["c@dest.example"]
    assert store.held_by_queue("mx3", "Q1") == []


def test_new_fields_survive_export_and_import(make_store: Callable[..., Store]) -> None:
    src, dst = make_store(), make_store()
    e = entry()
    src.hold(e)
    src.mark_requeued(e.target, e.entry_id, 3000.0)
    src.set_requeue_id(e.target, e.entry_id, "4QX1")
    src.mark_alerted(e.target, e.entry_id, ["a@x.example", "b@x.example"], complete=False)
    migrate(src, dst)
    got = dst.get_held(e.target, e.entry_id)
    assert got is not None
    assert (got.requeue_id, got.alerted_to, got.alerted) == (
        "4QX1",
        ("a@x.example", "b@x.example"),
        False,
    )
    assert dst.held_counts(e.target) == (0, 1)


def test_import_keys_mixed_case_items(make_store: Callable[..., Store]) -> None:
    dst = make_store()
    items: list[Forward | HeldEntry] = [
        Forward("Carol@Fwd.Example", ("Nobody@Broken.Example",)),
        entry("NOBODY@broken.example", "mx1/Q1"),
    ]
    dst.import_items(items)
    assert dst.rcpt_info(["carol@fwd.example"])[0].held == 1


# -- migration of version-1 stores -----------------------------------------------------------


def _v1_sqlite(path: Path) -> None:
    """A version-1 file as fwdmilter 0.x wrote it, addresses as typed."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = lambda cur, row: {c[0]: v for c, v in zip(cur.description, row, strict=True)}
    MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    f = "INSERT INTO forwards VALUES (?, ?, '', 'forward', '', ?, ?)"
    conn.execute(f, ("Carol@Fwd.Example", "Nobody@Broken.Example", 1.0, 1.0))
    conn.execute(f, ("carol@fwd.example", "old@broken.example", 0.5, 0.5))  # older: loses
    held = (
        "INSERT INTO held VALUES (?, ?, ?, 'bob@s.example', 'carol@fwd.example', ?, 'mx1',"
        " '550', ?, 'SRS0=X@Fwd.Example', 'm1', '', 0, 0)"
    )
    conn.execute(held, ("nobody@broken.example", "mx1/Q1", "H", "Q1", 10.0))
    conn.execute(held, ("Nobody@Broken.Example", "mx1/Q2", "R", "Q2", 11.0))
    conn.execute(held, ("NOBODY@BROKEN.EXAMPLE", "mx1/Q1", "N", "Q1", 12.0))  # meets Q1: N loses
    conn.execute(
        "INSERT INTO messages VALUES ('SRS0=X@Fwd.Example', 'r1', 'm1', 'U', 'bob@s.example',"
        " 'Carol@Fwd.Example', 'Nobody@Broken.Example', 1.0, 'mx1', 'Q0', '', 9e12)"
    )
    conn.close()


def test_sqlite_v1_store_is_migrated_and_rekeyed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _v1_sqlite(path)
    store = SQLiteStore(path, clock=Clock())
    try:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        (f,) = store.list_forwards()
        assert (f.rcpt, f.target) == ("carol@fwd.example", "nobody@broken.example")
        entries = store.held("nobody@broken.example")
        assert [(e.entry_id, e.state, e.srs) for e in entries] == [
            ("mx1/Q1", "H", "srs0=x@fwd.example"),
            ("mx1/Q2", "R", "srs0=x@fwd.example"),
        ]
        assert store.rcpt_info(["carol@fwd.example"])[0].held == 2
        (r,) = store.messages("srs0=x@fwd.example")
        assert (r.rcpt, r.target) == ("carol@fwd.example", "nobody@broken.example")
        assert [e.target for e in store.held_by_queue("mx1", "Q1")] == ["nobody@broken.example"]
    finally:
        store.close()


def _v1_redis(server: RedisServer, p: str) -> None:
    with server.admin() as r:
        r.set(f"{p}:schema", 1)
        r.hset(
            f"{p}:forward:{{Carol@Fwd.Example}}",
            mapping={
                "rcpt": "Carol@Fwd.Example",
                "target": "Nobody@Broken.Example",
                "contact": "",
                "null_sender": "forward",
                "moved_to": "",
                "created": "1.0",
                "updated": "1.0",
            },
        )
        for tag, entry_id, state in (
            ("nobody@broken.example", "mx1/Q1", "H"),
            ("Nobody@Broken.Example", "mx1/Q2", "R"),
        ):
            r.hset(
                f"{p}:held:{{{tag}}}:{entry_id}",
                mapping={
                    "target": tag,
                    "entry_id": entry_id,
                    "state": state,
                    "sender": "bob@s.example",
                    "rcpt": "carol@fwd.example",
                    "queue_id": entry_id[4:],
                    "host": "mx1",
                    "reason": "550",
                    "held_at": "10.0",
                    "srs": "SRS0=X@Fwd.Example",
                    "alerted": "0",
                },
            )
            r.sadd(f"{p}:held-index:{{{tag}}}", entry_id)
        # Version 1's counters, under each spelling, one of them wrong.
        r.hset(f"{p}:held-count:{{nobody@broken.example}}", mapping={"H": 1, "R": 0})
        r.hset(f"{p}:held-count:{{Nobody@Broken.Example}}", mapping={"H": 0, "R": 5})
        r.hset(
            f"{p}:message:{{SRS0=X@Fwd.Example}}:r1",
            mapping={
                "srs": "SRS0=X@Fwd.Example",
                "record_id": "r1",
                "state": "U",
                "target": "Nobody@Broken.Example",
                "expires": "9e12",
            },
        )
        r.expire(f"{p}:message:{{SRS0=X@Fwd.Example}}:r1", 3600)
        r.sadd(f"{p}:messages:{{SRS0=X@Fwd.Example}}", "r1")
        r.expire(f"{p}:messages:{{SRS0=X@Fwd.Example}}", 3600)


def test_redis_v1_store_is_migrated_rekeyed_and_recounted(redis_server: RedisServer) -> None:
    p = "fwdmilter:v1"
    _v1_redis(redis_server, p)
    store = open_store(StoreSettings(url=redis_server.url, prefix=p), instance="tests")
    try:
        assert store.rcpt_info(["carol@fwd.example"])[0].held == 2
        assert store.held_counts("nobody@broken.example") == (1, 1)
        assert [(e.entry_id, e.srs) for e in store.held("nobody@broken.example")] == [
            ("mx1/Q1", "srs0=x@fwd.example"),
            ("mx1/Q2", "srs0=x@fwd.example"),
        ]
        (r,) = store.messages("srs0=x@fwd.example")
        assert r.target == "nobody@broken.example"
    finally:
        store.close()
    with redis_server.admin() as r:
        keys = sorted(r.scan_iter(match=f"{p}:*"))
        assert r.get(f"{p}:schema") == str(SCHEMA_VERSION)
        assert keys == sorted(
            [
                f"{p}:schema",
                f"{p}:forward:{{carol@fwd.example}}",
                f"{p}:held:{{nobody@broken.example}}:mx1/Q1",
                f"{p}:held:{{nobody@broken.example}}:mx1/Q2",
                f"{p}:held-index:{{nobody@broken.example}}",
                f"{p}:held-count:{{nobody@broken.example}}",
                f"{p}:message:{{srs0=x@fwd.example}}:r1",
                f"{p}:messages:{{srs0=x@fwd.example}}",
            ]
        )
        assert 0 < r.ttl(f"{p}:message:{{srs0=x@fwd.example}}:r1") <= 3600
    # A second open finds version 2 and changes nothing.
    again = open_store(StoreSettings(url=redis_server.url, prefix=p), instance="tests")
    try:
        assert again.held_counts("nobody@broken.example") == (1, 1)
    finally:
        again.close()


def test_redis_migration_waits_for_another_process(redis_server: RedisServer) -> None:
    p = "fwdmilter:v1busy"
    _v1_redis(redis_server, p)
    with redis_server.admin() as r:
        r.set(f"{p}:migrating", "someone", ex=600)
    client = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(StoreUnavailable, match="another process has been migrating"):
        RedisStore(client, prefix=p, migration_wait=0.5)
    with redis_server.admin() as r:
        assert r.get(f"{p}:schema") == "1"  # untouched
        r.delete(f"{p}:migrating")
    client = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisStore(client, prefix=p)
    try:
        assert store.held_counts("nobody@broken.example") == (1, 1)
    finally:
        store.close()
