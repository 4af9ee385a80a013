"""The recipient's own policy through the milter shell, in-process.

Each forwarding address may override the global SPF actions and sender
rewrite, and trust forwarders of its own (docs/operations.md, "Policy per
recipient"); the SPF verdict is given at RCPT TO, per recipient. The
forwards live in a real SQLite store, SPF is checked against the
session's DNS server (tests/harness/dns.py: alumni.example and
mx.relay.example list 192.0.2.0/24, relay.example and fail.example do not).
"""

from __future__ import annotations

import Milter

from fwdmilter import policy, replies, runtime
from fwdmilter.states import Forward
from tests.milter.test_milter_ctx import (
    MESSAGE,
    Ctx,
    Hooks,
    connect,
    feed,
    reply,
    said,
)


def put(rt: runtime.Runtime, rcpt: str, **policy_fields: object) -> Forward:
    user = rcpt.partition("@")[0]
    fwd = Forward(rcpt, (f"{user}@inner.example",), **policy_fields)  # type: ignore[arg-type]
    rt.store.put_forward(fwd)
    return fwd


def auth_results(ctx: Ctx) -> str:
    return str(ctx._msg[policy.AUTH_RESULTS_HEADER])


def test_a_trusted_forwarder_domain_lets_failing_mail_in_for_its_recipient_only(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    put(rt, "alum@fwd.example", trusted=("alumni.example",))
    put(rt, "carol@fwd.example")
    ctx = connect(rt, hooks, helo="mx.other.example")  # 192.0.2.10: alumni.example lists it
    assert ctx._envfrom("<old.friend@fail.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<carol@fwd.example>") == Milter.REJECT
    assert said(ctx, replies.SPF_FAIL, completed=True)
    assert ctx._envrcpt("<alum@fwd.example>") == Milter.CONTINUE
    ctx._reply = None
    assert feed(ctx, "old.friend@fail.example", "alum@fwd.example") == Milter.CONTINUE
    assert ctx._addrcpt[0][0] == "<alum@inner.example>"
    assert auth_results(ctx) == (
        "mx.fwd.example; spf=fail smtp.mailfrom=old.friend@fail.example"
        " (not enforced: trusted forwarder alumni.example of a recipient)"
    )
    # Still unverified: rewritten, recorded U, its bounces held.
    srs_sender = rt.settings.srs.forward("old.friend@fail.example")
    assert ctx._sender == f"<{srs_sender}>"
    (record,) = rt.store.messages(srs_sender.lower())
    assert (record.state, record.target) == ("U", "alum@inner.example")


def test_a_trusted_network_and_a_trusted_helo_name(rt: runtime.Runtime, hooks: Hooks) -> None:
    put(rt, "net@fwd.example", trusted=("198.51.100.0/24", "192.0.2.0/28"))
    put(rt, "relayed@fwd.example", trusted=("relay.example",))
    ctx = connect(rt, hooks, helo="mx.other.example")
    assert feed(ctx, "x@fail.example", "net@fwd.example") == Milter.CONTINUE
    assert "trusted forwarder 192.0.2.0/28" in auth_results(ctx)
    # relay.example's own record lists no client: only its HELO name's does.
    ctx = connect(rt, hooks, helo="mx.other.example")
    assert feed(ctx, "x@fail.example", "relayed@fwd.example") == Milter.REJECT
    assert said(ctx, replies.SPF_FAIL, completed=True)
    ctx = connect(rt, hooks, helo="mx.relay.example")
    assert feed(ctx, "x@fail.example", "relayed@fwd.example") == Milter.CONTINUE
    assert "trusted forwarder relay.example" in auth_results(ctx)
    # A network that does not hold the client trusts nothing.
    ctx = connect(rt, hooks, ip="192.0.2.200", helo="mx.other.example")
    assert feed(ctx, "x@fail.example", "net@fwd.example") == Milter.REJECT


def test_a_forwarder_whose_check_could_not_complete_gets_a_451(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    put(rt, "slow@fwd.example", trusted=("fail.example", "slow.example"))
    ctx = connect(rt, hooks)
    assert feed(ctx, "x@fail.example", "slow@fwd.example") == Milter.TEMPFAIL
    assert said(ctx, replies.SPF_TEMPERROR)


def test_a_recipient_refuses_softfail_that_others_accept(rt: runtime.Runtime, hooks: Hooks) -> None:
    put(rt, "strict@fwd.example", spf_actions=(("softfail", "reject"),))
    ctx = connect(rt, hooks)
    assert ctx._envfrom("<news@softfail.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<strict@fwd.example>") == Milter.REJECT
    assert said(ctx, replies.SPF_SOFTFAIL, completed=True)
    ctx = connect(rt, hooks)
    assert feed(ctx, "news@softfail.example", "bob@fwd.example") == Milter.CONTINUE
    assert ctx._addrcpt[0][0] == "<bob@inner.example>"


def test_a_recipient_accepts_fail_that_others_refuse(rt: runtime.Runtime, hooks: Hooks) -> None:
    put(rt, "lenient@fwd.example", spf_actions=(("fail", "accept"),))
    ctx = connect(rt, hooks)
    assert feed(ctx, "x@fail.example", "lenient@fwd.example") == Milter.CONTINUE
    assert auth_results(ctx).endswith("(not enforced: a recipient's own policy accepts spf=fail)")


def test_rewrite_none_keeps_a_verified_sender_and_rewrites_unverified_mail(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    put(rt, "direct@fwd.example", rewrite="none")
    ctx = connect(rt, hooks)
    assert feed(ctx, "alice@pass.example", "direct@fwd.example") == Milter.CONTINUE
    assert ctx._sender == "<alice@pass.example>"  # no chgfrom
    assert ctx._addrcpt[0][0] == "<direct@inner.example>"
    assert rt.store.messages(rt.settings.srs.forward("alice@pass.example").lower()) == []
    ctx = connect(rt, hooks)
    assert feed(ctx, "news@softfail.example", "direct@fwd.example") == Milter.CONTINUE
    srs_sender = rt.settings.srs.forward("news@softfail.example")
    assert ctx._sender == f"<{srs_sender}>"
    (record,) = rt.store.messages(srs_sender.lower())
    assert record.state == "U"


def test_recipients_with_other_envelope_senders_are_split(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    put(rt, "direct@fwd.example", rewrite="none")
    ctx = connect(rt, hooks)
    rc = feed(ctx, "alice@pass.example", "bob@fwd.example", "direct@fwd.example")
    assert rc == Milter.TEMPFAIL
    assert said(ctx, replies.SPLIT_TRANSACTION)
    # U mail is rewritten for both: one transaction.
    ctx = connect(rt, hooks)
    rc = feed(ctx, "news@softfail.example", "bob@fwd.example", "direct@fwd.example")
    assert rc == Milter.CONTINUE
    assert sorted(a for a, *_ in ctx._addrcpt) == ["<bob@inner.example>", "<direct@inner.example>"]


def test_the_message_is_unchanged_for_recipients_without_a_policy(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    ctx = connect(rt, hooks)
    assert feed(ctx, "alice@pass.example", "bob@fwd.example", message=MESSAGE) == Milter.CONTINUE
    assert auth_results(ctx) == "mx.fwd.example; spf=pass smtp.mailfrom=alice@pass.example"
    assert reply(ctx) == ()
