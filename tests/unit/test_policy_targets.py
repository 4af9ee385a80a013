"""Several targets per forwarding address, in the pure decisions (docs/states.md).

A forwarded recipient is replaced by every target of its forward, each
(recipient, target) pair gets its message record, a failure holds only the
targets it names, and while any target is held, U mail for the whole
address is deferred.
"""

from __future__ import annotations

from dataclasses import replace

from fwdmilter import classify, policy, replies
from fwdmilter.policy import RcptDecision
from fwdmilter.states import Forward, MessageRecord, RcptInfo
from tests.unit.test_policy import BOUNCES, NOW, S, mail, spf, tx

BOB2 = Forward(
    "bob@fwd.example",
    ("bob@inner.example", "Bob@Phone.Example"),
    contact="bob@mobile.example",
)
CAROL = Forward("carol@fwd.example", ("bob@inner.example", "carol@inner.example"))


def fwd(f: Forward, params: tuple[str, ...] = ()) -> RcptDecision:
    return RcptDecision(f"<{f.rcpt}>", "forward", forward=f, params=params)


# -- end of message: every target ----------------------------------------------------


def test_a_recipient_is_replaced_by_every_target_with_its_parameters() -> None:
    d = policy.decide_eom(S, tx(mail(), fwd(BOB2, ("NOTIFY=FAILURE",))))
    assert d.delrcpt == ("<bob@fwd.example>",)
    params = ("NOTIFY=FAILURE", "ORCPT=rfc822;bob@fwd.example")
    # The target as the admin typed it goes to the MTA; records keep the
    # normal form.
    assert d.addrcpt == (("<bob@inner.example>", params), ("<Bob@Phone.Example>", params))
    assert [(r.record_id, r.rcpt, r.target) for r in d.records] == [
        ("m1.0", "bob@fwd.example", "bob@inner.example"),
        ("m1.1", "bob@fwd.example", "bob@phone.example"),
    ]
    assert {(r.msg_id, r.state, r.srs) for r in d.records} == {
        ("m1", "B", (mail().srs_sender or "").lower())
    }


def test_a_target_two_recipients_share_is_added_once_but_recorded_for_each() -> None:
    d = policy.decide_eom(
        S,
        tx(mail(result="softfail"), fwd(BOB2, ("NOTIFY=NEVER",)), fwd(CAROL, ("NOTIFY=FAILURE",))),
    )
    assert d.delrcpt == ("<bob@fwd.example>", "<carol@fwd.example>")
    assert [a for a, _ in d.addrcpt] == [
        "<bob@inner.example>",
        "<Bob@Phone.Example>",
        "<carol@inner.example>",
    ]
    # The shared target keeps the first recipient's parameters.
    shared = dict(d.addrcpt)["<bob@inner.example>"]
    assert shared == ("NOTIFY=NEVER", "ORCPT=rfc822;bob@fwd.example")
    assert dict(d.addrcpt)["<carol@inner.example>"] == (
        "NOTIFY=FAILURE",
        "ORCPT=rfc822;carol@fwd.example",
    )
    assert [(r.record_id, r.rcpt, r.target, r.state) for r in d.records] == [
        ("m1.0", "bob@fwd.example", "bob@inner.example", "U"),
        ("m1.1", "bob@fwd.example", "bob@phone.example", "U"),
        ("m1.2", "carol@fwd.example", "bob@inner.example", "U"),
        ("m1.3", "carol@fwd.example", "carol@inner.example", "U"),
    ]


def test_a_target_typed_twice_in_one_forward_is_added_and_recorded_once() -> None:
    twice = Forward("bob@fwd.example", ("bob@inner.example", "BOB@inner.example"))
    d = policy.decide_eom(S, tx(mail(), fwd(twice)))
    assert [a for a, _ in d.addrcpt] == ["<bob@inner.example>"]
    assert [r.target for r in d.records] == ["bob@inner.example"]


def test_a_one_target_forward_is_as_before() -> None:
    one = Forward("bob@fwd.example", ("bob@inner.example",))
    d = policy.decide_eom(S, tx(mail(), fwd(one)))
    assert d.addrcpt == (("<bob@inner.example>", ("ORCPT=rfc822;bob@fwd.example",)),)
    assert [r.record_id for r in d.records] == ["m1.0"]


def test_null_sender_mail_kept_by_policy_holds_one_n_entry_per_target() -> None:
    bounce = policy.decide_mail(
        S, "", "mx.example.org", spf("pass", "mx.example.org", "helo"), now=NOW
    )
    kept = [
        RcptDecision(f"<{f.rcpt}>", "hold", forward=replace(f, null_sender="hold"))
        for f in (BOB2, CAROL)
    ]
    d = policy.decide_eom(S, tx(bounce, *kept))
    assert d.quarantine
    assert [(e.state, e.rcpt, e.target, e.entry_id) for e in d.holds] == [
        ("N", "bob@fwd.example", "bob@inner.example", "mx.fwd.example/QID1"),
        ("N", "bob@fwd.example", "bob@phone.example", "mx.fwd.example/QID1"),
        ("N", "carol@fwd.example", "carol@inner.example", "mx.fwd.example/QID1"),
    ]
    assert dict(d.log)["to"] == "<bob@inner.example>,<bob@phone.example>,<carol@inner.example>"


# -- RCPT: the whole address waits while any target is held ------------------------------


def test_u_mail_for_an_address_with_one_held_target_is_deferred_b_mail_is_not() -> None:
    info = RcptInfo(BOB2, held=1)  # the store counts every target's H and R
    u = policy.decide_rcpt_forwarding(S, "<bob@fwd.example>", info, mail(result="softfail"), [])
    assert u.reply is replies.TARGET_HELD
    assert "a target of this address" in replies.TARGET_HELD.text
    b = policy.decide_rcpt_forwarding(S, "<bob@fwd.example>", info, mail(), [])
    assert (b.action, b.reply) == ("forward", None)
    d = policy.decide_eom(S, tx(mail(), b))
    assert [a for a, _ in d.addrcpt] == ["<bob@inner.example>", "<Bob@Phone.Example>"]


# -- a failure DSN for a message that went to two targets ------------------------------------


def two_target_bounce(final_recipient: bytes) -> tuple[policy.Transaction, str]:
    srs_addr = S.srs.forward("alice@example.org", now=NOW)
    key = srs_addr.lower()
    records = [
        MessageRecord(
            key,
            f"abcdefgh23456789.{i}",
            "abcdefgh23456789",
            "U",
            "alice@example.org",
            "bob@fwd.example",
            target,
            NOW,
            "mx.fwd.example",
            "Q0",
        )
        for i, target in enumerate(("alice@inner.example", "broken@inner.example"))
    ]
    raw = (BOUNCES / "postfix-failed.eml").read_bytes()
    raw = raw.replace(b"Final-Recipient: rfc822; broken@inner.example", final_recipient)
    null = policy.decide_mail(S, "", "inner.example", spf("pass", "inner.example", "helo"), now=NOW)
    rcpt = policy.decide_rcpt_srs(S, f"<{srs_addr}>", srs_addr, [], NOW)
    report = classify.classify(raw, null_sender=True)
    return tx(null, rcpt, records={key: records}, bounce=report), key


def test_a_dsn_naming_the_failed_target_holds_it_alone() -> None:
    t, key = two_target_bounce(b"Final-Recipient: rfc822; Broken@Inner.Example")
    d = policy.decide_eom(S, t)
    assert d.quarantine
    assert [(e.target, e.rcpt, e.srs) for e in d.holds] == [
        ("broken@inner.example", "bob@fwd.example", key)
    ]


def test_a_dsn_whose_recipient_a_downstream_rewrote_holds_every_target() -> None:
    t, _ = two_target_bounce(b"Final-Recipient: rfc822; mailbox17@store.inner.example")
    d = policy.decide_eom(S, t)
    assert d.quarantine
    assert sorted(e.target for e in d.holds) == ["alice@inner.example", "broken@inner.example"]


def test_a_dsn_for_both_targets_holds_each_with_its_own_reason() -> None:
    t, _ = two_target_bounce(
        b"Final-Recipient: rfc822; alice@inner.example\n"
        b"Original-Recipient: rfc822;bob@fwd.example\nAction: failed\nStatus: 5.2.2\n"
        b"Diagnostic-Code: smtp; 552 5.2.2 over quota\n\n"
        b"Final-Recipient: rfc822; broken@inner.example"
    )
    d = policy.decide_eom(S, t)
    reasons = {e.target: e.reason for e in d.holds}
    assert reasons["alice@inner.example"] == "552 5.2.2 over quota"
    assert reasons["broken@inner.example"].startswith("550 5.1.1 <broken@inner.example>")
