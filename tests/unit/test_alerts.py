"""Alerts (fwdmilter/alerts.py) against the harness's SMTP sink and a real
SQLite store: one outcome per recipient, resends to those that failed only,
one alert per target for entries held close together."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fwdmilter import alerts, config
from fwdmilter.states import HeldEntry
from fwdmilter.store.sqlite import SQLiteStore
from tests.harness.fwdmilter_proc import toml
from tests.harness.sink import Message, Sink
from tests.harness.smtp import unique


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "state.db")
    yield s
    s.close()


def make_cfg(sink: Sink, *admins: str) -> config.Config:
    return config.loads(
        toml(
            {
                "milter": {"hostname": "mx1.fwd.example"},
                "srs": {"domain": "fwd.example"},
                "mta": {"submit": f"127.0.0.1:{sink.port('internet')}", "submit_timeout": 5.0},
                "held": {"alert_to": list(admins)},
            }
        )
    )


def subject(m: Message) -> str:
    # A long subject is folded: compare its words.
    return " ".join(str(m.email["Subject"]).split())


def held_entry(target: str, n: int, contact: str = "") -> HeldEntry:
    return HeldEntry(
        target=target,
        entry_id=f"mx1.fwd.example/Q{n}",
        state="H",
        sender=f"s{n}@softfail.example",
        rcpt="f@fwd.example",
        queue_id=f"Q{n}",
        host="mx1.fwd.example",
        reason=f"550 5.1.1 reason {n}",
        held_at=time.time(),
        contact=contact,
    )


def test_a_refused_contact_is_skipped_and_a_failed_admin_retried_alone(
    sink: Sink, store: SQLiteStore
) -> None:
    tok = unique()
    ok, later, bad = f"ok{tok}@a.example", f"later{tok}@a.example", f"bad{tok}@c.example"
    cfg = make_cfg(sink, ok, later)
    target = f"t{tok}@dest.example"
    first, second = held_entry(target, 1, contact=bad), held_entry(target, 2, contact=bad)
    store.hold(first)
    store.hold(second)
    with sink.refusing(bad, "550 5.1.1 no such user"), sink.refusing(later, "452 4.2.2 full"):
        result = alerts.send_alert(cfg, store, [first, second])
    assert result.told == (ok,)
    assert set(result.refused) == {bad} and set(result.failed) == {later}
    assert not result.complete
    (alert,) = sink.wait_for_all(ok, timeout=5)
    assert alert.mail_from == ""
    assert subject(alert) == f"2 messages for {target} are held: their delivery failed"
    body = alert.email.get_content()
    assert "reason 1" in body and "reason 2" in body
    assert f"fwdctl held requeue --target {target}" in body
    for e in (first, second):
        got = store.get_held(e.target, e.entry_id)
        # Dealt with: told, or refused for good; "later" is still to tell.
        assert got is not None and (got.alerted, got.alerted_to) == (False, (ok, bad))
    # The daily resend: one alert for the target, to the recipients not told.
    outcomes = alerts.resend_alerts(cfg, store)
    assert [ok_ for _, ok_, _ in outcomes] == [True, True]
    resent = sink.wait_for(later, timeout=5)
    assert resent.rcpt_addresses == [later]  # not the admin told, not the bad contact
    assert len(sink.messages(ok)) == 1
    got = store.get_held(target, first.entry_id)
    assert got is not None and got.alerted and got.alerted_to == (ok, bad, later)
    assert alerts.resend_alerts(cfg, store) == []


def test_alerts_of_one_target_held_close_together_are_one(sink: Sink, store: SQLiteStore) -> None:
    tok = unique()
    admin = f"admin{tok}@a.example"
    cfg = make_cfg(sink, admin)
    t1, t2 = f"one{tok}@dest.example", f"two{tok}@dest.example"
    entries = [held_entry(t1, 1), held_entry(t1, 2), held_entry(t2, 3), held_entry(t1, 4)]
    for e in entries:
        store.hold(e)
    sender = alerts.AlertSender(lambda: cfg, lambda: store, coalesce=1.0)
    try:
        for e in entries:
            sender.enqueue(e)
        got = sink.wait_for_all(admin, count=2, timeout=10)
    finally:
        sender.close()
    subjects = sorted(subject(m) for m in got)
    assert subjects == [
        f"3 messages for {t1} are held: their delivery failed",
        f"Mail for {t2} is held: its delivery failed",
    ]
    sink.assert_nothing_for(admin, wait=1.5, match=lambda m: m not in got)
    assert all(e.alerted for e in store.held())


def test_nobody_to_tell_marks_the_entry_alerted(sink: Sink, store: SQLiteStore) -> None:
    cfg = make_cfg(sink)
    e = held_entry(f"t{unique()}@dest.example", 1)
    store.hold(e)
    result = alerts.send_alert(cfg, store, e)
    assert (result.told, result.complete) == ((), True)
    got = store.get_held(e.target, e.entry_id)
    assert got is not None and got.alerted
    assert replace(got, alerted=False) != got


def test_two_held_targets_of_one_address_get_an_alert_each_naming_it(
    sink: Sink, store: SQLiteStore
) -> None:
    tok = unique()
    admin, contact = f"admin{tok}@a.example", f"c{tok}@mobile.example"
    cfg = make_cfg(sink, admin)
    t1, t2 = f"one{tok}@dest.example", f"two{tok}@other.example"
    # One bounce named both targets of f@fwd.example: an entry each, one
    # held message; the contact comes from the entry.
    e1, e2 = held_entry(t1, 1, contact=contact), held_entry(t2, 1, contact=contact)
    e2 = replace(e2, reason="552 5.2.2 over quota")
    for e in (e1, e2):
        store.hold(e)
    results = alerts.send_alerts(cfg, store, [e1, e2])
    assert [(r.target, r.told) for r in results] == [(t1, (admin, contact)), (t2, (admin, contact))]
    got = sink.wait_for_all(contact, count=2, timeout=10)
    by_target = {m.email["X-Fwdmilter-Held"].split()[0]: m for m in got}
    assert set(by_target) == {t1, t2}
    for target, other, reason in ((t1, t2, "reason 1"), (t2, t1, "over quota")):
        m = by_target[target]
        assert subject(m) == f"Mail for {target} is held: its delivery failed"
        body = m.email.get_content()
        assert f"forwarded mail to {target}," in body and reason in body
        assert f"fwdctl held requeue --target {target}\r\n" in body
        assert other not in body  # each alert is about its own target only
        # The whole address waits, and the alert says so.
        assert "unverified senders for f@fwd.example is deferred" in body
        assert "all its targets waits" in body
    assert all(e.alerted for e in store.held())
