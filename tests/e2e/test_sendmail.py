"""Forwarding end to end through a real Sendmail 8.17 with fwdmilter.

The scenarios of test_forwarding.py, and the held-mail life cycle, through
Sendmail (tests.harness.sendmail): a client, Sendmail with fwdmilter on both
of its daemons, INNER, the sink. fwd.example routes back into Sendmail's
loop-back daemon, so that the bounces Sendmail generates for forwarded mail
pass the milter as SMTP input (docs/sendmail.md). fwdctl reads and deletes
quarantined mail through fwdmilter.mta.sendmail, the adapter under test.

Every test makes its own forwarding addresses and senders (unique tokens),
so the module shares one Sendmail and one milter. Clients connect from
127.0.0.2, an outsider to Sendmail and the milter (SPF is checked).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fwdmilter import replies
from fwdmilter.mta.sendmail import Sendmail, parse_control_file
from srs import SRS
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import OUTSIDE, MailWorld, SendmailFactory
from tests.harness.peers import MailSRS
from tests.harness.postfix import RuntimeDir
from tests.harness.sendmail import SendmailInstance
from tests.harness.smtp import Client, Reply, make_message, raw_envelope, said, unique

pytestmark = pytest.mark.e2e
HELO = "helo.pass.example"
#: Set to a folder to keep the queue files of the quarantined messages
#: (tests/data/sendmail holds such a capture, for tests/unit/test_sendmail_queue.py).
CAPTURE = os.environ.get("FWDMILTER_CAPTURE_SENDMAIL_QUEUE", "")


def capture(sm: SendmailInstance, queue_id: str, name: str) -> None:
    """Copy a quarantined message's hf and df files to $FWDMILTER_CAPTURE_SENDMAIL_QUEUE."""
    if not CAPTURE:
        return
    dest = Path(CAPTURE)
    dest.mkdir(parents=True, exist_ok=True)
    for kind in ("hf", "df"):
        shutil.copyfile(sm.queue_dir / f"{kind}{queue_id}", dest / f"{name}.{kind}")


@pytest.fixture(scope="module")
def sendmail(
    mail: MailWorld,
    runtime: RuntimeDir,
    sendmail_factory: SendmailFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SendmailInstance]:
    socket_path = runtime.socket("fwd-sendmail")
    sm = sendmail_factory(milter=socket_path, start=False)
    fm = FwdMilter(
        socket_path,
        tmp_path_factory.mktemp("fwdmilter-sendmail"),
        dns_port=mail.dns.port,
        hostname=sm.hostname,
        settings=sm.milter_settings(),
    )
    fm.serve()
    try:
        sm.start()
        sm.fm = fm  # type: ignore[attr-defined]
        yield sm
    finally:
        fm.stop()


@pytest.fixture(scope="module")
def fm(sendmail: SendmailInstance) -> FwdMilter:
    f: FwdMilter = sendmail.fm  # type: ignore[attr-defined]
    return f


def forwarding(fm: FwdMilter, target_user: str = "alice", *opts: str) -> tuple[str, str, str]:
    """A new forwarding address to a new INNER mailbox: (rcpt, target, token)."""
    tok = unique()
    rcpt = f"f{tok}@fwd.example"
    target = f"{target_user}+{tok}@inner.example"
    fm.fwdctl("forward", "set", rcpt, target, *opts)
    return rcpt, target, tok


def send(mail: MailWorld, sm: SendmailInstance, sender: str, rcpt: str, tok: str, **kw: Any) -> Any:
    return mail.send(
        sm,
        sender,
        [rcpt],
        kw.pop("message", None) or make_message(sender or "MAILER-DAEMON@pass.example", rcpt, tok),
        source_ip=OUTSIDE,
        helo=HELO,
        **kw,
    )


def rcpt_reply(sm: SendmailInstance, sender: str, rcpt: str) -> Reply:
    """What Sendmail answers to RCPT TO:<rcpt> after MAIL FROM:<sender>; no message is sent."""
    with Client(sm.port, source_ip=OUTSIDE, helo=HELO) as c:
        assert c.command("MAIL", f"FROM:<{sender}>").ok
        reply = c.command("RCPT", f"TO:<{rcpt}>")
        c.command("RSET")
    return reply


def held(fm: FwdMilter, target: str) -> list[dict[str, Any]]:
    return fm.held("--target", target)


def hold_u_bounce(
    fm: FwdMilter, sm: SendmailInstance, mail: MailWorld, target_user: str = "ghost"
) -> tuple[str, str, str, dict[str, Any]]:
    """Forward a U (softfail) message to a target whose bounce comes back;
    wait until the bounce is quarantined. (rcpt, target, sender, held entry)."""
    rcpt, target, tok = forwarding(fm, target_user)
    sender = f"s{tok}@softfail.example"
    t = send(mail, sm, sender, rcpt, tok)
    assert t.accepted, t
    fm.wait_log(rf"sender=<> rcpts=<SRS0=[^>]*{tok}@fwd.example> .*action=hold")
    entries = held(fm, target)
    assert len(entries) == 1, entries
    return rcpt, target, sender, entries[0]


# -- MAIL FROM and RCPT TO -------------------------------------------------------------


def test_spf_fail_is_refused_at_rcpt_and_nothing_is_delivered(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    rcpt, target, tok = forwarding(fm)
    t = send(mail, sendmail, f"s{tok}@fail.example", rcpt, tok)
    assert t.mail.ok, t
    assert t.rcpt(rcpt).said(replies.SPF_FAIL, completed=True), t
    assert "fail.example" in str(t.rcpt(rcpt))
    # Sendmail names the transaction at MAIL FROM: the milter logs the queue id.
    line = fm.wait_log(rf"sender=<s{tok}@fail.example> rcpt=<{rcpt}> .*stage=rcpt action=reject")[0]
    assert re.match(r"queue_id=[0-9A-Za-z]{14} ", line), line
    sendmail.wait_log(rf"Milter: to=<{rcpt}>, reject=550 5.7.23")
    mail.assert_nothing_for(target)


def test_dns_timeout_answers_451(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    rcpt, _target, tok = forwarding(fm)
    started = time.monotonic()
    t = send(mail, sendmail, f"s{tok}@temperror.example", rcpt, tok)
    assert t.rcpt(rcpt).said(replies.SPF_TEMPERROR, completed=True), t
    assert time.monotonic() - started < 10


def test_unknown_forwarding_recipient_is_refused(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    tok = unique()
    t = send(mail, sendmail, f"s{tok}@pass.example", f"nobody{tok}@fwd.example", tok)
    assert t.rcpt(f"nobody{tok}@fwd.example").said(replies.UNKNOWN_RECIPIENT), t


def test_forged_and_expired_srs_bounces_are_refused(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    tok = unique()
    ours = SRS([fm.secret], "fwd.example")
    forged = SRS(["not our secret"], "fwd.example").forward(f"s{tok}@pass.example")
    expired = ours.forward(f"s{tok}@pass.example", now=time.time() - 30 * 86400)
    t = mail.send(sendmail, "", [forged, expired], source_ip=OUTSIDE, helo=HELO)
    assert t.rcpt(forged).said(replies.SRS_FORGED), t
    assert "signature" in str(t.rcpt(forged))
    assert t.rcpt(expired).said(replies.SRS_EXPIRED), t
    mail.assert_nothing_for(f"s{tok}@pass.example")


# -- forwarding --------------------------------------------------------------------------


def test_spf_pass_is_forwarded_with_an_srs_sender_mail_srs_reverses(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld, mail_srs: MailSRS
) -> None:
    rcpt, target, tok = forwarding(fm)
    sender = f"s{tok}@pass.example"
    t = send(mail, sendmail, sender, rcpt, tok)
    assert t.accepted, t
    msg = mail.wait_for(target)
    assert msg.mail_from.startswith("SRS0=") and msg.mail_from.endswith("@fwd.example")
    assert mail_srs.reverse(msg.mail_from, [fm.secret]) == sender
    assert msg.email["Fwdmilter-Trace"].startswith("fwd.example; id=")
    assert msg.email["Authentication-Results"] == (
        f"{sendmail.hostname}; spf=pass smtp.mailfrom={sender}"
    )
    # addrcpt with ESMTP parameters (SMFIF_ADDRCPT_PAR) reached Sendmail.
    assert msg.rcpt(target).orcpt == f"rfc822;{rcpt}"
    assert rcpt not in msg.rcpt_addresses
    # The queue id the milter logs is Sendmail's, as the client was told.
    fm.wait_log(
        rf"queue_id={t.queue_id} client=unknown\[{OUTSIDE}\] .*sender=<{sender}> "
        r".*spf=pass state=B stage=eom action=forward"
    )
    sendmail.wait_log(rf"{t.queue_id}: Milter \(fwdmilter\) chgfrom: <SRS0=")
    assert not sendmail.problems(), sendmail.problems()


def test_null_sender_mail_is_forwarded_with_null_sender(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    rcpt, target, tok = forwarding(fm)
    t = send(mail, sendmail, "", rcpt, tok)
    assert t.accepted, t
    msg = mail.wait_for(target)
    assert msg.mail_from == ""


def test_a_loop_is_refused(fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld) -> None:
    rcpt, target, tok = forwarding(fm)
    sender = f"s{tok}@pass.example"
    looped = "".join(
        f"Fwdmilter-Trace: fwd.example; id=x{i}; by={sendmail.hostname}\r\n" for i in range(3)
    )
    message = looped.encode() + make_message(sender, rcpt, subject=tok)
    t = send(mail, sendmail, sender, rcpt, tok, message=message)
    assert t.data is not None and t.data.said(replies.LOOP), t
    mail.assert_nothing_for(target)


def test_mail_for_other_domains_passes_untouched(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    tok = unique()
    sender, rcpt = f"s{tok}@pass.example", f"alice+{tok}@inner.example"
    t = send(mail, sendmail, sender, rcpt, tok)
    assert t.accepted, t
    msg = mail.wait_for(rcpt)
    assert msg.mail_from == sender
    assert "Fwdmilter-Trace" not in msg.email


# -- bounces -------------------------------------------------------------------------------


def test_bounce_generated_by_sendmail_reaches_the_original_sender(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    # INNER refuses "ghost" at RCPT: Sendmail makes the bounce itself and
    # sends it to the SRS sender, at fwd.example, which its mailertable routes
    # to its own loop-back daemon: the milter sees the bounce as SMTP input.
    rcpt, target, tok = forwarding(fm, "ghost")
    sender = f"s{tok}@pass.example"
    t = send(mail, sendmail, sender, rcpt, tok)
    assert t.accepted, t
    bounce = mail.wait_for(sender)
    assert bounce.mail_from == ""
    assert bounce.listener == "internet"
    text = bounce.data.decode("utf-8", "replace")
    assert target in text and f"Reporting-MTA: dns; {sendmail.hostname}" in text
    line = fm.wait_log(rf"sender=<> rcpts=<SRS0=[^>]*{tok}@fwd.example> .*action=reverse")[0]
    bounce_id = line.split()[0].removeprefix("queue_id=")
    sendmail.wait_log(rf"{bounce_id}: from=<>, .*daemon=MTA-loop")
    assert not [line for line in fm.log().splitlines() if tok in line and "action=hold" in line]


def test_bounce_sent_by_inner_reaches_the_original_sender(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    rcpt, _target, tok = forwarding(fm, "broken")
    sender = f"s{tok}@pass.example"
    t = send(mail, sendmail, sender, rcpt, tok)
    assert t.accepted, t
    bounce = mail.wait_for(sender)
    assert bounce.mail_from == ""
    assert "mx.inner.example" in bounce.data.decode("utf-8", "replace")


# -- held mail -------------------------------------------------------------------------------


def test_bounce_of_unverified_mail_is_quarantined_in_sendmail_not_sent(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    _rcpt, target, sender, entry = hold_u_bounce(fm, sendmail, mail)
    qid = entry["queue_id"]
    capture(sendmail, qid, "sendmail-bounce")
    assert entry["state"] == "H" and entry["sender"] == sender
    assert entry["host"] == sendmail.hostname
    # Quarantined in Sendmail: an hf file, listed by mailq -qQ, never delivered.
    assert qid in sendmail.quarantined(), sendmail.explain()
    listing = sendmail.mailq(quarantined=True)
    assert qid in listing and "QUARANTINE: fwdmilter: bounce held" in listing, listing
    assert qid not in sendmail.mailq()
    sendmail.wait_log(rf"{qid}: .*stat=quarantined")
    # The adapter sees what mailq sees.
    adapter = Sendmail(str(sendmail.queue_dir), str(sendmail.cf))
    mine = [m for m in adapter.held() if m.queue_id == qid]
    assert len(mine) == 1 and mine[0].sender == ""
    assert mine[0].reason.startswith("fwdmilter: bounce held, sender not verified: ")
    assert "5.1.1" in mine[0].reason
    bounce = adapter.read(qid)
    assert b"Content-Type: multipart/report" in bounce
    assert b"Return-Path" not in bounce.split(b"\n\n", 1)[0]  # ?P?: local mailers only
    assert target.encode() in bounce
    mail.assert_nothing_for(sender)


def test_held_target_defers_unverified_mail_but_takes_verified_mail(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    rcpt, _target, _sender, _entry = hold_u_bounce(fm, sendmail, mail)
    tok = unique()
    refused = rcpt_reply(sendmail, f"u{tok}@softfail.example", rcpt)
    assert refused.said(replies.TARGET_HELD), refused
    assert rcpt_reply(sendmail, f"b{tok}@pass.example", rcpt).startswith("250"), rcpt


def test_requeue_delivers_once_the_target_is_fixed_and_the_notice_releases_it(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    # "final" is behind a mailbox server without DSN, so INNER answers the
    # requeued message's NOTIFY=SUCCESS with a "relayed" notice.
    rcpt, target, tok = forwarding(fm, "final")
    sender = f"s{tok}@softfail.example"
    with mail.sink.refusing(target):
        t = send(mail, sendmail, sender, rcpt, tok)
        assert t.accepted, t
        # INNER accepts, its next hop refuses, INNER bounces to the SRS sender:
        # the bounce comes to Sendmail over SMTP and is quarantined.
        fm.wait_log(rf"sender=<> rcpts=<SRS0=[^>]*{tok}@fwd.example> .*action=hold")
        (entry,) = held(fm, target)
        qid = entry["queue_id"]
        assert qid in sendmail.quarantined()
        capture(sendmail, qid, "postfix-bounce")
        assert rcpt_reply(sendmail, f"u{tok}@softfail.example", rcpt).said(replies.TARGET_HELD)
    # The downstream is fixed; the admin requeues.
    out = fm.fwdctl("held", "requeue", "--target", target)
    assert f"submitted to {target}" in out.stdout, out
    assert qid not in sendmail.queue_files(), sendmail.explain()  # hf and df deleted
    got = mail.wait_for(target, match=lambda m: m.email["Subject"] == tok)
    assert got.mail_from.startswith("SRS0=") and got.mail_from.endswith("@fwd.example")
    assert got.rcpt(target).params.get("NOTIFY") is None  # "final" speaks no DSN
    assert b"Hello." in got.data
    # INNER's "relayed" notice comes back through Sendmail: the entry is released.
    fm.wait_log(rf"sender=<> rcpts=<{re.escape(got.mail_from)}> .*action=discard")
    deadline = time.monotonic() + 15
    while held(fm, target) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert held(fm, target) == []
    assert rcpt_reply(sendmail, f"u{tok}@softfail.example", rcpt).startswith("250")
    mail.assert_nothing_for(sender)


def test_requeue_of_a_bounce_sendmail_made_itself(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    # A target on the internet refuses at RCPT: Sendmail's own bounce comes
    # back through the loop-back daemon and is quarantined; requeue takes the
    # message out of it (read() of Sendmail's queue files) once fixed.
    tok = unique()
    rcpt, target = f"f{tok}@fwd.example", f"t{tok}@target.example"
    fm.fwdctl("forward", "set", rcpt, target)
    sender = f"s{tok}@softfail.example"
    with mail.sink.refusing(target):
        t = send(mail, sendmail, sender, rcpt, tok)
        assert t.accepted, t
        fm.wait_log(rf"sender=<> rcpts=<SRS0=[^>]*{tok}@fwd.example> .*action=hold")
    (entry,) = held(fm, target)
    assert entry["queue_id"] in sendmail.quarantined()
    assert entry["reason"].startswith("550 5.1.1 Recipient address rejected")
    fm.fwdctl("held", "requeue", "--target", target)
    got = mail.wait_for(target, listener="internet")
    assert got.email["Subject"] == tok
    # Sendmail's bounce returns the message with a Return-Path; Sendmail takes
    # it out again as it relays the requeued message (H?P?: local mailers only).
    assert "Return-Path" not in got.email
    assert got.rcpt(target).params.get("NOTIFY") == "SUCCESS,FAILURE"
    assert entry["queue_id"] not in sendmail.queue_files()
    (requeued,) = held(fm, target)
    assert requeued["state"] == "R"  # the internet sink sends no delivery notice
    mail.assert_nothing_for(sender)


def test_expiry_deletes_the_quarantined_bounce(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    _rcpt, target, sender, entry = hold_u_bounce(fm, sendmail, mail)
    qid = entry["queue_id"]
    assert qid in sendmail.quarantined()
    out = fm.fwdctl("held", "expire", "--now", str(time.time() + 31 * 86400))
    assert f"{target} {sendmail.hostname}/{qid}: discarded" in out.stdout, out
    assert qid not in sendmail.queue_files(), sendmail.explain()
    assert held(fm, target) == []
    mail.assert_nothing_for(sender)


def test_null_sender_hold_keeps_the_message_byte_for_byte_for_requeue(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    # A recipient that wants bounces held: Sendmail quarantines the message
    # itself, and requeue forwards what read() takes from the queue files:
    # headers with 8-bit bytes Sendmail escapes in its control file, and "$"
    # that is no macro, must come out as they went in.
    rcpt, target, tok = forwarding(fm, "carol", "--null-sender", "hold")
    subject = f"{tok} \u0100\u0080 caf\u00e9 $x ${{y}}"
    message = make_message(
        "MAILER-DAEMON@pass.example",
        rcpt,
        subject=subject,
        headers=[("X-Price", "$5 \u00ff")],
        body="Line one.\n.leading dot\n",
    )
    t = send(mail, sendmail, "", rcpt, tok, message=message, mail_options=["BODY=8BITMIME"])
    assert t.accepted, t
    fm.wait_log(rf"queue_id={t.queue_id} .*action=hold-null-sender")
    assert t.queue_id in sendmail.quarantined()
    capture(sendmail, t.queue_id, "null-sender-8bit")
    control = parse_control_file(t.queue_id, (sendmail.queue_dir / f"hf{t.queue_id}").read_bytes())
    assert control.quarantine.startswith("fwdmilter: null-sender mail held")
    (entry,) = held(fm, target)
    assert entry["state"] == "N"
    fm.fwdctl("held", "requeue", "--target", target)
    got = mail.wait_for(target)
    assert got.mail_from == ""
    assert got.email["Subject"] == subject
    assert got.email["X-Price"] == "$5 \u00ff"
    assert got.data.endswith(b"Line one.\r\n.leading dot\r\n")
    assert t.queue_id not in sendmail.queue_files()
    assert held(fm, target) == []


def test_addresses_that_are_not_utf8_are_refused_for_good(
    fm: FwdMilter, sendmail: SendmailInstance
) -> None:
    """Sendmail passes an 8-bit sender to the milter (pymilter hands the
    octets over as lone surrogates, which no store can take): 553 now, where
    the store's encoding error made 451 on every retry (issue 14). An 8-bit
    recipient Sendmail refuses itself (501 5.1.3, non-printable character)."""
    rcpt, _target, tok = forwarding(fm)
    latin1 = f"caf\xe9{tok}@pass.example".encode("latin-1")
    answers = raw_envelope(sendmail.port, latin1, rcpt.encode())
    assert len(answers) == 1 and said(answers[0], replies.BAD_ADDRESS), answers
    bad_rcpt = f"f{tok}\xff@fwd.example".encode("latin-1")
    answers = raw_envelope(sendmail.port, f"s{tok}@pass.example".encode(), bad_rcpt)
    assert answers[-1].startswith("5"), answers
