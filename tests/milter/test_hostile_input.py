"""Hostile input gets a final answer through the whole milter (issue 14).

Each case answered 451 on every retry before: a client retries a 4xx for
days and then bounces, so the mail is lost and its sender gets the bounce
the forwarder exists to avoid. The fuzz tests (tests/fuzz) search for more.
"""

from __future__ import annotations

import email.message
from pathlib import Path

import Milter

from fwdmilter import policy, replies, runtime
from tests.milter.test_milter_ctx import (
    MESSAGE,
    Hooks,
    connect,
    feed,
    forwarded_u_message,
    reply,
    said,
)

BOUNCES = Path(__file__).parents[1] / "data" / "bounces"


def test_empty_authentication_results_is_forwarded(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks)
    message = b"Authentication-Results: ;\n" + MESSAGE
    assert feed(ctx, "alice@pass.example", "bob@fwd.example", message=message) == Milter.CONTINUE
    assert ctx._addrcpt[0][0] == "<bob@inner.example>"


def test_forged_authentication_results_with_nested_comment_or_quoted_id_are_removed(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    forged = (
        b"Authentication-Results: (a (nested) comment) mx.fwd.example; spf=pass\n"
        b'Authentication-Results: "MX.fwd.example"; dkim=pass\n'
        b"Authentication-Results: mx.fwd.example(x); dmarc=pass\n"
        b"Authentication-Results: other.example; spf=fail\n"
    )
    ctx = connect(rt, hooks)
    assert (
        feed(ctx, "alice@pass.example", "bob@fwd.example", message=forged + MESSAGE)
        == Milter.CONTINUE
    )
    assert sorted(ctx._msg.get_all(policy.AUTH_RESULTS_HEADER)) == [
        "mx.fwd.example; spf=pass smtp.mailfrom=alice@pass.example",  # ours, added
        "other.example; spf=fail",
    ]


def test_sender_that_is_not_utf8_is_refused_for_good(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks, ip="127.0.0.1")
    # pymilter hands octets that are not UTF-8 over as lone surrogates.
    assert feed(ctx, "caf\udce9@pass.example", "bob@fwd.example") == Milter.REJECT
    assert said(ctx, replies.BAD_ADDRESS)
    assert ctx._addrcpt == [] and hooks.running == 0


def test_recipient_that_is_not_utf8_is_refused_for_good(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks, ip="127.0.0.1")
    assert feed(ctx, "alice@pass.example", "b\udcffob@fwd.example") == Milter.REJECT
    assert said(ctx, replies.BAD_RECIPIENT)
    ctx = connect(rt, hooks, ip="127.0.0.1")
    assert feed(ctx, "alice@pass.example", "bob\r\n@fwd.example") == Milter.REJECT
    assert said(ctx, replies.BAD_RECIPIENT)


def test_sender_domain_that_cannot_be_looked_up_is_not_deferred(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    # From outside, SPF is checked: a name DNS cannot even form has no
    # record (RFC 7208 4.3): SPF none, accepted by the default policy.
    # A macro (RFC 7208 section 7) makes a name of the local part.
    senders = [f"x@{d}" for d in ("a..b.example", "x" * 64 + ".example", "☃\u200d.example")]
    senders += ["a..b@macro.example", "y" * 64 + "@macro.example", "a..b@explain.example"]
    senders += ["x@\\.example", "a\\.b@macro.example"]  # escapes: found by the fuzz
    for sender in senders:
        ctx = connect(rt, hooks)
        assert feed(ctx, sender, "bob@fwd.example") != Milter.TEMPFAIL, sender
        assert reply(ctx)[:1] != ("451",), reply(ctx)


def test_bounce_with_out_of_range_utf8_escape_is_held(rt: runtime.Runtime, hooks: Hooks) -> None:
    srs_addr = forwarded_u_message(rt)
    bounce = (BOUNCES / "postfix-failed.eml").read_bytes()
    bounce = bounce.replace(
        b"Final-Recipient: rfc822; broken@inner.example",
        b"Final-Recipient: utf-8; bob\\x{110000}@inner.example",
    )
    ctx = connect(rt, hooks, ip="127.0.0.1", helo="inner.example")
    assert feed(ctx, "", srs_addr, message=bounce) == Milter.CONTINUE
    assert ctx.quarantined is not None and "sender not verified" in ctx.quarantined
    (entry,) = rt.store.held(target="bob@inner.example")
    # Read as a DSN: its diagnostic is the reason.
    assert entry.state == "H" and "mailbox full" in entry.reason


def test_rcpt_parameters_libmilter_cannot_pass_on_are_dropped(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    # NOTIFY and ORCPT are carried over to the forwarded recipient; a value
    # with NUL or undecodable octets made addrcpt fail: 451 on every retry.
    ctx = connect(rt, hooks, ip="127.0.0.1")
    ctx._msg = email.message.Message()
    assert ctx._envfrom("<alice@pass.example>") == Milter.CONTINUE
    params = ("NOTIFY=\0", "ORCPT=rfc822;b\udcffob@fwd.example", "NOTIFY=FAILURE")
    assert ctx._priv.envrcpt("<bob@fwd.example>", *params) == Milter.CONTINUE
    ctx._priv.header_bytes("Subject", b"hi")
    ctx._priv.body(b"Hello.\n")
    ctx._body = None
    assert ctx._eom() == Milter.CONTINUE
    assert ctx._addrcpt == [("<bob@inner.example>", "NOTIFY=FAILURE ORCPT=rfc822;bob@fwd.example")]
