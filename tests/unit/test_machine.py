"""The held-mail state machine, transition by transition (docs/states.md)."""

from __future__ import annotations

import pytest

from fwdmilter import machine, replies
from fwdmilter.classify import Kind
from fwdmilter.machine import Hold, Rehold, Release, SetRecordState, WriteRecords
from fwdmilter.states import HeldEntry, MessageRecord, RecordState

NOW = 1_800_000_000.0
SRS = "srs0=hhhh=tt=example.org=alice@fwd.example"


def rec(
    target: str = "broken@inner.example",
    state: RecordState = "U",
    msg_id: str = "m1",
    n: int = 0,
    held_id: str = "",
) -> MessageRecord:
    return MessageRecord(
        srs=SRS,
        record_id=f"{msg_id}.{n}",
        msg_id=msg_id,
        state=state,
        sender="alice@example.org",
        rcpt="bob@fwd.example",
        target=target,
        created=NOW - 60,
        instance="mx1",
        queue_id="Q0",
        held_id=held_id,
    )


def decide(
    kind: Kind,
    records: list[MessageRecord],
    ids: tuple[str, ...] = (),
    cap: int = 10,
    failed: tuple[str, ...] = (),
    reasons: tuple[tuple[str, str], ...] = (),
) -> machine.BounceDecision:
    return machine.decide_bounce(
        kind=kind,
        reason="550 5.2.2 mailbox full",
        srs=SRS,
        original_sender="alice@example.org",
        records=records,
        trace_ids=ids,
        instance="mx1",
        queue_id="QB",
        now=NOW,
        max_entries=cap,
        failed=failed,
        reasons=reasons,
    )


def holds(d: machine.BounceDecision) -> list[str]:
    return [e.entry.target for e in d.effects if isinstance(e, Hold)]


def states(d: machine.BounceDecision) -> list[tuple[str, RecordState]]:
    return [(e.record_id, e.state) for e in d.effects if isinstance(e, SetRecordState)]


# -- failures ------------------------------------------------------------------


def test_failure_of_a_verified_message_goes_to_its_sender() -> None:
    d = decide(Kind.FAILURE, [rec(state="B")])
    assert (d.action, d.effects) == ("deliver", ())


@pytest.mark.parametrize("state", ["U", "H", "done"])
def test_failure_of_an_unverified_message_is_held_for_its_target(state: RecordState) -> None:
    d = decide(Kind.FAILURE, [rec(state=state)])
    assert d.action == "hold"
    (hold,) = [e for e in d.effects if isinstance(e, Hold)]
    e = hold.entry
    assert (e.target, e.entry_id, e.state, e.queue_id, e.host) == (
        "broken@inner.example",
        "mx1/QB",
        "H",
        "QB",
        "mx1",
    )
    assert (e.sender, e.rcpt, e.srs, e.msg_id, e.held_at) == (
        "alice@example.org",
        "bob@fwd.example",
        SRS,
        "m1",
        NOW,
    )
    assert e.reason == "550 5.2.2 mailbox full"
    assert states(d) == [("m1.0", "H")]


def test_a_mixed_verdict_without_trace_id_holds() -> None:
    # Same sender, same day, one verified message and one not: the bounce
    # cannot say which it is about, so it is not sent to the sender.
    d = decide(Kind.FAILURE, [rec("a@x.example", "B", "m1"), rec("b@x.example", "U", "m2")])
    assert d.action == "hold"
    assert sorted(holds(d)) == ["a@x.example", "b@x.example"]


def test_the_trace_id_picks_the_message_and_only_its_targets() -> None:
    records = [rec("a@x.example", "U", "m1"), rec("b@x.example", "U", "m2")]
    d = decide(Kind.FAILURE, records, ids=("m2",))
    assert holds(d) == ["b@x.example"]
    assert d.msg_ids == ("m2",)
    verified = [rec("a@x.example", "U", "m1"), rec("b@x.example", "B", "m2")]
    assert decide(Kind.FAILURE, verified, ids=("m2",)).action == "deliver"


def test_an_unknown_trace_id_falls_back_to_every_record_of_the_address() -> None:
    d = decide(Kind.FAILURE, [rec("a@x.example", msg_id="m1")], ids=("elsewhere",))
    assert holds(d) == ["a@x.example"]


def test_one_entry_per_target_newest_record_first() -> None:
    records = [rec("a@x.example", msg_id="m1"), rec("a@x.example", msg_id="m2")]
    d = decide(Kind.FAILURE, records)
    (hold,) = [e for e in d.effects if isinstance(e, Hold)]
    assert hold.entry.msg_id == "m2"


def test_a_bounce_creates_at_most_max_entries() -> None:
    records = [rec(f"t{i}@x.example", msg_id=f"m{i}") for i in range(15)]
    d = decide(Kind.FAILURE, records, cap=10)
    assert len(holds(d)) == 10 and d.capped == 5
    assert "t14@x.example" in holds(d)  # the newest ones
    roomy = decide(Kind.FAILURE, records, cap=20)
    assert (len(holds(roomy)), roomy.capped) == (15, 0)


def test_without_records_the_bounce_is_kept_under_no_target() -> None:
    d = decide(Kind.FAILURE, [])
    assert d.action == "hold"
    assert holds(d) == [machine.UNKNOWN_TARGET]
    assert states(d) == []


def test_a_requeued_message_that_fails_again_is_held_again() -> None:
    d = decide(Kind.FAILURE, [rec(state="R", held_id="mx1/QOLD")])
    assert d.action == "hold"
    assert [e for e in d.effects if isinstance(e, Rehold)] == [
        Rehold("broken@inner.example", "mx1/QOLD", "550 5.2.2 mailbox full")
    ]
    assert holds(d) == []
    assert states(d) == [("m1.0", "H")]


# -- what is not a failure holds nothing ------------------------------------------


@pytest.mark.parametrize("kind", [Kind.DELAY, Kind.AUTO_REPLY, Kind.READ_RECEIPT, Kind.SUCCESS])
def test_notices_and_auto_replies_of_unverified_mail_are_discarded(kind: Kind) -> None:
    # The vacation reply that froze a target: no entry, no record change.
    many = [rec(f"t{i}@x.example", msg_id=f"m{i}") for i in range(50)]
    d = decide(kind, many)
    assert (d.action, d.effects) == ("discard", ())
    assert decide(kind, []).action == "discard"


@pytest.mark.parametrize(
    "kind", [Kind.DELAY, Kind.AUTO_REPLY, Kind.READ_RECEIPT, Kind.SUCCESS, Kind.OTHER]
)
def test_anything_to_a_verified_sender_is_delivered(kind: Kind) -> None:
    d = decide(kind, [rec(state="B")])
    assert (d.action, d.effects) == ("deliver", ())


def test_other_mail_to_an_unverified_sender_is_refused_with_a_reason() -> None:
    d = decide(Kind.OTHER, [rec()])
    assert d.action == "reject" and d.reply is replies.SRS_REPLY_REFUSED
    assert d.reply.permanent and d.effects == ()
    assert decide(Kind.OTHER, []).reply is replies.SRS_REPLY_REFUSED


def test_success_releases_a_requeued_message() -> None:
    d = decide(Kind.SUCCESS, [rec(state="R", held_id="mx1/QOLD")])
    assert d.action == "discard"
    assert d.effects == (
        Release("broken@inner.example", "mx1/QOLD"),
        SetRecordState(SRS, "m1.0", "done"),
    )


def test_a_delay_of_a_requeued_message_changes_nothing() -> None:
    d = decide(Kind.DELAY, [rec(state="R", held_id="mx1/QOLD")])
    assert (d.action, d.effects) == ("discard", ())


# -- effects and kept null-sender mail ---------------------------------------------


def test_effects_are_ordered_entries_last() -> None:
    entry = machine.hold_null_sender(
        [("bob@fwd.example", "bob@inner.example", "")],
        instance="mx1",
        queue_id="Q",
        msg_id="m",
        now=NOW,
    )[0]
    mixed = [entry, WriteRecords(()), Release("t", "e"), Rehold("t", "e", "r")]
    out = machine.ordered([*mixed, SetRecordState(SRS, "m.0", "H")])
    assert [type(e) for e in out] == [Release, SetRecordState, WriteRecords, Rehold, Hold]


def test_kept_null_sender_mail_is_n_and_names_the_contact() -> None:
    (hold,) = machine.hold_null_sender(
        [("bob@fwd.example", "bob@inner.example", "bob@mobile.example")],
        instance="mx1",
        queue_id="QN",
        msg_id="m9",
        now=NOW,
    )
    assert isinstance(hold, Hold)
    e = hold.entry
    assert (e.state, e.target, e.contact, e.entry_id, e.sender) == (
        "N",
        "bob@inner.example",
        "bob@mobile.example",
        "mx1/QN",
        "",
    )


# -- whole decisions ---------------------------------------------------------------


def test_every_decision_carries_its_kind_reason_and_trace_ids() -> None:
    cases = [
        (Kind.FAILURE, [rec(state="B")], "deliver"),
        (Kind.DELAY, [rec(state="B")], "deliver"),
        (Kind.FAILURE, [rec()], "hold"),
        (Kind.OTHER, [rec()], "reject"),
        (Kind.AUTO_REPLY, [rec()], "discard"),
    ]
    for kind, records, action in cases:
        d = decide(kind, records, ids=("m1",))
        assert (d.action, d.kind, d.reason, d.msg_ids) == (
            action,
            kind,
            "550 5.2.2 mailbox full",
            ("m1",),
        ), action
        assert d.capped == 0


def test_a_requeued_record_that_is_delivered_keeps_the_decision_for_its_sender() -> None:
    d = decide(Kind.SUCCESS, [rec(state="B"), rec("b@x.example", "R", "m1", 1, "mx1/QOLD")])
    # One record of the message is R: not verified as a whole, released all the same.
    assert d.action == "discard" and d.kind is Kind.SUCCESS and d.msg_ids == ("m1",)
    assert Release("b@x.example", "mx1/QOLD") in d.effects


def test_a_held_record_that_fails_again_gets_a_new_entry_not_a_rehold() -> None:
    # Only R means "requeued": an H record keeps the link to the entry that
    # held it, and a second failure of it is a new held bounce.
    d = decide(Kind.FAILURE, [rec(state="H", held_id="mx1/QOLD")])
    assert [e for e in d.effects if isinstance(e, Rehold)] == []
    assert holds(d) == ["broken@inner.example"]


def test_a_record_without_entry_link_is_held_afresh_even_in_r() -> None:
    d = decide(Kind.FAILURE, [rec(state="R", held_id="")])
    assert [e for e in d.effects if isinstance(e, Rehold)] == []
    assert holds(d) == ["broken@inner.example"]


def test_the_entry_of_a_bounce_nobody_explains() -> None:
    d = decide(Kind.FAILURE, [])
    (hold,) = [e for e in d.effects if isinstance(e, Hold)]
    assert hold.entry == HeldEntry(
        target=machine.UNKNOWN_TARGET,
        entry_id="mx1/QB",
        state="H",
        sender="alice@example.org",
        rcpt="",
        queue_id="QB",
        host="mx1",
        reason="550 5.2.2 mailbox full",
        held_at=NOW,
        srs=SRS,
    )
    assert (d.kind, d.reason, d.msg_ids, d.capped) == (
        Kind.FAILURE,
        "550 5.2.2 mailbox full",
        (),
        0,
    )


def test_kept_null_sender_entries_are_whole() -> None:
    effects = machine.hold_null_sender(
        [
            ("bob@fwd.example", "bob@inner.example", "bob@mobile.example"),
            ("eve@fwd.example", "eve@inner.example", ""),
        ],
        instance="mx1",
        queue_id="QN",
        msg_id="m9",
        now=NOW,
    )
    assert [e.entry for e in effects if isinstance(e, Hold)] == [
        HeldEntry(
            target=target,
            entry_id="mx1/QN",
            state="N",
            sender="",
            rcpt=rcpt,
            queue_id="QN",
            host="mx1",
            reason="null-sender mail held by the recipient's policy",
            held_at=NOW,
            msg_id="m9",
            contact=contact,
        )
        for rcpt, target, contact in [
            ("bob@fwd.example", "bob@inner.example", "bob@mobile.example"),
            ("eve@fwd.example", "eve@inner.example", ""),
        ]
    ]


# -- several targets: a failure holds only the targets it names ------------------------

GOOD, BAD = "alice@inner.example", "broken@inner.example"


def two_targets(state: RecordState = "U", msg_id: str = "m1") -> list[MessageRecord]:
    return [rec(GOOD, state, msg_id, 0), rec(BAD, state, msg_id, 1)]


def test_a_failure_naming_one_of_two_targets_holds_that_target_only() -> None:
    d = decide(Kind.FAILURE, two_targets(), ("m1",), failed=(BAD, "bob@fwd.example"))
    assert d.action == "hold"
    assert holds(d) == [BAD]
    assert states(d) == [("m1.1", "H")]  # the good target's record stays U


def test_a_failure_naming_both_targets_holds_both() -> None:
    d = decide(Kind.FAILURE, two_targets(), ("m1",), failed=(GOOD, BAD))
    assert sorted(holds(d)) == [GOOD, BAD]


@pytest.mark.parametrize(
    "failed",
    [
        (),  # a legacy bounce: no DSN, nothing tells the targets apart
        ("alice-rewritten@mailhost.example", "bob@fwd.example"),  # a downstream rewrote it
    ],
)
def test_a_failure_naming_none_of_the_targets_holds_every_relevant_one(
    failed: tuple[str, ...],
) -> None:
    d = decide(Kind.FAILURE, two_targets(), ("m1",), failed=failed)
    assert sorted(holds(d)) == [GOOD, BAD]


def test_the_failed_target_is_matched_in_normal_form() -> None:
    records = [rec(GOOD, "U", "m1", 0), rec("Broken@Inner.Example", "U", "m1", 1)]
    d = decide(Kind.FAILURE, records, ("m1",), failed=(BAD,))
    assert [h.lower() for h in holds(d)] == [BAD]


def test_narrowing_comes_after_the_trace_id_pick() -> None:
    # The failed target also got an older message under the same address:
    # the trace id picks the message, the DSN the target.
    records = [rec(BAD, "U", "old", 0), *two_targets(msg_id="m1")]
    d = decide(Kind.FAILURE, records, ("m1",), failed=(BAD,))
    assert states(d) == [("m1.1", "H")]


def test_a_failure_of_the_verified_target_goes_to_the_sender() -> None:
    # No trace id: a B message to the failed target and a U one to the other
    # went out under one address; the DSN says which one failed.
    records = [rec(GOOD, "U", "m0", 0), rec(BAD, "B", "m1", 0)]
    assert decide(Kind.FAILURE, records, failed=(BAD,)).action == "deliver"
    assert decide(Kind.FAILURE, records).action == "hold"


def test_a_requeued_target_that_fails_again_is_reheld_alone() -> None:
    records = [
        rec(GOOD, "R", "r1", 0, held_id="mx1/QG"),
        rec(BAD, "R", "r2", 0, held_id="mx1/QB0"),
    ]
    d = decide(Kind.FAILURE, records, failed=(BAD,))
    reheld = [(e.target, e.entry_id) for e in d.effects if isinstance(e, Rehold)]
    assert reheld == [(BAD, "mx1/QB0")]
    assert holds(d) == []


def test_a_success_releases_only_the_requeued_target_it_is_about() -> None:
    records = [rec(GOOD, "U", "m1", 0), rec(BAD, "R", "r2", 0, held_id="mx1/QB0")]
    d = decide(Kind.SUCCESS, records, ("r2",))
    released = [(e.target, e.entry_id) for e in d.effects if isinstance(e, Release)]
    assert (d.action, released) == ("discard", [(BAD, "mx1/QB0")])


def test_each_held_target_keeps_its_own_reason() -> None:
    reasons = ((GOOD, "550 5.1.1 unknown"), (BAD, "552 5.2.2 full"))
    d = decide(Kind.FAILURE, two_targets(), ("m1",), failed=(GOOD, BAD), reasons=reasons)
    got = {e.entry.target: e.entry.reason for e in d.effects if isinstance(e, Hold)}
    assert got == dict(reasons)
    # A target the DSN gives no reason for (none named: every target held)
    # gets the bounce's own.
    d = decide(Kind.FAILURE, two_targets(), ("m1",), reasons=((BAD, "552 5.2.2 full"),))
    got = {e.entry.target: e.entry.reason for e in d.effects if isinstance(e, Hold)}
    assert got == {GOOD: "550 5.2.2 mailbox full", BAD: "552 5.2.2 full"}


def test_a_requeued_target_held_again_keeps_its_own_reason() -> None:
    records = [rec(BAD, "R", "r2", 0, held_id="mx1/QB0")]
    d = decide(Kind.FAILURE, records, failed=(BAD,), reasons=((BAD, "552 5.2.2 full"),))
    (rehold,) = [e for e in d.effects if isinstance(e, Rehold)]
    assert rehold.reason == "552 5.2.2 full"
