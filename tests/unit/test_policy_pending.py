"""RCPT for a forwarding address whose target awaits confirmation (fwdweb)."""

from __future__ import annotations

from dataclasses import replace

from fwdmilter import policy, replies
from fwdmilter.store.base import Forward, RcptInfo
from tests.unit.test_policy import BOB, NOW, S, mail

NEW = Forward("new@fwd.example", (), pending="new@inner.example", pending_expires=NOW + 60)


def decide(fwd: Forward, now: float | None = NOW) -> policy.RcptDecision:
    return policy.decide_rcpt_forwarding(S, f"<{fwd.rcpt}>", RcptInfo(fwd), mail(), [], now=now)


def test_a_first_target_awaiting_confirmation_defers_mail() -> None:
    d = decide(NEW)
    assert d.reply is replies.TARGET_PENDING
    assert (d.reply.code, d.reply.status) == (450, "4.2.1")


def test_an_expired_request_without_target_is_refused_for_good() -> None:
    d = decide(NEW, now=NOW + 60)
    assert d.reply is replies.TARGET_UNCONFIRMED
    assert (d.reply.code, d.reply.status) == (550, "5.2.1")


def test_an_active_forward_keeps_forwarding_to_its_target_while_one_is_pending() -> None:
    d = decide(replace(BOB, pending="bob@new.example", pending_expires=NOW + 60))
    assert (d.action, d.reply) == ("forward", None)
    assert d.forward is not None and d.forward.target == "bob@inner.example"


def test_a_moved_address_answers_551_whatever_was_pending() -> None:
    moved = replace(NEW, moved_to="new@elsewhere.example")
    d = decide(moved)
    assert d.reply is not None and d.reply.code == 551


def test_without_a_time_a_pending_target_counts() -> None:
    assert decide(replace(NEW, pending_expires=1.0), now=None).reply is replies.TARGET_PENDING
