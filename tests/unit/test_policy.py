"""The milter's decisions, without servers: facts in, decision out."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from fwdmilter import classify, machine, policy, replies
from fwdmilter.policy import RcptDecision, SPFOutcome
from fwdmilter.replies import Reply
from fwdmilter.states import Forward, MessageRecord, RcptInfo
from srs import ALIAS_HOST, SRS, alias_key

NOW = 20780 * 86400 + 43200
BOUNCES = Path(__file__).parents[1] / "data" / "bounces"
ACTIONS = {
    "fail": "reject",
    "softfail": "accept",
    "neutral": "accept",
    "none": "accept",
    "permerror": "accept",
    "temperror": "tempfail",
}


def settings(**kw: object) -> policy.Settings:
    base = policy.Settings(
        srs=SRS(["k"], "fwd.example"),
        hostname="mx.fwd.example",
        forwarding_domains=frozenset({"fwd.example", "alias.example"}),
        spf_actions=ACTIONS,
        trusted=(ipaddress.ip_network("127.0.0.0/8"),),
        loop_limit=2,
        instance="mx.fwd.example",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


S = settings()
BOB = Forward("bob@fwd.example", ("bob@inner.example",), contact="bob@mobile.example")


def spf(result: str, domain: str = "example.org", identity: str = "mailfrom") -> SPFOutcome:
    return SPFOutcome(result, identity, domain, f"{result} explanation")


def mail(
    sender: str = "alice@example.org", result: str | None = "pass", **kw: object
) -> policy.MailDecision:
    outcome = None if result is None else spf(result, identity="mailfrom" if sender else "helo")
    return policy.decide_mail(S, sender, "client.example.org", outcome, now=NOW, **kw)  # type: ignore[arg-type]


def verdict(m: policy.MailDecision, s: policy.Settings = S) -> Reply | None:
    """The reply RCPT TO gives a recipient without a policy of its own."""
    return policy.rcpt_spf(s, m, None)[0]


# -- MAIL FROM -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "code", "status"),
    [("fail", 550, "5.7.23"), ("temperror", 451, "4.7.24")],
)
def test_spf_refusals_carry_rfc7372_codes_and_the_explanation(
    result: str, code: int, status: str
) -> None:
    d = mail(result=result)
    assert d.reply is None  # MAIL FROM goes on: RCPT TO gives the verdict
    refusal = verdict(d)
    assert refusal is not None
    assert (refusal.code, refusal.status) == (code, status)
    assert f"example.org: {result} explanation" in refusal.text


@pytest.mark.parametrize("result", ["softfail", "neutral", "none", "permerror"])
def test_accepted_spf_results_make_unbouncable_mail(result: str) -> None:
    d = mail(result=result)
    assert d.reply is None and verdict(d) is None
    assert d.state == "U"
    assert d.auth_results == f"mx.fwd.example; spf={result} smtp.mailfrom=alice@example.org"


def test_configured_actions_are_obeyed() -> None:
    strict = settings(
        spf_actions=ACTIONS | {"softfail": "reject", "none": "tempfail", "temperror": "accept"}
    )
    soft = verdict(
        policy.decide_mail(strict, "a@example.org", "h", spf("softfail"), now=NOW), strict
    )
    assert soft is not None and (soft.code, soft.status) == (550, "5.7.23")
    none = verdict(policy.decide_mail(strict, "a@example.org", "h", spf("none"), now=NOW), strict)
    assert none is not None and (none.code, none.status) == (451, "4.7.24")
    temp = policy.decide_mail(strict, "a@example.org", "h", spf("temperror"), now=NOW)
    assert temp.reply is None and verdict(temp, strict) is None and temp.state == "U"


def test_pass_makes_bouncable_mail_with_its_srs_sender() -> None:
    d = mail()
    assert (d.reply, d.state) == (None, "B")
    assert d.srs_sender == S.srs.forward("alice@example.org", now=NOW)


def test_null_sender_is_unbouncable_and_never_rewritten() -> None:
    d = policy.decide_mail(S, "", "mx.example.org", spf("pass", "mx.example.org", "helo"), now=NOW)
    assert (d.state, d.srs_sender) == ("U", None)
    assert d.auth_results == "mx.fwd.example; spf=pass smtp.helo=mx.example.org"


def test_trusted_and_authenticated_clients_skip_spf() -> None:
    trusted = mail(result=None, client_ip="127.0.0.1")
    assert trusted.state == "U"
    assert (
        trusted.auth_results == "mx.fwd.example; none (SPF not checked: trusted client 127.0.0.1)"
    )
    auth = mail(result=None, auth_user="alice")
    assert auth.state == "B"
    assert auth.auth_results == "mx.fwd.example; auth=pass smtp.auth=alice"


def test_senders_in_our_own_domains_are_not_rewritten() -> None:
    assert mail("carol@alias.example").srs_sender is None
    assert mail("SRS0=x=y=z=w@fwd.example").srs_sender is None


def test_a_sender_that_cannot_be_rewritten_is_refused() -> None:
    d = mail('"a@b"@example.org')
    assert d.reply is replies.BAD_ADDRESS


def test_is_trusted() -> None:
    nets = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    assert policy.is_trusted("192.0.2.9", nets)
    assert policy.is_trusted("::ffff:192.0.2.9", nets)
    assert policy.is_trusted("2001:db8::1", nets)
    assert not policy.is_trusted("198.51.100.1", nets)
    assert not policy.is_trusted("", nets)
    assert not policy.is_trusted("garbage", nets)


# -- RCPT TO -------------------------------------------------------------------


def test_classify_rcpt() -> None:
    srs_addr = S.srs.forward("alice@example.org", now=NOW)
    assert policy.classify_rcpt(S, srs_addr) is policy.RcptKind.SRS
    assert policy.classify_rcpt(S, "bob@FWD.example") is policy.RcptKind.FORWARDING
    assert policy.classify_rcpt(S, "carol@alias.example") is policy.RcptKind.FORWARDING
    assert policy.classify_rcpt(S, "SRS0=a=b=c=d@other.example") is policy.RcptKind.OTHER
    assert policy.classify_rcpt(S, "dave@elsewhere.example") is policy.RcptKind.OTHER


def test_valid_srs_recipient_is_accepted_for_reversal() -> None:
    srs_addr = S.srs.forward("alice@example.org", now=NOW)
    d = policy.decide_rcpt_srs(S, f"<{srs_addr}>", srs_addr, ["NOTIFY=NEVER"], NOW)
    assert d.action == "reverse" and d.reply is None
    assert d.srs is not None and d.srs.reversed == "alice@example.org"


@pytest.mark.parametrize(
    ("mangle", "reply"),
    [
        (lambda a: a.replace(a.split("=")[1], "AAAA"), replies.SRS_FORGED),
        (lambda a: a.split("=")[0] + "=x@fwd.example", replies.SRS_MALFORMED),
    ],
)
def test_forged_and_malformed_srs_recipients_are_refused(
    mangle: object, reply: replies.Reply
) -> None:
    srs_addr = mangle(S.srs.forward("alice@example.org", now=NOW))  # type: ignore[operator]
    d = policy.decide_rcpt_srs(S, srs_addr, srs_addr, [], NOW)
    assert (d.action, d.reply) == ("refuse", reply)


def test_expired_srs_recipient_is_refused() -> None:
    srs_addr = S.srs.forward("alice@example.org", now=NOW - 30 * 86400)
    d = policy.decide_rcpt_srs(S, srs_addr, srs_addr, [], NOW)
    assert d.reply is replies.SRS_EXPIRED
    assert d.reply.code == 550


def test_unknown_and_moved_forwarding_recipients() -> None:
    unknown = policy.decide_rcpt_forwarding(S, "<x@fwd.example>", RcptInfo(None), mail(), [])
    assert unknown.reply is replies.UNKNOWN_RECIPIENT
    moved = Forward("old@fwd.example", (), moved_to="new@elsewhere.example")
    d = policy.decide_rcpt_forwarding(S, "<old@fwd.example>", RcptInfo(moved), mail(), [])
    assert d.reply is not None
    assert (d.reply.code, d.reply.status) == (551, "5.1.6")
    assert "<new@elsewhere.example>" in d.reply.text


def test_held_target_defers_unbouncable_mail_only() -> None:
    info = RcptInfo(BOB, held=1)
    u = policy.decide_rcpt_forwarding(S, "<bob@fwd.example>", info, mail(result="softfail"), [])
    assert u.reply is replies.TARGET_HELD
    assert (u.reply.code, u.reply.status) == (451, "4.7.1")
    b = policy.decide_rcpt_forwarding(S, "<bob@fwd.example>", info, mail(), [])
    assert (b.action, b.reply) == ("forward", None)
    free = policy.decide_rcpt_forwarding(
        S, "<bob@fwd.example>", RcptInfo(BOB, 0), mail(result="softfail"), []
    )
    assert free.action == "forward"


def test_null_sender_policy() -> None:
    bounce = policy.decide_mail(
        S, "", "mx.example.org", spf("pass", "mx.example.org", "helo"), now=NOW
    )
    hold = replace(BOB, null_sender="hold")
    assert (
        policy.decide_rcpt_forwarding(S, "<bob@fwd.example>", RcptInfo(hold), bounce, []).action
        == "hold"
    )
    fwd = policy.decide_rcpt_forwarding(S, "<bob@fwd.example>", RcptInfo(BOB), bounce, [])
    assert fwd.action == "forward"


# -- end of message ------------------------------------------------------------


def tx(m: policy.MailDecision, *rcpts: RcptDecision, **kw: object) -> policy.Transaction:
    base = policy.Transaction(mail=m, rcpts=rcpts, queue_id="QID1", msg_id="m1", now=NOW)
    return replace(base, **kw)  # type: ignore[arg-type]


def forward_rcpt(params: tuple[str, ...] = ()) -> RcptDecision:
    return RcptDecision("<bob@fwd.example>", "forward", forward=BOB, params=params)


def test_forwarded_message_is_rewritten_and_recorded() -> None:
    m = mail()
    d = policy.decide_eom(
        S, tx(m, forward_rcpt(("NOTIFY=FAILURE",)), RcptDecision("<x@other.example>", "pass"))
    )
    assert d.reply is None and not d.quarantine and not d.discard
    assert d.chgfrom == f"<{m.srs_sender}>"
    assert d.delrcpt == ("<bob@fwd.example>",)
    assert d.addrcpt == (
        ("<bob@inner.example>", ("NOTIFY=FAILURE", "ORCPT=rfc822;bob@fwd.example")),
    )
    assert d.add_headers[0] == (policy.TRACE_HEADER, "fwd.example; id=m1; by=mx.fwd.example")
    assert d.add_headers[1] == (policy.AUTH_RESULTS_HEADER, m.auth_results)
    (rec,) = d.records
    assert rec == MessageRecord(
        srs=(m.srs_sender or "").lower(),
        record_id="m1.0",
        msg_id="m1",
        state="B",
        sender="alice@example.org",
        rcpt="bob@fwd.example",
        target="bob@inner.example",
        created=NOW,
        instance="mx.fwd.example",
        queue_id="QID1",
    )


def test_unbouncable_forward_is_recorded_as_u() -> None:
    d = policy.decide_eom(S, tx(mail(result="softfail"), forward_rcpt()))
    assert [r.state for r in d.records] == ["U"]


def test_null_sender_mail_is_forwarded_without_rewriting_or_record() -> None:
    bounce = policy.decide_mail(
        S, "", "mx.example.org", spf("pass", "mx.example.org", "helo"), now=NOW
    )
    d = policy.decide_eom(S, tx(bounce, forward_rcpt()))
    assert d.chgfrom is None and d.records == ()
    assert d.addrcpt[0][0] == "<bob@inner.example>"


def test_mail_only_for_others_gets_authentication_results_only() -> None:
    d = policy.decide_eom(S, tx(mail(), RcptDecision("<x@other.example>", "pass")))
    assert d.chgfrom is None and d.delrcpt == () and d.records == ()
    assert [h for h, _ in d.add_headers] == [policy.AUTH_RESULTS_HEADER]


def test_our_authentication_results_from_outside_are_removed() -> None:
    d = policy.decide_eom(S, tx(mail(), forward_rcpt(), own_auth_results=(1, 3)))
    assert d.del_headers == ((policy.AUTH_RESULTS_HEADER, 3), (policy.AUTH_RESULTS_HEADER, 1))
    assert policy.authserv_id("MX.fwd.example (c); spf=pass") == "mx.fwd.example"
    assert policy.authserv_id(" other.example 1; none") == "other.example"


def test_loops_are_refused() -> None:
    ours = "fwd.example; id=a; by=mx.fwd.example"
    theirs = "other.example; id=b; by=mx.other.example"
    ok = policy.decide_eom(S, tx(mail(), forward_rcpt(), trace_values=(ours, ours, theirs)))
    assert ok.reply is None
    loop = policy.decide_eom(S, tx(mail(), forward_rcpt(), trace_values=(ours, ours, ours)))
    assert loop.reply is replies.LOOP
    assert (loop.reply.code, loop.reply.status) == (554, "5.4.6")


def test_when_needed_keeps_a_sender_that_already_permits_us() -> None:
    s = settings(rewrite="when-needed")
    m = policy.decide_mail(s, "alice@example.org", "h", spf("pass"), now=NOW)
    kept = policy.decide_eom(s, tx(m, rcpt(BOB, m, s, sender_permits_us=True)))
    assert kept.chgfrom is None and kept.addrcpt
    rewritten = policy.decide_eom(s, tx(m, rcpt(BOB, m, s, sender_permits_us=False)))
    assert rewritten.chgfrom == f"<{m.srs_sender}>"


# -- bounces coming back ---------------------------------------------------------


def bounce_tx(
    state: str | None, raw_name: str | None = "postfix-failed.eml", **kw: object
) -> tuple[policy.Transaction, str]:
    srs_addr = S.srs.forward("alice@example.org", now=NOW)
    key = srs_addr.lower()
    records = []
    if state is not None:
        records = [
            MessageRecord(
                key,
                "abcdefgh23456789.0",
                "abcdefgh23456789",
                state,
                "alice@example.org",  # type: ignore[arg-type]
                "bob@fwd.example",
                "broken@inner.example",
                NOW,
                "mx.fwd.example",
                "Q0",
                held_id="mx.fwd.example/QOLD" if state == "R" else "",
            )
        ]
    null = policy.decide_mail(S, "", "inner.example", spf("pass", "inner.example", "helo"), now=NOW)
    rcpt = policy.decide_rcpt_srs(S, f"<{srs_addr}>", srs_addr, [], NOW)
    report = (
        classify.classify((BOUNCES / raw_name).read_bytes(), null_sender=True) if raw_name else None
    )
    return tx(null, rcpt, records={key: records}, bounce=report, **kw), srs_addr


def record_states(d: policy.EomDecision) -> list[tuple[str, str, str]]:
    return [
        (e.srs, e.record_id, e.state) for e in d.effects if isinstance(e, machine.SetRecordState)
    ]


def test_bounce_for_bouncable_message_goes_to_the_sender() -> None:
    t, srs_addr = bounce_tx("B")
    d = policy.decide_eom(S, t)
    assert not d.quarantine and d.holds == ()
    assert d.delrcpt == (f"<{srs_addr}>",)
    assert d.addrcpt == (("<alice@example.org>", ()),)
    assert d.chgfrom is None  # a bounce keeps its null sender


@pytest.mark.parametrize("state", ["U", None])
def test_bounce_for_unbouncable_or_unknown_message_is_held(state: str | None) -> None:
    t, srs_addr = bounce_tx(state)
    d = policy.decide_eom(S, t)
    assert d.quarantine.startswith("fwdmilter: bounce held")
    assert d.delrcpt == () and d.addrcpt == ()
    (entry,) = d.holds
    assert entry.state == "H"
    assert entry.target == ("broken@inner.example" if state else machine.UNKNOWN_TARGET)
    assert entry.sender == "alice@example.org"
    assert entry.queue_id == "QID1" and entry.entry_id == "mx.fwd.example/QID1"
    assert "5.1.1" in entry.reason and entry.reason.count("5.1.1") == 1
    if state:
        assert record_states(d) == [(srs_addr.lower(), "abcdefgh23456789.0", "H")]


def test_legacy_bounce_without_record_is_held_for_an_unknown_target() -> None:
    t, _ = bounce_tx(None, raw_name="not-a-dsn.eml")
    d = policy.decide_eom(S, t)
    (entry,) = d.holds
    assert entry.target == machine.UNKNOWN_TARGET
    assert entry.reason == "bounce in a legacy format (not RFC 3464) for bob@old.example"


def test_requeued_message_that_fails_again_is_held_again() -> None:
    t, srs_addr = bounce_tx("R")
    d = policy.decide_eom(S, t)
    assert d.quarantine
    assert d.holds == ()
    (rehold,) = [e for e in d.effects if isinstance(e, machine.Rehold)]
    assert (rehold.target, rehold.entry_id) == ("broken@inner.example", "mx.fwd.example/QOLD")
    assert rehold.reason.startswith("550 5.1.1 <broken@inner.example>")
    assert record_states(d) == [(srs_addr.lower(), "abcdefgh23456789.0", "H")]


def test_delivery_notice_for_requeued_message_releases_and_is_discarded() -> None:
    t, srs_addr = bounce_tx("R", "relayed.eml")
    d = policy.decide_eom(S, t)
    assert d.discard and not d.quarantine
    assert [e for e in d.effects if isinstance(e, machine.Release)] == [
        machine.Release("broken@inner.example", "mx.fwd.example/QOLD")
    ]
    assert record_states(d) == [(srs_addr.lower(), "abcdefgh23456789.0", "done")]


def test_delay_notice_for_unbouncable_message_is_dropped_not_held() -> None:
    t, _ = bounce_tx("U", "delayed.eml")
    d = policy.decide_eom(S, t)
    assert d.discard and d.holds == () and not d.quarantine


def test_delay_notice_for_bouncable_message_is_delivered() -> None:
    t, _ = bounce_tx("B", "delayed.eml")
    d = policy.decide_eom(S, t)
    assert d.addrcpt == (("<alice@example.org>", ()),)


def test_null_sender_held_by_recipient_policy() -> None:
    bounce = policy.decide_mail(
        S, "", "mx.example.org", spf("pass", "mx.example.org", "helo"), now=NOW
    )
    hold = RcptDecision("<bob@fwd.example>", "hold", forward=replace(BOB, null_sender="hold"))
    d = policy.decide_eom(S, tx(bounce, hold))
    assert d.quarantine
    (entry,) = d.holds
    assert (entry.state, entry.target, entry.contact) == (
        "N",
        "bob@inner.example",
        "bob@mobile.example",
    )


def test_trace_ids_pick_ours_newest_first() -> None:
    values = ["fwd.example; id=new; by=a", "other.example; id=x; by=b", "FWD.example ; id=old"]
    assert policy.trace_ids(S, values) == ["new", "old"]
    assert policy.count_trace(S, values) == 2


def test_bounce_goes_to_the_sender_as_sent_when_the_record_knows_it() -> None:
    sender = "josé@bücher.example"
    srs_addr = S.srs.forward(sender, now=NOW)
    assert "xn--bcher-kva.example" in srs_addr
    key = srs_addr.lower()
    record = MessageRecord(
        key,
        "m.0",
        "m",
        "B",
        sender,
        "bob@fwd.example",
        "broken@inner.example",
        NOW,
        "mx.fwd.example",
        "Q0",
    )
    null = policy.decide_mail(S, "", "inner.example", spf("pass", "inner.example", "helo"), now=NOW)
    rcpt = policy.decide_rcpt_srs(S, f"<{srs_addr}>", srs_addr, [], NOW)
    report = classify.classify((BOUNCES / "postfix-failed.eml").read_bytes(), null_sender=True)
    d = policy.decide_eom(S, tx(null, rcpt, records={key: [record]}, bounce=report))
    assert d.addrcpt == ((f"<{sender}>", ()),)
    # A record of another sender under that address changes nothing.
    other = replace(record, sender="someone@else.example")
    d = policy.decide_eom(S, tx(null, rcpt, records={key: [other]}, bounce=report))
    assert d.addrcpt == (("<josé@xn--bcher-kva.example>", ()),)


# -- one outcome per transaction ---------------------------------------------------


def srs_rcpt() -> RcptDecision:
    srs_addr = S.srs.forward("alice@example.org", now=NOW)
    return policy.decide_rcpt_srs(S, f"<{srs_addr}>", srs_addr, [], NOW)


def kept_rcpt() -> RcptDecision:
    return RcptDecision("<bob@fwd.example>", "hold", forward=replace(BOB, null_sender="hold"))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (srs_rcpt(), forward_rcpt()),  # the case that lost another recipient's copy
        (forward_rcpt(), srs_rcpt()),
        (srs_rcpt(), srs_rcpt()),  # a bounce travels alone
        (kept_rcpt(), forward_rcpt()),
        (forward_rcpt(), kept_rcpt()),
        (RcptDecision("<x@other.example>", "pass"), srs_rcpt()),
    ],
)
def test_a_recipient_needing_another_outcome_gets_452_453(
    first: RcptDecision, second: RcptDecision
) -> None:
    assert policy.decide_rcpt_split([], first) is first
    split = policy.decide_rcpt_split([first], second)
    assert split.action == "refuse" and split.reply is replies.SPLIT_TRANSACTION
    assert (split.reply.code, split.reply.status) == (452, "4.5.3")
    assert split.rcpt == second.rcpt


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (forward_rcpt(), RcptDecision("<x@other.example>", "pass")),
        (forward_rcpt(), forward_rcpt()),
        (kept_rcpt(), kept_rcpt()),
    ],
)
def test_recipients_of_one_outcome_share_a_transaction(
    first: RcptDecision, second: RcptDecision
) -> None:
    assert policy.decide_rcpt_split([first], second) is second


def test_when_needed_never_skips_srs_for_unverified_mail() -> None:
    # Its bounce must come back here to be held, not go to the sender.
    s = settings(rewrite="when-needed")
    m = policy.decide_mail(s, "alice@example.org", "h", spf("softfail"), now=NOW)
    assert m.state == "U"
    d = policy.decide_eom(s, tx(m, rcpt(BOB, m, s, sender_permits_us=True)))
    assert d.chgfrom == f"<{m.srs_sender}>"
    assert [r.state for r in d.records] == ["U"]


def test_forward_log_carries_the_trace_id() -> None:
    d = policy.decide_eom(S, tx(mail(), forward_rcpt()))
    assert dict(d.log)["trace"] == "m1"
    assert d.action == "forward"


@pytest.mark.parametrize(
    ("raw_name", "action"),
    [
        ("vacation.eml", "discard"),
        ("read-receipt.eml", "discard"),
        ("delayed.eml", "discard"),
        ("person-reply.eml", "reject"),
        ("postfix-failed.eml", "hold"),
        ("exim-failed.eml", "hold"),
    ],
)
def test_mail_to_an_srs_address_of_a_u_message(raw_name: str, action: str) -> None:
    t, _ = bounce_tx("U", raw_name)
    d = policy.decide_eom(S, t)
    assert d.action == action
    assert bool(d.holds) == (action == "hold")
    assert d.discard == (action == "discard")
    assert (d.reply is replies.SRS_REPLY_REFUSED) == (action == "reject")
    assert (
        dict(d.log)["kind"]
        == classify.classify((BOUNCES / raw_name).read_bytes(), null_sender=True).kind.value
    )


def test_a_delivered_bounce_carries_our_trace_header() -> None:
    t, _ = bounce_tx("B")
    d = policy.decide_eom(S, t)
    assert d.add_headers[0] == (policy.TRACE_HEADER, "fwd.example; id=m1; by=mx.fwd.example")


# -- SRS addresses that always fit (RFC 5321 section 4.5.3.1.1) -------------------


def _sender_with_srs_local_part(octets: int) -> str:
    """A sender at example.org whose standard SRS0 local part is ``octets`` long."""
    probe = S.srs.forward("x@example.org", now=NOW)
    overhead = len(probe.rpartition("@")[0]) - 1
    return "u" * (octets - overhead) + "@example.org"


def test_an_srs_local_part_of_64_octets_stays_standard() -> None:
    sender = _sender_with_srs_local_part(64)
    m = mail(sender)
    assert m.srs_sender == S.srs.forward(sender, now=NOW)
    assert len((m.srs_sender or "").rpartition("@")[0]) == 64
    assert not m.srs_short


def test_65_octets_get_the_short_form_signed_dated_and_recorded() -> None:
    sender = _sender_with_srs_local_part(65)
    m = mail(sender)
    assert m.srs_short and m.srs_sender is not None
    local = m.srs_sender.rpartition("@")[0]
    assert len(local) <= 64
    parsed = S.srs.parse(m.srs_sender, now=NOW)  # a genuine, dated SRS0 address
    assert (parsed.host, parsed.user) == (ALIAS_HOST, alias_key(sender))
    d = policy.decide_eom(S, tx(m, forward_rcpt()))
    (rec,) = d.records
    assert rec.sender == sender and rec.srs == m.srs_sender.lower()


def test_a_60_character_local_part_fits_after_rewriting() -> None:
    # The measurement: 60 characters gave an 85-octet SRS local part.
    m = mail("p" * 60 + "@example.org")
    assert m.srs_short
    assert len((m.srs_sender or "").rpartition("@")[0]) <= 64


def test_a_bounce_to_a_short_form_reaches_the_sender_its_records_name() -> None:
    sender = _sender_with_srs_local_part(80)
    m = mail(sender)
    srs_addr = m.srs_sender or ""
    key = srs_addr.lower()
    record = MessageRecord(
        key, "m.0", "m", "B", sender, "bob@fwd.example", "broken@inner.example", NOW, "mx", "Q"
    )
    null = policy.decide_mail(S, "", "inner.example", spf("pass", "inner.example", "helo"), now=NOW)
    rcpt = policy.decide_rcpt_srs(S, f"<{srs_addr}>", srs_addr, [], NOW)
    report = classify.classify((BOUNCES / "postfix-failed.eml").read_bytes(), null_sender=True)
    d = policy.decide_eom(S, tx(null, rcpt, records={key: [record]}, bounce=report))
    assert d.addrcpt == ((f"<{sender}>", ()),)
    # Unverified: held, and the entry names the real sender for the requeue.
    held = policy.decide_eom(
        S, tx(null, rcpt, records={key: [replace(record, state="U")]}, bounce=report)
    )
    (entry,) = held.holds
    assert entry.sender == sender
    # Its records gone: held, never sent to the key.
    lost = policy.decide_eom(S, tx(null, rcpt, records={key: []}, bounce=report))
    assert lost.quarantine and lost.addrcpt == ()


def test_a_forged_short_form_is_refused_at_rcpt() -> None:
    m = mail(_sender_with_srs_local_part(90))
    srs_addr = m.srs_sender or ""
    tag = srs_addr.split("=")[1]
    forged = srs_addr.replace(tag, "AAAA" if tag != "AAAA" else "BBBB", 1)
    d = policy.decide_rcpt_srs(S, f"<{forged}>", forged, [], NOW)
    assert d.reply is replies.SRS_FORGED
    old = policy.decide_rcpt_srs(S, f"<{srs_addr}>", srs_addr, [], NOW + 40 * 86400)
    assert old.reply is replies.SRS_EXPIRED


# -- MAIL FROM: the whole decision ---------------------------------------------------


def test_an_spf_refusal_is_given_at_rcpt_with_the_domains_explanation() -> None:
    outcome = spf("fail")
    d = policy.decide_mail(S, "alice@example.org", "h", outcome, now=NOW)
    assert d == policy.MailDecision(
        None,
        "U",
        "alice@example.org",
        S.srs.forward("alice@example.org", now=NOW),
        "mx.fwd.example; spf=fail smtp.mailfrom=alice@example.org",
        outcome,
    )
    assert policy.rcpt_spf(S, d, None) == (
        replies.SPF_FAIL.with_text(
            "SPF check failed: the sender's domain does not permit this host"
            " (example.org: fail explanation)"
        ),
        "",
    )


def test_an_spf_refusal_without_explanation_or_domain() -> None:
    bare = policy.decide_mail(S, "a@example.org", "h", SPFOutcome("fail", "mailfrom", "x"), now=NOW)
    assert verdict(bare) == replies.SPF_FAIL
    nameless = SPFOutcome("fail", "helo", "", "no such host")
    d = verdict(policy.decide_mail(S, "a@example.org", "h", nameless, now=NOW))
    assert d is not None
    assert d.text == f"{replies.SPF_FAIL.text} (the sender: no such host)"


def test_a_tempfail_action_on_a_permanent_result_is_a_451_saying_try_later() -> None:
    strict = settings(spf_actions=ACTIONS | {"none": "tempfail"})
    d = policy.decide_mail(strict, "a@example.org", "h", spf("none"), now=NOW)
    assert verdict(d, strict) == replies.Reply(
        451,
        "4.7.24",
        "No SPF record for the sender's domain: refused by local policy; try again later"
        " (example.org: none explanation)",
    )


def test_a_reject_action_on_a_temporary_result_is_a_550_without_try_later() -> None:
    strict = settings(spf_actions=ACTIONS | {"temperror": "reject"})
    d = policy.decide_mail(strict, "a@example.org", "h", spf("temperror"), now=NOW)
    assert verdict(d, strict) == replies.Reply(
        550,
        "5.7.24",
        "SPF check could not be completed (DNS error) (example.org: temperror explanation)",
    )
    assert d.state == "U"


def test_spf_pass_is_accepted_whatever_the_actions_table_says() -> None:
    odd = settings(spf_actions=ACTIONS | {"pass": "reject"})
    d = policy.decide_mail(odd, "a@example.org", "h", spf("pass"), now=NOW)
    assert (d.reply, d.state) == (None, "B")
    assert policy.rcpt_spf(odd, d, replace(BOB, spf_actions=(("pass", "reject"),))) == (None, "")


def test_an_accepted_sender_decision_keeps_the_spf_outcome() -> None:
    outcome = spf("softfail")
    d = policy.decide_mail(S, "alice@example.org", "h", outcome, now=NOW)
    assert d == policy.MailDecision(
        None,
        "U",
        "alice@example.org",
        S.srs.forward("alice@example.org", now=NOW),
        "mx.fwd.example; spf=softfail smtp.mailfrom=alice@example.org",
        outcome,
    )


def test_a_sender_that_cannot_be_rewritten_is_the_whole_decision() -> None:
    outcome = spf("pass")
    d = policy.decide_mail(S, '"a@b"@example.org', "h", outcome, now=NOW)
    assert d == policy.MailDecision(
        replies.BAD_ADDRESS,
        "B",
        '"a@b"@example.org',
        None,
        'mx.fwd.example; spf=pass smtp.mailfrom="\\"a@b\\"@example.org"',
        outcome,
    )


@pytest.mark.parametrize(
    ("sender", "prop"),
    [
        ("Alice.B+x@Example.org", "Alice.B+x@Example.org"),  # a token: as it is
        ("a b@example.org", '"a b@example.org"'),
        ('a"b\\c@example.org', '"a\\"b\\\\c@example.org"'),  # quoted-pair escapes
    ],
)
def test_authentication_results_quote_what_is_not_a_token(sender: str, prop: str) -> None:
    d = policy.decide_mail(S, sender, "h", spf("softfail"), now=NOW)
    assert d.auth_results == f"mx.fwd.example; spf=softfail smtp.mailfrom={prop}"


def test_an_empty_helo_is_a_quoted_empty_string() -> None:
    d = policy.decide_mail(S, "", "", spf("none", "", "helo"), now=NOW)
    assert d.auth_results == 'mx.fwd.example; spf=none smtp.helo=""'


def test_is_trusted_reads_bracketed_and_ipv6_tagged_literals() -> None:
    nets = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    assert policy.is_trusted("[192.0.2.9]", nets)
    assert policy.is_trusted("IPv6:2001:db8::1", nets)
    assert policy.is_trusted("[IPv6:2001:db8::1]", nets)
    assert not policy.is_trusted("X192.0.2.9", nets)  # no literal at all


@pytest.mark.parametrize(
    ("value", "ident"),
    [
        ("(a comment first) MX.fwd.example; spf=pass", "mx.fwd.example"),
        ("(c)mx.fwd.example; none", "mx.fwd.example"),
        ("mx.fwd.example;spf=pass;dkim=none", "mx.fwd.example"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_authserv_id(value: str, ident: str) -> None:
    assert policy.authserv_id(value) == ident


# -- RCPT TO: the whole decision -------------------------------------------------------


PARAMS = ["NOTIFY=FAILURE", "ORCPT=rfc822;bob@fwd.example"]


def test_forwarding_decisions_name_the_recipient_as_given_and_its_entry() -> None:
    m_u = mail(result="softfail")
    cases = [
        (
            RcptInfo(None),
            mail(),
            RcptDecision("<X@fwd.example>", "refuse", replies.UNKNOWN_RECIPIENT),
        ),
        (
            RcptInfo(replace(BOB, targets=(), moved_to="new@else.example")),
            mail(),
            RcptDecision(
                "<X@fwd.example>",
                "refuse",
                replies.MOVED_RECIPIENT.with_text("User not local; please try <new@else.example>"),
                forward=replace(BOB, targets=(), moved_to="new@else.example"),
            ),
        ),
        (
            RcptInfo(replace(BOB, targets=())),
            mail(),
            RcptDecision(
                "<X@fwd.example>",
                "refuse",
                replies.UNKNOWN_RECIPIENT,
                forward=replace(BOB, targets=()),
            ),
        ),
        (
            RcptInfo(replace(BOB, null_sender="hold")),
            policy.decide_mail(S, "", "h", spf("pass", "h", "helo"), now=NOW),
            RcptDecision(
                "<X@fwd.example>",
                "hold",
                forward=replace(BOB, null_sender="hold"),
                params=tuple(PARAMS),
            ),
        ),
        (
            RcptInfo(BOB, held=2),
            m_u,
            RcptDecision("<X@fwd.example>", "refuse", replies.TARGET_HELD, forward=BOB),
        ),
        (
            RcptInfo(BOB),
            m_u,
            RcptDecision(
                "<X@fwd.example>",
                "forward",
                forward=BOB,
                params=tuple(PARAMS),
                sender_rewrite="srs",
            ),
        ),
    ]
    for info, m, expected in cases:
        assert policy.decide_rcpt_forwarding(S, "<X@fwd.example>", info, m, PARAMS) == expected


def test_srs_decisions_name_the_recipient_as_given() -> None:
    srs_addr = S.srs.forward("alice@example.org", now=NOW)
    ok = policy.decide_rcpt_srs(S, f"<{srs_addr}>", srs_addr, PARAMS, NOW)
    assert ok == RcptDecision(
        f"<{srs_addr}>", "reverse", srs=S.srs.parse(srs_addr, now=NOW), params=tuple(PARAMS)
    )
    forged = srs_addr.replace(srs_addr.split("=")[1], "AAAA")
    old = S.srs.forward("alice@example.org", now=NOW - 30 * 86400)
    broken = srs_addr.split("=")[0] + "=x@fwd.example"
    for bare, reply in (
        (forged, replies.SRS_FORGED),
        (old, replies.SRS_EXPIRED),
        (broken, replies.SRS_MALFORMED),
    ):
        assert policy.decide_rcpt_srs(S, f"<{bare}>", bare, PARAMS, NOW) == RcptDecision(
            f"<{bare}>", "refuse", reply
        )


def test_an_srs_address_is_checked_at_the_time_given_not_the_clock() -> None:
    long_ago = NOW - 400 * 86400
    srs_addr = S.srs.forward("alice@example.org", now=long_ago)
    d = policy.decide_rcpt_srs(S, srs_addr, srs_addr, [], long_ago + 60)
    assert (d.action, d.reply) == ("reverse", None)


def test_rcpt_groups() -> None:
    assert policy.rcpt_group(srs_rcpt()) == "bounce"
    assert policy.rcpt_group(kept_rcpt()) == "kept"
    assert policy.rcpt_group(forward_rcpt()) == "relayed"
    assert policy.rcpt_group(RcptDecision("<x@other.example>", "pass")) == "relayed"


def test_a_split_recipient_keeps_its_forwarding_entry() -> None:
    split = policy.decide_rcpt_split([srs_rcpt()], forward_rcpt())
    assert split == RcptDecision(
        "<bob@fwd.example>", "refuse", replies.SPLIT_TRANSACTION, forward=BOB
    )


# -- end of message: the whole decision ------------------------------------------------


@pytest.mark.parametrize(
    ("rcpt", "params", "expected"),
    [
        # ORCPT as the client gave it, NOTIFY beside it; nothing generated.
        (
            "<bob@fwd.example>",
            ("NOTIFY=NEVER", "orcpt=rfc822;b@x"),
            ("NOTIFY=NEVER", "orcpt=rfc822;b@x"),
        ),
        ("<bob@fwd.example>", ("ORCPT=rfc822;b@x", "RET=HDRS"), ("ORCPT=rfc822;b@x",)),
        # Generated only for an address that needs no xtext (RFC 3461 4.2).
        (
            "<bob@fwd.example>",
            ("notify=success",),
            ("notify=success", "ORCPT=rfc822;bob@fwd.example"),
        ),
        ("<bob+x@fwd.example>", (), ()),
        ("<bob=x@fwd.example>", (), ()),
        ('<"bob x"@fwd.example>', (), ()),
        ("<bøb@fwd.example>", (), ()),
    ],
)
def test_replacement_recipient_parameters(
    rcpt: str, params: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    r = RcptDecision(rcpt, "forward", forward=BOB, params=params)
    d = policy.decide_eom(S, tx(mail(), r))
    assert d.addrcpt == (("<bob@inner.example>", expected),)


def test_a_loop_refusal_logs_its_count() -> None:
    ours = "fwd.example; id=a; by=mx.fwd.example"
    d = policy.decide_eom(S, tx(mail(), forward_rcpt(), trace_values=(ours,) * 3))
    assert d == policy.EomDecision(
        reply=replies.LOOP, log=(("state", "B"), ("action", "reject-loop"), ("loops", "3"))
    )


def test_a_forward_is_the_whole_decision() -> None:
    m = mail(result="softfail")
    d = policy.decide_eom(S, tx(m, forward_rcpt(), own_auth_results=(2,)))
    assert d.log == (
        ("state", "U"),
        ("srs", f"<{m.srs_sender}>"),
        ("action", "forward"),
        ("trace", "m1"),
    )
    assert d.del_headers == ((policy.AUTH_RESULTS_HEADER, 2),)
    assert (d.reply, d.discard, d.quarantine) == (None, False, "")


def test_mail_passed_untouched_is_the_whole_decision() -> None:
    m = mail()
    d = policy.decide_eom(
        S, tx(m, RcptDecision("<x@other.example>", "pass"), own_auth_results=(1,))
    )
    assert d == policy.EomDecision(
        add_headers=((policy.AUTH_RESULTS_HEADER, m.auth_results),),
        del_headers=((policy.AUTH_RESULTS_HEADER, 1),),
        log=(("state", "B"), ("action", "pass")),
    )


def test_kept_null_sender_mail_is_the_whole_decision() -> None:
    m = policy.decide_mail(S, "", "mx.example.org", spf("pass", "mx.example.org", "helo"), now=NOW)
    kept = RcptDecision("<Bob@FWD.example>", "hold", forward=replace(BOB, null_sender="hold"))
    d = policy.decide_eom(S, tx(m, kept, own_auth_results=(1,)))
    assert d == policy.EomDecision(
        quarantine="fwdmilter: null-sender mail held by the recipient's policy",
        add_headers=((policy.AUTH_RESULTS_HEADER, m.auth_results),),
        del_headers=((policy.AUTH_RESULTS_HEADER, 1),),
        effects=machine.hold_null_sender(
            [("bob@fwd.example", "bob@inner.example", "bob@mobile.example")],
            instance="mx.fwd.example",
            queue_id="QID1",
            msg_id="m1",
            now=NOW,
        ),
        log=(("state", "U"), ("action", "hold-null-sender"), ("to", "<bob@inner.example>")),
    )
    (entry,) = d.holds
    assert (entry.host, entry.queue_id, entry.msg_id, entry.held_at) == (
        "mx.fwd.example",
        "QID1",
        "m1",
        NOW,
    )


def test_a_held_bounce_is_the_whole_decision() -> None:
    t, _ = bounce_tx("U", own_auth_results=(1,))
    d = policy.decide_eom(S, t)
    reason = d.holds[0].reason
    assert d.quarantine == "fwdmilter: bounce held, sender not verified: " + reason
    assert d.log == (
        ("state", "U"),
        ("kind", "failure"),
        ("action", "hold"),
        ("trace", "abcdefgh23456789"),
        ("reason", reason),
    )
    assert d.del_headers == ((policy.AUTH_RESULTS_HEADER, 1),)
    assert d.add_headers == ((policy.AUTH_RESULTS_HEADER, t.mail.auth_results),)
    assert (d.discard, d.reply, d.delrcpt, d.addrcpt) == (False, None, (), ())


def test_a_delivered_bounce_logs_no_reason_and_keeps_the_header_removal() -> None:
    t, _ = bounce_tx("B", own_auth_results=(1,))
    d = policy.decide_eom(S, t)
    assert d.log == (
        ("state", "U"),
        ("kind", "failure"),
        ("action", "reverse"),
        ("trace", "abcdefgh23456789"),
    )
    assert d.del_headers == ((policy.AUTH_RESULTS_HEADER, 1),)
    assert d.quarantine == "" and not d.discard


def test_a_discarded_notice_is_the_whole_decision() -> None:
    t, _ = bounce_tx("U", "delayed.eml")
    d = policy.decide_eom(S, t)
    assert d.quarantine == "" and d.discard
    assert d.log == (
        ("state", "U"),
        ("kind", "delay"),
        ("action", "discard"),
        ("trace", "abcdefgh23456789"),
        ("reason", "delivery status: delay"),
    )


def test_a_bounce_naming_more_targets_than_the_cap_logs_how_many_it_left() -> None:
    t, srs_addr = bounce_tx(None)
    key = srs_addr.lower()
    many = [
        MessageRecord(
            key,
            f"m{i}.0",
            f"m{i}",
            "U",
            "alice@example.org",
            "bob@fwd.example",
            f"t{i}@inner.example",
            NOW,
            "mx.fwd.example",
        )
        for i in range(4)
    ]
    d = policy.decide_eom(settings(max_entries_per_bounce=3), replace(t, records={key: many}))
    assert len(d.holds) == 3
    assert dict(d.log)["capped"] == "1"
    assert "capped" not in dict(policy.decide_eom(S, replace(t, records={key: many})).log)


def test_mail_to_an_srs_address_with_no_classification_and_no_records() -> None:
    # The shell always classifies; without it the mail is "other" (not
    # read), and an address nobody recorded has no records at all.
    t, srs_addr = bounce_tx("U", raw_name=None)
    d = policy.decide_eom(S, t)
    assert d.reply is replies.SRS_REPLY_REFUSED
    assert d.log == (
        ("state", "U"),
        ("kind", "other"),
        ("action", "reject"),
        ("trace", "abcdefgh23456789"),
        ("reason", "not read"),
    )
    failed, _ = bounce_tx(None)
    d = policy.decide_eom(S, replace(failed, records={}))
    (entry,) = d.holds
    assert (entry.target, entry.srs) == (machine.UNKNOWN_TARGET, srs_addr.lower())


def test_a_bounce_without_trace_id_logs_every_message_it_may_be_about() -> None:
    t, srs_addr = bounce_tx(None, "not-a-dsn.eml")  # no trace id in it
    key = srs_addr.lower()
    two = [
        MessageRecord(
            key,
            f"{m}.0",
            m,
            "U",
            "alice@example.org",
            "bob@fwd.example",
            "t@inner.example",
            NOW,
            "mx.fwd.example",
        )
        for m in ("m1", "m2")
    ]
    d = policy.decide_eom(S, replace(t, records={key: two}))
    assert dict(d.log)["trace"] == "m1,m2"


# -- per-recipient policy: the SPF verdict at RCPT TO ---------------------------------

ALUMNI = replace(BOB, trusted=("alumni.example", "198.51.100.0/24", "2001:db8:f::/48"))


def rcpt(
    fwd: Forward | None,
    m: policy.MailDecision,
    s: policy.Settings = S,
    **kw: object,
) -> RcptDecision:
    return policy.decide_rcpt_forwarding(s, "<bob@fwd.example>", RcptInfo(fwd), m, [], **kw)  # type: ignore[arg-type]


def test_the_global_spf_verdict_is_given_at_rcpt_for_every_kind_of_recipient() -> None:
    m = mail(result="fail")
    assert m.reply is None and m.state == "U"
    refused = rcpt(BOB, m)
    assert refused.action == "refuse" and refused.reply is not None
    assert refused.reply.status == "5.7.23" and refused.forward == BOB
    # An unknown recipient is refused for SPF first, as MAIL FROM did.
    assert rcpt(None, m).reply == refused.reply
    srs_addr = S.srs.forward("x@example.org", now=NOW)
    assert policy.decide_rcpt_srs(S, "<s>", srs_addr, [], NOW, m).reply == refused.reply
    other = policy.decide_rcpt_other(S, "<x@other.example>", m, ["NOTIFY=NEVER"])
    assert other.reply == refused.reply
    # Without the verdict: the lookup's own answer.
    assert policy.decide_rcpt_srs(S, "<s>", srs_addr, [], NOW).action == "reverse"
    ok = policy.decide_rcpt_other(S, "<x@other.example>", mail(), ["NOTIFY=NEVER"])
    assert ok == RcptDecision("<x@other.example>", "pass", params=("NOTIFY=NEVER",))


def test_a_recipient_may_refuse_a_result_that_the_global_action_accepts() -> None:
    strict = replace(BOB, spf_actions=(("softfail", "reject"), ("neutral", "tempfail")))
    soft = mail(result="softfail")
    d = rcpt(strict, soft)
    assert d.action == "refuse" and d.reply == policy.spf_refusal(spf("softfail"), "reject")
    assert d.reply is not None and (d.reply.code, d.reply.status) == (550, "5.7.23")
    assert d.reply.text.startswith(replies.SPF_SOFTFAIL.text)
    neutral = rcpt(strict, mail(result="neutral"))
    assert neutral.reply is not None and (neutral.reply.code, neutral.reply.status) == (
        451,
        "4.7.24",
    )
    # Others keep the global action; the recipient's other results too.
    assert rcpt(BOB, soft).action == "forward"
    assert rcpt(strict, mail(result="none")).action == "forward"
    assert policy.spf_action(S, spf("softfail"), strict) == ("reject", "recipient")
    assert policy.spf_action(S, spf("none"), strict) == ("accept", "global")
    assert policy.spf_action(S, spf("fail"), None) == ("reject", "global")


def test_a_recipient_may_accept_a_result_that_the_global_action_refuses() -> None:
    lenient = replace(BOB, spf_actions=(("fail", "accept"), ("temperror", "accept")))
    d = rcpt(lenient, mail(result="fail"))
    assert d.action == "forward" and d.sender_rewrite == "srs"
    assert d.spf_note == "not enforced: a recipient's own policy accepts spf=fail"
    temp = rcpt(lenient, mail(result="temperror"))
    assert temp.action == "forward"
    assert temp.spf_note == "not enforced: a recipient's own policy accepts spf=temperror"
    # An own action that agrees with the global one needs no note.
    same = replace(BOB, spf_actions=(("softfail", "accept"),))
    assert rcpt(same, mail(result="softfail")).spf_note == ""


def test_a_temperror_tempfail_stays_a_451_at_rcpt() -> None:
    d = rcpt(BOB, mail(result="temperror"))
    assert d.reply is not None and not d.reply.permanent
    assert (d.reply.code, d.reply.status) == (451, "4.7.24")


@pytest.mark.parametrize(
    ("client", "results", "entry"),
    [
        ("198.51.100.7", {}, "198.51.100.0/24"),
        ("::ffff:198.51.100.7", {}, "198.51.100.0/24"),
        ("2001:db8:f:1::9", {}, "2001:db8:f::/48"),
        ("203.0.113.5", {"alumni.example": "pass"}, "alumni.example"),
        ("203.0.113.5", {"alumni.example": "fail"}, ""),
        ("203.0.113.5", {}, ""),  # a domain not checked does not match
        ("", {}, ""),
    ],
)
def test_match_forwarder(client: str, results: dict[str, str], entry: str) -> None:
    assert policy.match_forwarder(ALUMNI.trusted, client, results) == policy.Trust(entry)


def test_a_forwarder_domain_is_matched_in_its_checked_form() -> None:
    entries = ("Alumni.Example.", "192.0.2.1")
    assert policy.forwarder_domains(entries) == ("alumni.example",)
    assert policy.forwarder_domain("192.0.2.1") == ""
    assert policy.match_forwarder(entries, "203.0.113.5", {"alumni.example": "pass"}) == (
        policy.Trust("Alumni.Example.")
    )
    unsure = policy.match_forwarder(entries, "203.0.113.5", {"alumni.example": "temperror"})
    assert unsure == policy.Trust("", unsure=True)


@pytest.mark.parametrize(
    ("helo", "domain", "within"),
    [
        ("alumni.example", "alumni.example", True),
        ("MX1.Alumni.Example.", "alumni.example", True),
        ("evilalumni.example", "alumni.example", False),
        ("alumni.example.evil", "alumni.example", False),
        ("", "alumni.example", False),
        ("alumni.example", "", False),
    ],
)
def test_helo_within(helo: str, domain: str, within: bool) -> None:
    assert policy.helo_within(helo, domain) is within


def test_a_trusted_forwarder_skips_the_verdict_for_its_recipient_only() -> None:
    m = mail(result="fail")
    trust = policy.match_forwarder(ALUMNI.trusted, "203.0.113.5", {"alumni.example": "pass"})
    d = rcpt(ALUMNI, m, trust=trust)
    assert d.action == "forward"
    assert d.spf_note == "not enforced: trusted forwarder alumni.example of a recipient"
    # Still U: a trusted forwarder verifies nothing about the sender.
    assert m.state == "U" and d.sender_rewrite == "srs"
    # Another recipient, or the same one from elsewhere: refused.
    carol = Forward("carol@fwd.example", ("carol@inner.example",))
    assert rcpt(carol, m, trust=policy.Trust()).reply is not None
    assert rcpt(ALUMNI, m, trust=policy.Trust()).reply is not None
    assert rcpt(ALUMNI, m).reply is not None
    # Every refused result, the temporary ones too.
    assert rcpt(ALUMNI, mail(result="temperror"), trust=trust).action == "forward"


def test_a_forwarder_check_that_could_not_complete_turns_a_refusal_into_a_451() -> None:
    unsure = policy.Trust(unsure=True)
    d = rcpt(ALUMNI, mail(result="fail"), trust=unsure)
    assert d.reply is replies.SPF_TEMPERROR
    # Nothing to turn when the mail is accepted anyway.
    assert rcpt(ALUMNI, mail(result="softfail"), trust=unsure).action == "forward"


def test_the_authentication_results_say_why_a_refused_result_was_let_in() -> None:
    m = mail(result="fail")
    trust = policy.Trust("alumni.example")
    bob = rcpt(ALUMNI, m, trust=trust)
    carol_fwd = Forward(
        "carol@fwd.example", ("carol@inner.example",), spf_actions=(("fail", "accept"),)
    )
    carol = policy.decide_rcpt_forwarding(S, "<carol@fwd.example>", RcptInfo(carol_fwd), m, [])
    d = policy.decide_eom(S, tx(m, bob, carol))
    assert dict(d.add_headers)[policy.AUTH_RESULTS_HEADER] == (
        "mx.fwd.example; spf=fail smtp.mailfrom=alice@example.org"
        " (not enforced: trusted forwarder alumni.example of a recipient)"
        " (not enforced: a recipient's own policy accepts spf=fail)"
    )
    # Every copy carries the header: it names no recipient, and a reason
    # shared by several recipients comes once.
    dave_fwd = replace(carol_fwd, rcpt="dave@fwd.example", targets=("dave@inner.example",))
    dave = policy.decide_rcpt_forwarding(S, "<dave@fwd.example>", RcptInfo(dave_fwd), m, [])
    value = policy.auth_results_value(tx(m, bob, carol, dave))
    assert value.count("a recipient's own policy accepts spf=fail") == 1
    assert "@fwd.example" not in value and "@inner.example" not in value
    # A comment holds no unquoted parenthesis or backslash.
    odd = replace(bob, spf_note="x (y) \\ z")
    value = policy.auth_results_value(tx(m, odd))
    assert value.endswith(" (x \\(y\\) \\\\ z)")


# -- per-recipient policy: the envelope sender ----------------------------------------


@pytest.mark.parametrize(
    ("own", "rewrite", "state", "permits", "expected"),
    [
        ("", "always", "B", False, "srs"),
        ("", "when-needed", "B", True, "keep"),
        ("", "when-needed", "B", False, "srs"),
        ("srs", "when-needed", "B", True, "srs"),
        ("when-needed", "always", "B", True, "keep"),
        ("when-needed", "always", "B", False, "srs"),  # no srs.outbound_ips: as "srs"
        ("none", "always", "B", False, "keep"),
        # U mail is always rewritten: its bounce must come back to be held.
        ("none", "always", "U", False, "srs"),
        ("when-needed", "always", "U", True, "srs"),
        ("", "when-needed", "U", True, "srs"),
    ],
)
def test_sender_rewrite_per_recipient(
    own: str, rewrite: str, state: str, permits: bool, expected: str
) -> None:
    s = settings(rewrite=rewrite)
    m = policy.decide_mail(
        s, "alice@example.org", "h", spf("pass" if state == "B" else "softfail"), now=NOW
    )
    assert m.state == state
    fwd = replace(BOB, rewrite=own)
    assert policy.sender_rewrite(s, m, fwd, permits) == expected
    assert policy.needs_sender_permits(s, m, fwd) is (
        state == "B"
        and (own or ("when-needed" if rewrite == "when-needed" else "srs")) == "when-needed"
    )
    d = rcpt(fwd, m, s, sender_permits_us=permits)
    assert d.action == "forward" and d.sender_rewrite == expected


def test_nothing_to_rewrite_keeps_the_sender() -> None:
    null = policy.decide_mail(
        S, "", "mx.example.org", spf("pass", "mx.example.org", "helo"), now=NOW
    )
    assert policy.sender_rewrite(S, null, replace(BOB, rewrite="srs")) == "keep"
    ours = mail("carol@alias.example")
    assert policy.sender_rewrite(S, ours, BOB) == "keep"
    assert not policy.needs_sender_permits(settings(rewrite="when-needed"), ours, BOB)


def test_rewrite_choice_says_where_it_comes_from() -> None:
    assert policy.rewrite_choice(S, BOB) == ("srs", "global")
    assert policy.rewrite_choice(settings(rewrite="when-needed"), None) == ("when-needed", "global")
    assert policy.rewrite_choice(S, replace(BOB, rewrite="none")) == ("none", "recipient")


def test_a_kept_sender_is_forwarded_as_it_came_without_records() -> None:
    m = mail()
    keep = replace(forward_rcpt(), forward=replace(BOB, rewrite="none"), sender_rewrite="keep")
    d = policy.decide_eom(S, tx(m, keep))
    assert d.chgfrom is None and d.records == ()
    assert d.addrcpt[0][0] == "<bob@inner.example>"
    assert dict(d.log)["action"] == "forward" and "srs" not in dict(d.log)
    # Decided at RCPT, it is what end of message applies, whatever the
    # global rule.
    srs = replace(forward_rcpt(), sender_rewrite="srs")
    wn = settings(rewrite="when-needed")
    d = policy.decide_eom(wn, tx(m, srs))
    assert d.chgfrom == f"<{m.srs_sender}>" and len(d.records) == 1


def test_recipients_whose_envelope_senders_differ_do_not_share_a_transaction() -> None:
    keep = replace(forward_rcpt(), sender_rewrite="keep")
    srs = replace(forward_rcpt(), sender_rewrite="srs")
    split = policy.decide_rcpt_split([keep], srs)
    assert split.reply is replies.SPLIT_TRANSACTION and split.forward == BOB
    assert policy.decide_rcpt_split([srs], keep).reply is replies.SPLIT_TRANSACTION
    passed = RcptDecision("<x@other.example>", "pass")
    assert policy.decide_rcpt_split([passed, keep], srs).reply is replies.SPLIT_TRANSACTION
    # Same sender, a passed recipient, or an undecided one: one transaction.
    assert policy.decide_rcpt_split([keep], keep) is keep
    assert policy.decide_rcpt_split([srs], passed) is passed
    assert policy.decide_rcpt_split([keep], forward_rcpt()).action == "forward"


def test_a_rewrite_none_recipient_and_another_get_the_452_split_from_rcpt() -> None:
    m = mail()
    plain = rcpt(BOB, m)
    kept = policy.decide_rcpt_forwarding(
        S,
        "<bob2@fwd.example>",
        RcptInfo(replace(BOB, rcpt="bob2@fwd.example", rewrite="none")),
        m,
        [],
    )
    assert (plain.sender_rewrite, kept.sender_rewrite) == ("srs", "keep")
    assert policy.decide_rcpt_split([plain], kept).reply is replies.SPLIT_TRANSACTION
    # For U mail both are rewritten: no split.
    u = mail(result="softfail")
    kept_u = policy.decide_rcpt_forwarding(
        S, "<bob2@fwd.example>", RcptInfo(replace(BOB, rewrite="none")), u, []
    )
    assert policy.decide_rcpt_split([rcpt(BOB, u)], kept_u) is kept_u
