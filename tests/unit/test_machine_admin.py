"""The admin's transitions (fwdmilter/machine.py): pure, driven by hand-built values."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fwdmilter import machine
from fwdmilter.machine import Discard, Keep, QueueView, ReleaseEntry, Requeue, Skip
from fwdmilter.states import HeldEntry

DAY = 86400.0
NOW = 1_800_000_000.0


def entry(target: str = "t@dest.example", entry_id: str = "mx1/Q1", **kw: object) -> HeldEntry:
    base = HeldEntry(
        target=target,
        entry_id=entry_id,
        state="H",
        sender="s@softfail.example",
        rcpt="f@fwd.example",
        queue_id=entry_id.partition("/")[2],
        host="mx1",
        reason="550 5.1.1 no such user",
        held_at=NOW - DAY,
        srs="srs0=aaaa=bb=softfail.example=s@fwd.example",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def requeued(**kw: object) -> HeldEntry:
    defaults: dict[str, object] = {
        "state": "R",
        "requeue_id": "4NEW",
        "requeued_at": NOW - 60,
        "srs": "srs0=cccc=dd=softfail.example=s@fwd.example",
    }
    return entry(**(defaults | kw))


# -- requeue -----------------------------------------------------------------------------


def test_requeue_of_a_bounce_alone_in_its_file() -> None:
    e = entry()
    step = machine.decide_requeue(e, "mx1", [e], max_age_days=21)
    assert step == Requeue(e, null_sender=False, delete_file=True, record_ttl=23 * DAY)


def test_records_of_a_requeue_outlive_the_srs_address() -> None:
    assert machine.record_ttl(21) == 23 * DAY
    assert machine.record_ttl(1) == 3 * DAY


def test_requeue_keeps_a_file_another_target_needs() -> None:
    e = entry("a@dest.example")
    other = entry("b@dest.example")
    step = machine.decide_requeue(e, "mx1", [e, other], 21)
    assert isinstance(step, Requeue) and not step.delete_file
    # Once the other entry is requeued (R), nobody needs the file any more.
    step = machine.decide_requeue(e, "mx1", [e, replace(other, state="R")], 21)
    assert isinstance(step, Requeue) and step.delete_file
    # N entries need their file too; another host's file of that id is another file.
    step = machine.decide_requeue(e, "mx1", [e, replace(other, state="N")], 21)
    assert isinstance(step, Requeue) and not step.delete_file
    step = machine.decide_requeue(e, "mx1", [e, replace(other, host="mx2")], 21)
    assert isinstance(step, Requeue) and step.delete_file


def test_requeue_of_an_n_entry_forwards_it_as_it_is() -> None:
    e = entry(state="N", sender="")
    step = machine.decide_requeue(e, "mx1", [e], 21)
    assert isinstance(step, Requeue) and step.null_sender and step.delete_file


def test_requeue_skips_r_entries_and_other_instances() -> None:
    r = requeued()
    step = machine.decide_requeue(r, "mx1", [r], 21)
    assert isinstance(step, Skip) and "already requeued" in step.why
    e = entry(host="old-mx")
    step = machine.decide_requeue(e, "mx1", [e], 21)
    assert isinstance(step, Skip)
    assert "held on old-mx" in step.why and "--instance old-mx" in step.why
    # Pointed at that instance, the admin may requeue it.
    assert isinstance(machine.decide_requeue(e, "old-mx", [e], 21), Requeue)


# -- drop ------------------------------------------------------------------------------------


def test_drop_deletes_the_file_only_when_nobody_needs_it() -> None:
    a, b = entry("a@dest.example"), entry("b@dest.example")
    assert machine.decide_drop(a, "mx1", [a]) == Discard(a, delete_file=True)
    assert machine.decide_drop(a, "mx1", [a, b]) == Discard(a, delete_file=False)
    # An R entry's file was left for others or is gone: never its to delete.
    r = requeued()
    assert machine.decide_drop(r, "mx1", [r]) == Discard(r, delete_file=False)
    assert isinstance(machine.decide_drop(entry(host="mx2"), "mx1", []), Skip)


# -- release ----------------------------------------------------------------------------------


def test_release_once_the_requeued_message_left_every_queue() -> None:
    r = requeued()
    assert machine.decide_release(r, "mx1", QueueView(), "R") == ReleaseEntry(r)
    assert machine.decide_release(r, "mx1", QueueView(), None) == ReleaseEntry(r)


def test_no_release_while_the_requeued_message_is_in_any_queue() -> None:
    r = requeued()
    view = QueueView(queued=frozenset({"4NEW"}))
    step = machine.decide_release(r, "mx1", view, "R")
    assert isinstance(step, Keep) and "4NEW is still in the MTA's queue" in step.why


def test_no_release_while_a_bounce_to_its_srs_address_waits() -> None:
    r = requeued()
    view = QueueView.of(
        [("deferred", "5BNC", "<>", ["SRS0=cccc=dd=softfail.example=s@FWD.example"])]
    )
    step = machine.decide_release(r, "mx1", view, "R")
    assert isinstance(step, Keep) and "a bounce to" in step.why
    # A message from a real sender to that address is no bounce.
    view = QueueView.of([("active", "5X", "x@y.example", [r.srs])])
    assert machine.decide_release(r, "mx1", view, "R") == ReleaseEntry(r)


def test_a_held_bounce_another_target_keeps_does_not_block_the_release() -> None:
    # One bounce named two targets; the first is requeued (same sender, same
    # day: the same SRS address) while the second's entry keeps the bounce.
    r = requeued()
    view = QueueView.of([("hold", "4HLD", "MAILER-DAEMON", [r.srs])])
    assert machine.decide_release(r, "mx1", view, "R") == ReleaseEntry(r)


def test_no_release_once_a_failure_made_the_record_h() -> None:
    step = machine.decide_release(requeued(), "mx1", QueueView(), "H")
    assert isinstance(step, Keep) and "a bounce came back" in step.why


def test_no_release_without_a_requeue_id_or_for_other_states() -> None:
    step = machine.decide_release(requeued(requeue_id=""), "mx1", QueueView(), "R")
    assert isinstance(step, Keep) and "did not say" in step.why
    assert isinstance(machine.decide_release(entry(), "mx1", QueueView(), "R"), Skip)
    assert isinstance(machine.decide_release(requeued(host="mx2"), "mx1", QueueView(), "R"), Skip)


def test_queue_view_from_listings() -> None:
    view = QueueView.of(
        [
            ("hold", "H1", "", ["SRS0=X@Fwd.Example"]),
            ("deferred", "D1", "MAILER-DAEMON", ["y@z.example"]),
            ("active", "A1", "a@b.example", ["c@d.example"]),
        ]
    )
    assert view.held == {"H1"}
    assert view.queued == {"H1", "D1", "A1"}
    # Postfix's postqueue -j names the null sender MAILER-DAEMON; Sendmail
    # "<>". A held bounce has passed the milter: it waits for nothing.
    assert view.bounces_to == {"y@z.example"}
    view = QueueView.of([("queue", "S1", "<>", ["<SRS0=Y@fwd.example>"])])
    assert view.bounces_to == {"srs0=y@fwd.example"}


# -- expire ----------------------------------------------------------------------------------


def test_expire_waits_for_the_retention_period() -> None:
    e = entry(held_at=NOW - 29 * DAY)
    assert machine.decide_expire(e, "mx1", NOW, 30, QueueView(), [e]) is None
    old = entry(held_at=NOW - 31 * DAY)
    assert machine.decide_expire(old, "mx1", NOW, 30, QueueView(), [old]) == Discard(
        old, delete_file=True, notice="discarded"
    )


def test_expire_tells_nobody_of_n_entries_and_leaves_other_hosts() -> None:
    n = entry(state="N", held_at=NOW - 31 * DAY)
    assert machine.decide_expire(n, "mx1", NOW, 30, QueueView(), [n]) == Discard(
        n, delete_file=True, notice="none"
    )
    other = entry(host="mx2", held_at=NOW - 31 * DAY)
    assert machine.decide_expire(other, "mx1", NOW, 30, QueueView(), [other]) is None


def test_expire_never_calls_requeued_mail_discarded() -> None:
    # Counted from the requeue, not from the hold.
    fresh = requeued(held_at=NOW - 40 * DAY, requeued_at=NOW - DAY)
    assert machine.decide_expire(fresh, "mx1", NOW, 30, QueueView(), []) is None
    old = requeued(held_at=NOW - 70 * DAY, requeued_at=NOW - 31 * DAY)
    # Delivered (gone from the queue): released, nobody told "discarded".
    assert machine.decide_expire(old, "mx1", NOW, 30, QueueView(), []) == ReleaseEntry(old)
    # Still in the queue: under way.
    view = QueueView(queued=frozenset({"4NEW"}))
    step = machine.decide_expire(old, "mx1", NOW, 30, view, [])
    assert step == Discard(old, delete_file=False, notice="under-way")
    # Queue id unknown: it was sent again; say so.
    unknown = replace(old, requeue_id="")
    step = machine.decide_expire(unknown, "mx1", NOW, 30, QueueView(), [])
    assert step == Discard(unknown, delete_file=False, notice="requeued")


def test_expire_keeps_a_shared_file() -> None:
    a = entry("a@dest.example", held_at=NOW - 31 * DAY)
    b = entry("b@dest.example", held_at=NOW - DAY)
    step = machine.decide_expire(a, "mx1", NOW, 30, QueueView(), [a, b])
    assert step == Discard(a, delete_file=False, notice="discarded")


# -- check -----------------------------------------------------------------------------------


def test_check_finds_missing_files_and_orphans() -> None:
    gone = entry("a@dest.example", "mx1/GONE")
    here = entry("b@dest.example", "mx1/HERE")
    young = entry("c@dest.example", "mx1/YOUNG", held_at=NOW - 5)
    r = requeued(entry_id="mx1/OLD")  # its file went with the requeue: not missing
    other = entry("d@dest.example", "mx2/ELSE", host="mx2")
    view = QueueView(held=frozenset({"HERE", "ORPHAN"}))
    report = machine.decide_check([gone, here, young, r, other], "mx1", view, NOW)
    assert report.missing == (gone,)
    assert report.orphans == ("ORPHAN",)
    assert report.fixes == (Discard(gone, delete_file=False),)


def test_check_of_an_agreeing_queue_reports_nothing() -> None:
    e = entry()
    report = machine.decide_check([e], "mx1", QueueView(held=frozenset({"Q1"})), NOW)
    assert (report.missing, report.orphans, report.fixes) == ((), (), ())


@pytest.mark.parametrize("state", ["H", "N"])
def test_needs_file(state: str) -> None:
    assert machine.needs_file(entry(state=state))
    assert not machine.needs_file(requeued())
    assert not machine.needs_file(entry(state=state, queue_id=""))
