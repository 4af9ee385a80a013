"""The store contract (fwdmilter/store/base.py), run against every backend.

Each test gets an empty store of one backend (see conftest.py): SQLite, and
Redis over TCP, a unix socket, an ACL user with a password file, TLS with
client certificates, Sentinel and Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from fwdmilter.store.base import Forward, HeldEntry, MessageRecord, RcptInfo, Stats, Store
from tests.store.conftest import Backend, Clock, entry, fwd, rec

# -- the forwarding table --------------------------------------------------------------


def test_forward_put_get_replace(store: Store) -> None:
    assert store.get_forward("alice@fwd.example") is None
    f = fwd(contact="alice-alt@other.example", null_sender="hold")
    store.put_forward(f)
    assert store.get_forward("alice@fwd.example") == f
    g = fwd(target="alice@elsewhere.example", updated=2000.0)
    store.put_forward(g)
    assert store.get_forward("alice@fwd.example") == g


def test_list_forwards_sorted(store: Store) -> None:
    for rcpt in ("carol@fwd.example", "alice@fwd.example", "bob@fwd.example"):
        store.put_forward(fwd(rcpt))
    assert [f.rcpt for f in store.list_forwards()] == [
        "alice@fwd.example",
        "bob@fwd.example",
        "carol@fwd.example",
    ]


def test_delete_forward(store: Store) -> None:
    store.put_forward(fwd())
    assert store.delete_forward("alice@fwd.example")
    assert store.get_forward("alice@fwd.example") is None
    assert not store.delete_forward("alice@fwd.example")
    assert store.list_forwards() == []


def test_delete_forward_keeping_a_moved_entry(store: Store) -> None:
    store.put_forward(fwd(contact="alt@other.example", null_sender="hold"))
    assert store.delete_forward("alice@fwd.example", moved_to="alice@new.example", now=5000.0)
    moved = store.get_forward("alice@fwd.example")
    assert moved == Forward(
        rcpt="alice@fwd.example",
        targets=(),
        contact="alt@other.example",
        null_sender="forward",
        moved_to="alice@new.example",
        created=1000.0,
        updated=5000.0,
    )
    assert not moved.active
    assert not store.delete_forward("nobody@fwd.example", moved_to="x@y.example")


def test_addresses_with_unusual_characters(store: Store) -> None:
    # SMTPUTF8 addresses, and braces that would end a Redis hash tag early.
    for rcpt, target in (
        ("jörg@fwd.example", "jörg@ziel.example"),
        ("a}b{c@fwd.example", "x}y@dest.example"),
        ("we*ird?[x]@fwd.example", "t@dest.example"),
    ):
        store.put_forward(fwd(rcpt, target))
        assert store.hold(entry(target, "mx1/Q1"))
        assert store.rcpt_info([rcpt]) == [RcptInfo(fwd(rcpt, target), 1)]
        assert [e.target for e in store.held(target)] == [target]
        assert store.mark_requeued(target, "mx1/Q1", 1.0)
        assert store.release(target, "mx1/Q1")
        assert store.held_counts(target) == (0, 0)
    assert len(store.list_forwards()) == 3


# -- rcpt_info ---------------------------------------------------------------------------


def test_rcpt_info_unknown_active_moved(store: Store) -> None:
    store.put_forward(fwd())
    store.put_forward(fwd("bob@fwd.example", "bob@dest.example"))
    store.delete_forward("bob@fwd.example", moved_to="bob@new.example", now=1.0)
    store.hold(entry("alice@dest.example", "mx1/A"))
    store.hold(entry("alice@dest.example", "mx1/B"))
    store.mark_requeued("alice@dest.example", "mx1/B", 3000.0)
    infos = store.rcpt_info(["alice@fwd.example", "nobody@fwd.example", "bob@fwd.example"])
    assert infos[0] == RcptInfo(fwd(), 2)  # H and R both count
    assert infos[1] == RcptInfo(None, 0)
    assert infos[2].forward is not None and infos[2].forward.moved_to == "bob@new.example"
    assert infos[2].held == 0
    assert store.rcpt_info([]) == []


def test_rcpt_info_follows_counters_and_target_changes(store: Store) -> None:
    store.put_forward(fwd())
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 0
    store.hold(entry("alice@dest.example", "mx1/A"))
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 1
    # The target changes (by fwdctl, perhaps on another host): the new
    # target's counters count, not those of the target seen before.
    store.put_forward(fwd(target="alice@new.example"))
    assert store.rcpt_info(["alice@fwd.example"]) == [RcptInfo(fwd(target="alice@new.example"))]
    store.hold(entry("alice@new.example", "mx1/B"))
    store.hold(entry("alice@new.example", "mx1/C"))
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 2
    store.delete_forward("alice@fwd.example")
    assert store.rcpt_info(["alice@fwd.example"]) == [RcptInfo(None, 0)]


def test_rcpt_info_many_and_repeated(store: Store) -> None:
    for i in range(30):
        store.put_forward(fwd(f"u{i}@fwd.example", f"t{i % 3}@dest.example"))
    store.hold(entry("t1@dest.example", "mx1/A"))
    rcpts = [f"u{i}@fwd.example" for i in range(30)] + ["u1@fwd.example", "x@fwd.example"]
    for _ in range(2):  # first sight, then the steady state
        infos = store.rcpt_info(rcpts)
        assert [i.held for i in infos] == [1 if i % 3 == 1 else 0 for i in range(30)] + [1, 0]
        assert infos[-1].forward is None


# -- message records ----------------------------------------------------------------------


def test_record_and_read_messages(store: Store, clock: Clock) -> None:
    srs = "srs0=hhhh=tt=sender.example=bob@fwd.example"
    r2 = rec(record_id="r2", created=1001.0, target="carol@dest.example")
    r1 = rec(record_id="r1", created=1000.0, state="B")
    store.record_messages([r2, r1], ttl=3600)
    got = store.messages(srs)
    assert [r.record_id for r in got] == ["r1", "r2"]  # oldest first
    assert got[0].expires == pytest.approx(clock.now + 3600, abs=0.01)
    expected = MessageRecord(
        srs=srs,
        record_id="r1",
        msg_id="m-r1",
        state="B",
        sender="bob@sender.example",
        rcpt="alice@fwd.example",
        target="alice@dest.example",
        created=1000.0,
        instance="mx1",
        queue_id="4XyZ1",
        expires=got[0].expires,
    )
    assert got[0] == expected
    assert store.messages("srs0=none@fwd.example") == []


def test_record_messages_of_several_addresses_and_replacing(store: Store) -> None:
    store.record_messages([rec("srs0=a@fwd.example", "1"), rec("srs0=b@fwd.example", "1")], 60)
    store.record_messages([rec("srs0=a@fwd.example", "1", state="R", held_id="mx1/Q")], 60)
    assert [(r.state, r.held_id) for r in store.messages("srs0=a@fwd.example")] == [("R", "mx1/Q")]
    assert [r.state for r in store.messages("srs0=b@fwd.example")] == ["U"]
    store.record_messages([], 60)
    with pytest.raises(ValueError, match="ttl"):
        store.record_messages([rec()], 0)


def test_set_message_state_keeps_lifetime(store: Store, clock: Clock) -> None:
    store.record_messages([rec()], ttl=600)
    before = store.messages(rec().srs)[0]
    clock.advance(10)
    assert store.set_message_state(rec().srs, "r1", "done")
    after = store.messages(rec().srs)[0]
    assert after.state == "done"
    assert after.expires == before.expires
    assert not store.set_message_state(rec().srs, "nope", "R")
    assert store.messages(rec().srs) == [after]  # nothing was created
    with pytest.raises(ValueError, match="state"):
        store.set_message_state(rec().srs, "r1", "X")  # type: ignore[arg-type]


def test_expired_records_are_gone(store: Store, backend: Backend, clock: Clock) -> None:
    if backend.is_redis:
        store.record_messages([rec(record_id="old")], ttl=0.3)  # a real Redis TTL
        store.record_messages([rec(record_id="new")], ttl=600)
        time.sleep(0.45)
    else:
        store.record_messages([rec(record_id="old")], ttl=60)
        store.record_messages([rec(record_id="new")], ttl=600)
        clock.advance(61)
    assert [r.record_id for r in store.messages(rec().srs)] == ["new"]
    assert not store.set_message_state(rec().srs, "old", "R")
    assert store.stats().messages == {"U": 1}
    assert [i for i in store.export() if isinstance(i, MessageRecord)] == store.messages(rec().srs)


# -- held mail -------------------------------------------------------------------------------


def test_hold_and_read(store: Store) -> None:
    e = entry()
    assert store.hold(e)
    assert store.get_held(e.target, e.entry_id) == e
    assert store.held_counts(e.target) == (1, 0)
    assert not store.hold(entry(reason="other"))  # same id: nothing changes
    assert store.get_held(e.target, e.entry_id) == e
    assert store.held_counts(e.target) == (1, 0)
    assert store.get_held(e.target, "mx1/none") is None
    assert store.held_counts("nobody@dest.example") == (0, 0)


def test_hold_refuses_an_entry_not_in_state_h_or_n(store: Store) -> None:
    with pytest.raises(ValueError, match="state H or N"):
        store.hold(entry(state="R"))
    assert store.held() == []


def test_policy_held_entries_are_listed_but_not_counted(store: Store) -> None:
    t = "alice@dest.example"
    store.put_forward(fwd("alice@fwd.example", t))
    n = entry(t, "mx1/N1", state="N", sender="")
    assert store.hold(n)
    assert store.get_held(t, "mx1/N1") == n
    assert store.held(t) == [n]
    assert store.held_counts(t) == (0, 0)
    assert store.rcpt_info(["alice@fwd.example"])[0].held == 0  # U mail still flows
    assert not store.mark_requeued(t, "mx1/N1", 3000.0)  # only H entries are requeued
    store.hold(entry(t, "mx1/H1"))
    assert store.held_counts(t) == (1, 0)
    assert store.stats().held == {"H": 1, "R": 0, "N": 1}
    assert store.drop(t, "mx1/N1")
    assert store.held_counts(t) == (1, 0)
    assert [e.entry_id for e in store.held(t)] == ["mx1/H1"]


def test_transitions_and_counters(store: Store) -> None:
    t = "alice@dest.example"
    store.hold(entry(t, "mx1/A"))
    store.hold(entry(t, "mx1/B"))
    assert store.held_counts(t) == (2, 0)

    assert store.mark_requeued(t, "mx1/A", 3000.0)
    assert not store.mark_requeued(t, "mx1/A", 3001.0)  # already R
    assert not store.mark_requeued(t, "mx1/none", 3001.0)
    a = store.get_held(t, "mx1/A")
    assert a is not None and (a.state, a.requeued_at) == ("R", 3000.0)
    assert store.held_counts(t) == (1, 1)

    assert not store.release(t, "mx1/B")  # H cannot be released
    assert not store.rehold(t, "mx1/B", "Q9", "mx2", "again", 4000.0)  # not R
    store.mark_alerted(t, "mx1/A")
    assert store.rehold(t, "mx1/A", "5NeW", "mx2", "452 mailbox full", 4000.0)
    a = store.get_held(t, "mx1/A")
    assert a is not None
    assert (a.state, a.queue_id, a.host, a.reason, a.held_at, a.requeued_at, a.alerted) == (
        "H",
        "5NeW",
        "mx2",
        "452 mailbox full",
        4000.0,
        3000.0,
        False,
    )
    assert store.held_counts(t) == (2, 0)

    assert store.mark_requeued(t, "mx1/A", 5000.0)
    assert store.release(t, "mx1/A")
    assert not store.release(t, "mx1/A")
    assert store.get_held(t, "mx1/A") is None
    assert store.held_counts(t) == (1, 0)

    assert store.drop(t, "mx1/B")
    assert not store.drop(t, "mx1/B")
    assert store.held_counts(t) == (0, 0)
    assert store.held() == []
    assert store.stats().held_by_target == {}


def test_drop_in_state_r(store: Store) -> None:
    store.hold(entry())
    store.mark_requeued(entry().target, entry().entry_id, 1.0)
    assert store.drop(entry().target, entry().entry_id)
    assert store.held_counts(entry().target) == (0, 0)


def test_mark_alerted(store: Store) -> None:
    store.hold(entry())
    assert store.mark_alerted(entry().target, entry().entry_id)
    got = store.get_held(entry().target, entry().entry_id)
    assert got is not None and got.alerted
    assert not store.mark_alerted(entry().target, "mx1/none")
    assert store.get_held(entry().target, "mx1/none") is None  # nothing was created


def test_held_listing_filters_and_order(store: Store) -> None:
    store.hold(entry("a@one.example", "mx1/3", held_at=3.0))
    store.hold(entry("b@two.example", "mx1/1", held_at=1.0))
    store.hold(entry("a@one.example", "mx1/2", held_at=2.0))
    store.hold(entry("c@ONE.example", "mx1/4", held_at=2.0))
    assert [e.entry_id for e in store.held()] == ["mx1/1", "mx1/2", "mx1/4", "mx1/3"]
    assert [e.entry_id for e in store.held("a@one.example")] == ["mx1/2", "mx1/3"]
    assert [e.entry_id for e in store.held(domain="One.Example")] == ["mx1/2", "mx1/4", "mx1/3"]
    assert [e.entry_id for e in store.held("b@two.example", domain="one.example")] == []
    assert store.held("nobody@one.example") == []


# -- whole store -----------------------------------------------------------------------------


def test_stats(store: Store) -> None:
    assert store.stats() == Stats(held={"H": 0, "R": 0, "N": 0})
    store.put_forward(fwd())
    store.put_forward(fwd("bob@fwd.example", "bob@dest.example"))
    store.put_forward(fwd("carol@fwd.example", "carol@dest.example"))
    store.delete_forward("carol@fwd.example", moved_to="carol@new.example", now=1.0)
    store.record_messages([rec(record_id="1"), rec(record_id="2", state="B")], 60)
    store.record_messages([rec("srs0=z@fwd.example", "1", state="B")], 60)
    store.hold(entry("alice@dest.example", "mx1/A"))
    store.hold(entry("alice@dest.example", "mx1/B"))
    store.hold(entry("bob@dest.example", "mx1/C"))
    store.mark_requeued("alice@dest.example", "mx1/B", 1.0)
    assert store.stats() == Stats(
        forwards=2,
        moved=1,
        messages={"U": 1, "B": 2},
        held={"H": 2, "R": 1, "N": 0},
        held_by_target={"alice@dest.example": (1, 1), "bob@dest.example": (1, 0)},
    )


def test_ping_and_close(make_store: Callable[..., Store]) -> None:
    store = make_store()
    store.ping()
    store.close()
    store.close()  # twice is harmless


def test_stores_do_not_see_each_other(make_store: Callable[..., Store]) -> None:
    one, two = make_store(), make_store()
    one.put_forward(fwd())
    one.hold(entry())
    one.record_messages([rec()], 60)
    assert two.list_forwards() == []
    assert two.held() == []
    assert two.messages(rec().srs) == []
    assert list(two.export()) == []


# -- export and import ----------------------------------------------------------------------


def _fill(store: Store) -> None:
    store.put_forward(fwd())
    store.put_forward(fwd("bob@fwd.example", "bob@dest.example", contact="b@alt.example"))
    store.delete_forward("bob@fwd.example", moved_to="bob@new.example", now=7.0)
    store.record_messages([rec(record_id="1"), rec(record_id="2", state="B")], 600)
    store.record_messages([rec("srs0=other@fwd.example", "x", state="R", held_id="mx1/A")], 900)
    store.hold(entry("alice@dest.example", "mx1/A"))
    store.hold(entry("alice@dest.example", "mx1/B", held_at=2500.0))
    store.mark_requeued("alice@dest.example", "mx1/A", 3000.0)
    store.mark_alerted("alice@dest.example", "mx1/B")
    store.hold(entry("carol@dest.example", "mx2/C"))


def _snapshot(store: Store) -> tuple[object, ...]:
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


def test_export_import_round_trip(make_store: Callable[..., Store]) -> None:
    src, dst = make_store(), make_store()
    _fill(src)
    forwards, records, held = _snapshot(src)
    assert len(forwards) == 2 and len(records) == 3 and len(held) == 3  # type: ignore[arg-type]
    assert dst.import_items(src.export()) == 8
    assert _snapshot(dst) == (forwards, records, held)
    assert dst.stats() == src.stats()
    assert dst.held_counts("alice@dest.example") == (1, 1)
    # Importing again replaces, and counters still match the entries.
    assert dst.import_items(src.export()) == 8
    assert dst.stats() == src.stats()


def test_import_replaces_an_entry_and_moves_its_count(store: Store) -> None:
    store.hold(entry())
    store.import_items([entry(state="R", requeued_at=9.0)])
    assert store.held_counts(entry().target) == (0, 1)
    assert store.release(entry().target, entry().entry_id)
    assert store.held_counts(entry().target) == (0, 0)


def test_import_keeps_expiry_and_skips_expired(store: Store, clock: Clock) -> None:
    keep = rec(record_id="keep", expires=clock.now + 500.0)
    gone = rec(record_id="gone", expires=clock.now - 1.0)
    assert store.import_items([keep, gone]) == 1
    assert store.messages(keep.srs) == [keep]
    with pytest.raises(ValueError, match="expiry"):
        store.import_items([rec(record_id="never")])
