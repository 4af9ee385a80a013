"""Forwarding end to end: a client, BORDER Postfix with fwdmilter, INNER, the sink.

The module runs once per store backend: the embedded SQLite file and a
private Redis server.

Every test makes its own forwarding addresses and senders (unique tokens),
so the module shares one BORDER and one milter. Clients connect from
127.0.0.2, an outsider to BORDER and the milter (SPF is checked); the
zones' SPF records allow 127.0.0.0/8 where they pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from fwdmilter import replies
from srs import SRS
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import OUTSIDE, BorderFactory, MailWorld
from tests.harness.peers import MailSRS
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.redis import RedisServer
from tests.harness.smtp import make_message, unique

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def fm(
    request: pytest.FixtureRequest,
    mail: MailWorld,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FwdMilter]:
    workdir = tmp_path_factory.mktemp(f"forwarding-{request.param}")
    redis = RedisServer(workdir / "redis") if request.param == "redis" else None
    milter = FwdMilter(
        runtime.socket(f"fwd-forwarding-{request.param}"),
        workdir / "milter",
        dns_port=mail.dns.port,
        store_url=redis.url if redis else None,
    )
    border = border_factory(milter=milter.spec, start=False)
    milter.serve(border)
    border.start()
    milter.border = border  # type: ignore[attr-defined]
    yield milter
    milter.stop()
    if redis is not None:
        redis.stop()


@pytest.fixture(scope="module")
def border(fm: FwdMilter) -> PostfixInstance:
    b: PostfixInstance = fm.border  # type: ignore[attr-defined]
    return b


def forwarding(fm: FwdMilter, target_user: str = "alice", *opts: str) -> tuple[str, str, str]:
    """A new forwarding address to a new INNER mailbox: (rcpt, target, token)."""
    tok = unique()
    rcpt = f"f{tok}@fwd.example"
    target = f"{target_user}+{tok}@inner.example"
    fm.fwdctl("forward", "set", rcpt, target, *opts)
    return rcpt, target, tok


def test_spf_pass_is_forwarded_with_an_srs_sender_mail_srs_reverses(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld, mail_srs: MailSRS
) -> None:
    rcpt, target, tok = forwarding(fm)
    sender = f"s{tok}@pass.example"
    t = mail.send_from_outside(border, sender, [rcpt], tok)
    assert t.accepted, t
    msg = mail.wait_for(target)
    assert msg.mail_from.startswith("SRS0=") and msg.mail_from.endswith("@fwd.example")
    assert mail_srs.reverse(msg.mail_from, [fm.secret]) == sender
    assert msg.email["Fwdmilter-Trace"].startswith("fwd.example; id=")
    assert msg.email["Authentication-Results"] == (
        f"border.fwd.example; spf=pass smtp.mailfrom={sender}"
    )
    assert msg.rcpt(target).orcpt == f"rfc822;{rcpt}"
    assert rcpt not in msg.rcpt_addresses
    fm.wait_log(
        rf"queue_id=\S+ client=unknown\[{OUTSIDE}\] .*sender=<{sender}> "
        r".*spf=pass state=B stage=eom action=forward"
    )


def test_spf_fail_is_refused_at_rcpt_and_nothing_is_delivered(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    # The verdict waits for the recipient (its own policy may differ), as
    # Postfix's smtpd_delay_reject does: MAIL FROM is accepted.
    rcpt, target, tok = forwarding(fm)
    t = mail.send(
        border, f"s{tok}@fail.example", [rcpt], source_ip=OUTSIDE, helo="helo.pass.example"
    )
    assert t.mail.ok, t
    assert t.rcpt(rcpt).said(replies.SPF_FAIL, completed=True), t
    assert "fail.example" in str(t.rcpt(rcpt))
    fm.wait_log(rf"sender=<s{tok}@fail.example> rcpt=<{rcpt}> .*stage=rcpt action=reject")
    mail.assert_nothing_for(target)


def test_dns_timeout_answers_451(fm: FwdMilter, border: PostfixInstance, mail: MailWorld) -> None:
    rcpt, _target, tok = forwarding(fm)
    started = time.monotonic()
    t = mail.send(border, f"s{tok}@temperror.example", [rcpt], source_ip=OUTSIDE)
    assert t.rcpt(rcpt).said(replies.SPF_TEMPERROR, completed=True), t
    assert time.monotonic() - started < 10


def test_unknown_forwarding_recipient_is_refused(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    tok = unique()
    t = mail.send(border, f"s{tok}@pass.example", [f"nobody{tok}@fwd.example"], source_ip=OUTSIDE)
    assert t.rcpt(f"nobody{tok}@fwd.example").said(replies.UNKNOWN_RECIPIENT), t


def test_moved_recipient_is_refused_with_the_new_address(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    rcpt, _, tok = forwarding(fm)
    fm.fwdctl("forward", "delete", rcpt, "--moved-to", f"new{tok}@elsewhere.example")
    t = mail.send(border, f"s{tok}@pass.example", [rcpt], source_ip=OUTSIDE)
    reply = t.rcpt(rcpt)
    moved = replies.MOVED_RECIPIENT
    assert reply.said(moved.with_text(moved.text.format(moved_to=f"new{tok}@elsewhere.example"))), t


def test_forged_and_expired_srs_bounces_are_refused(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    tok = unique()
    ours = SRS([fm.secret], "fwd.example")
    forged = SRS(["not our secret"], "fwd.example").forward(f"s{tok}@pass.example")
    expired = ours.forward(f"s{tok}@pass.example", now=time.time() - 30 * 86400)
    t = mail.send(border, "", [forged, expired], source_ip=OUTSIDE, helo="helo.pass.example")
    assert t.rcpt(forged).said(replies.SRS_FORGED), t
    assert t.rcpt(expired).said(replies.SRS_EXPIRED), t
    mail.assert_nothing_for(f"s{tok}@pass.example")


def test_bounce_generated_by_border_reaches_the_original_sender(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    # INNER refuses "ghost" at RCPT: BORDER's own bounce daemon makes the
    # bounce, which reaches the milter through non_smtpd_milters.
    rcpt, target, tok = forwarding(fm, "ghost")
    sender = f"s{tok}@pass.example"
    t = mail.send_from_outside(border, sender, [rcpt], tok)
    assert t.accepted, t
    bounce = mail.wait_for(sender)
    assert bounce.mail_from == ""
    assert bounce.listener == "internet"
    assert target in bounce.data.decode("utf-8", "replace")
    fm.wait_log(rf"sender=<> rcpts=<SRS0=[^>]*{tok}@fwd.example> .*action=reverse")


def test_bounce_sent_by_inner_reaches_the_original_sender(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    # INNER accepts "broken", fails to deliver, and mails its own bounce back.
    rcpt, _target, tok = forwarding(fm, "broken")
    sender = f"s{tok}@pass.example"
    t = mail.send_from_outside(border, sender, [rcpt], tok)
    assert t.accepted, t
    bounce = mail.wait_for(sender)
    assert bounce.mail_from == ""
    assert "mx.inner.example" in bounce.data.decode("utf-8", "replace")


def test_null_sender_mail_is_forwarded_with_null_sender(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    rcpt, target, tok = forwarding(fm)
    t = mail.send_from_outside(border, "", [rcpt], tok)
    assert t.accepted, t
    msg = mail.wait_for(target)
    assert msg.mail_from == ""
    assert msg.email["Authentication-Results"] == (
        "border.fwd.example; spf=pass smtp.helo=helo.pass.example"
    )


def test_a_loop_is_refused(fm: FwdMilter, border: PostfixInstance, mail: MailWorld) -> None:
    rcpt, target, tok = forwarding(fm)
    sender = f"s{tok}@pass.example"
    looped = "".join(
        f"Fwdmilter-Trace: fwd.example; id=x{i}; by=border.fwd.example\r\n" for i in range(3)
    )
    t = mail.send(
        border,
        sender,
        [rcpt],
        looped.encode() + make_message(sender, rcpt, subject=tok),
        source_ip=OUTSIDE,
        helo="helo.pass.example",
    )
    assert t.data.said(replies.LOOP), t
    mail.assert_nothing_for(target)


def test_mail_for_other_domains_passes_untouched(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    tok = unique()
    sender, rcpt = f"s{tok}@pass.example", f"alice+{tok}@inner.example"
    t = mail.send_from_outside(border, sender, [rcpt], tok)
    assert t.accepted, t
    msg = mail.wait_for(rcpt)
    assert msg.mail_from == sender
    assert "Fwdmilter-Trace" not in msg.email
    assert msg.email["Authentication-Results"].endswith(f"spf=pass smtp.mailfrom={sender}")


def test_softfail_is_accepted_and_forwarded_as_unbouncable(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    rcpt, target, tok = forwarding(fm)
    sender = f"s{tok}@softfail.example"
    t = mail.send_from_outside(border, sender, [rcpt], tok)
    assert t.accepted, t
    msg = mail.wait_for(target)
    assert msg.mail_from.startswith("SRS0=")
    fm.wait_log(rf"sender=<{sender}> .*spf=softfail state=U stage=eom action=forward")


def test_fwdctl_srs_commands_agree_with_the_milter(fm: FwdMilter) -> None:
    out = fm.fwdctl("srs", "forward", "alice@example.org").stdout.strip()
    assert out == SRS([fm.secret], "fwd.example").forward("alice@example.org")
    back = fm.fwdctl("srs", "reverse", stdin=out + "\n").stdout.strip()
    assert back == "alice@example.org"
    bad = fm.fwdctl("srs", "reverse", "SRS0=AAAA=AA=x.example=y@fwd.example", check=False)
    assert bad.returncode == 1
    assert "BadHash" in bad.stderr


def test_fwdctl_forward_table_commands(fm: FwdMilter) -> None:
    rcpt, target, _tok = forwarding(
        fm, "carol", "--contact", "c@mobile.example", "--null-sender", "hold"
    )
    shown = json.loads(fm.fwdctl("forward", "show", rcpt, "--json").stdout)
    assert (shown["target"], shown["contact"], shown["null_sender"], shown["active"]) == (
        target,
        "c@mobile.example",
        "hold",
        True,
    )
    listed = json.loads(fm.fwdctl("forward", "list", "--json").stdout)
    assert rcpt in [f["rcpt"] for f in listed]
    assert fm.fwdctl("forward", "delete", rcpt).returncode == 0
    missing = fm.fwdctl("forward", "show", rcpt, check=False)
    assert missing.returncode == 1 and "no such forwarding address" in missing.stderr


def test_fwdctl_refuses_a_target_that_is_itself_a_forwarding_address(fm: FwdMilter) -> None:
    tok = unique()
    done = fm.fwdctl("forward", "set", f"a{tok}@fwd.example", f"b{tok}@fwd.example", check=False)
    assert done.returncode == 1
    assert "is itself in forwarding.domains" in done.stderr
    assert fm.fwdctl("forward", "show", f"a{tok}@fwd.example", check=False).returncode == 1
