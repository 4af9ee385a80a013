"""Schema version 4: a forward has several targets, a policy of its own and
trusted forwarders (run against every backend), and the migrations of
version-3 stores (SQLite and Redis), whose forwards had one target."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from fwdmilter.config import StoreSettings
from fwdmilter.errors import StoreSchemaError
from fwdmilter.store import open_store
from fwdmilter.store.base import SCHEMA_VERSION, Forward, RcptInfo, Store
from fwdmilter.store.sqlite import MIGRATIONS, SQLiteStore
from tests.harness.redis import RedisServer
from tests.store.conftest import Clock, entry, fwd

# -- contract -------------------------------------------------------------------------


def test_several_targets_keep_their_order_in_one_normal_form(store: Store) -> None:
    store.put_forward(
        fwd(targets=("Zed@Dest.Example", "alice@dest.example", "ZED@dest.example", "b@x.example"))
    )
    got = store.get_forward("alice@fwd.example")
    assert got is not None
    assert got.targets == ("zed@dest.example", "alice@dest.example", "b@x.example")
    assert got.target == "zed@dest.example"
    assert store.list_forwards() == [got]


def test_the_policy_and_trusted_forwarders_round_trip(store: Store) -> None:
    f = fwd(
        spf_actions=(("softfail", "reject"), ("fail", "accept")),
        rewrite="none",
        trusted=("192.0.2.0/24", "Alumni.Example", "2001:db8::/32", "alumni.example"),
    )
    store.put_forward(f)
    got = store.get_forward("alice@fwd.example")
    assert got is not None
    # RFC 7208's order of results, each forwarder once, domains lower-case.
    assert got.spf_actions == (("fail", "accept"), ("softfail", "reject"))
    assert got.spf_action("softfail") == "reject"
    assert got.spf_action("neutral") == ""
    assert got.rewrite == "none"
    assert got.trusted == ("192.0.2.0/24", "alumni.example", "2001:db8::/32")
    assert store.rcpt_info(["Alice@Fwd.Example"]) == [RcptInfo(got)]


def test_a_forward_without_a_policy_inherits_everything(store: Store) -> None:
    store.put_forward(fwd())
    got = store.get_forward("alice@fwd.example")
    assert got is not None
    assert (got.spf_actions, got.rewrite, got.trusted) == ((), "", ())


def test_rcpt_info_counts_the_held_mail_of_every_target(store: Store) -> None:
    store.put_forward(fwd(targets=("a@dest.example", "b@dest.example", "c@dest.example")))
    store.put_forward(fwd("other@fwd.example", "b@dest.example"))
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 0
    assert store.hold(entry("b@dest.example", "mx1/Q1"))
    assert store.hold(entry("c@dest.example", "mx1/Q2"))
    assert store.mark_requeued("c@dest.example", "mx1/Q2", now=3000.0)  # R counts too
    assert store.hold(entry("c@dest.example", "mx1/Q3"))
    assert store.hold(entry("a@dest.example", "mx1/Q4", state="N"))  # not counted
    assert store.hold(entry("nobody@dest.example", "mx1/Q5"))  # not a target
    infos = store.rcpt_info(["alice@fwd.example", "other@fwd.example", "none@fwd.example"])
    assert [i.held for i in infos] == [3, 1, 0]
    assert store.drop("c@dest.example", "mx1/Q3")
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 2


def test_rcpt_info_follows_a_change_of_targets(store: Store) -> None:
    """The Redis backend remembers each recipient's targets between calls:
    a change must still be seen at once."""
    assert store.hold(entry("b@dest.example", "mx1/Q1"))
    store.put_forward(fwd(targets=("a@dest.example",)))
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 0
    store.put_forward(fwd(targets=("a@dest.example", "b@dest.example")))
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 1
    store.put_forward(fwd(targets=("b@dest.example", "a@dest.example")))
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 1
    store.put_forward(fwd(targets=("a@dest.example",)))
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 0


def test_a_moved_recipient_keeps_no_targets_and_no_policy(store: Store) -> None:
    store.put_forward(
        fwd(targets=("a@dest.example", "b@dest.example"), rewrite="srs", trusted=("x.example",))
    )
    assert store.delete_forward("alice@fwd.example", moved_to="alice@new.example", now=5.0)
    got = store.get_forward("alice@fwd.example")
    assert got is not None
    assert (got.targets, got.rewrite, got.trusted, got.moved_to) == (
        (),
        "",
        (),
        "alice@new.example",
    )
    assert not got.active


def test_export_and_import_keep_every_field(store: Store, make_store: object) -> None:
    f = fwd(
        targets=("a@dest.example", "b@dest.example"),
        spf_actions=(("softfail", "reject"),),
        rewrite="when-needed",
        trusted=("198.51.100.7/32",),
    )
    store.put_forward(f)
    items = list(store.export())
    assert items == [f]
    store.delete_forward("alice@fwd.example")
    assert store.import_items(items) == 1
    assert store.get_forward("alice@fwd.example") == f


# -- what a backend refuses to guess --------------------------------------------------


def _raw_sqlite(path: Path, **fields: str) -> None:
    with sqlite3.connect(path) as conn:
        sets = ", ".join(f"{k} = ?" for k in fields)
        conn.execute(f"UPDATE forwards SET {sets}", tuple(fields.values()))  # noqa: S608


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spf_actions", "softfail=bounce"),
        ("spf_actions", "pass=reject"),
        ("spf_actions", "softfail"),
        ("rewrite", "sometimes"),
    ],
)
def test_a_policy_this_version_does_not_know_is_a_schema_error(
    tmp_path: Path, field: str, value: str
) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path, clock=Clock())
    try:
        store.put_forward(fwd())
        _raw_sqlite(path, **{field: value})
        with pytest.raises(StoreSchemaError, match=field):
            store.get_forward("alice@fwd.example")
    finally:
        store.close()


# -- migrations from version 3 ----------------------------------------------------------


def _v3_sqlite(path: Path) -> None:
    """A version-3 file: one target per forward, no policy."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = lambda cur, row: {c[0]: v for c, v in zip(cur.description, row, strict=True)}
    for version in range(3):
        MIGRATIONS[version](conn)
    conn.execute("PRAGMA user_version = 3")
    f = "INSERT INTO forwards VALUES (?, ?, '', ?, ?, 1.0, 2.0, ?, ?)"
    conn.execute(f, ("carol@fwd.example", "carol@dest.example", "hold", "", "", 0.0))
    conn.execute(f, ("old@fwd.example", "", "forward", "old@new.example", "", 0.0))
    conn.execute(f, ("new@fwd.example", "", "forward", "", "new@dest.example", 9e12))
    conn.close()


def test_sqlite_v3_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _v3_sqlite(path)
    store = SQLiteStore(path, clock=Clock())
    try:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
            (row,) = conn.execute(
                "SELECT target, targets FROM forwards WHERE rcpt = 'carol@fwd.example'"
            ).fetchall()
            assert row == ("carol@dest.example", "carol@dest.example")
        carol, new, old = store.list_forwards()
        assert carol == Forward(
            "carol@fwd.example",
            ("carol@dest.example",),
            null_sender="hold",
            created=1.0,
            updated=2.0,
        )
        assert (old.targets, old.moved_to) == ((), "old@new.example")
        assert (new.targets, new.pending) == ((), "new@dest.example")
        store.put_forward(replace(carol, targets=(*carol.targets, "c2@dest.example")))
        assert store.hold(entry("c2@dest.example", "mx1/Q1"))
        assert store.rcpt_info(["carol@fwd.example"])[0].held == 1
    finally:
        store.close()


def test_redis_v3_store_is_migrated(redis_server: RedisServer) -> None:
    p = "fwdmilter:v3"
    key = f"{p}:forward:{{carol@fwd.example}}"
    v3 = {
        "rcpt": "carol@fwd.example",
        "target": "carol@dest.example",
        "contact": "",
        "null_sender": "forward",
        "moved_to": "",
        "created": "1.0",
        "updated": "2.0",
        "pending": "",
        "pending_expires": "0.0",
    }
    with redis_server.admin() as r:
        r.set(f"{p}:schema", 3)
        r.hset(key, mapping=v3)
        r.hset(f"{p}:forward:{{old@fwd.example}}", mapping=v3 | {"rcpt": "old@fwd.example"})
    store = open_store(StoreSettings(url=redis_server.url, prefix=p), instance="tests")
    try:
        carol = store.get_forward("carol@fwd.example")
        assert carol == Forward(
            "carol@fwd.example", ("carol@dest.example",), created=1.0, updated=2.0
        )
    finally:
        store.close()
    with redis_server.admin() as r:
        assert r.get(f"{p}:schema") == str(SCHEMA_VERSION) == "4"
        assert r.hget(key, "targets") == "carol@dest.example"
        assert r.hget(f"{p}:forward:{{old@fwd.example}}", "targets") == "carol@dest.example"
        # A forward a still-running version-3 milter writes after the
        # migration (no "targets") still reads as its one target.
        r.delete(key)
        r.hset(key, mapping=v3 | {"target": "late@dest.example"})
    store = open_store(StoreSettings(url=redis_server.url, prefix=p), instance="tests")
    try:
        late = store.get_forward("carol@fwd.example")
        assert late is not None and late.targets == ("late@dest.example",)
    finally:
        store.close()
