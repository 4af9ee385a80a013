"""The harness proves itself: real Postfix, DNS and sink doing what the e2e tests rely on."""

from __future__ import annotations

import fcntl
import socket
import subprocess
import time

import pytest
import spf
from dns.exception import Timeout as DnsTimeout
from dns.resolver import NXDOMAIN

from tests.harness.dns import ZONES, DnsName, DnsServer
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import PostfixInstance
from tests.harness.probe_milter import HEADER, QUARANTINE_MARKER, ProbeMilter
from tests.harness.sink import Sink
from tests.harness.smtp import make_message, send, unique, xtext

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def plain(border_factory: BorderFactory) -> PostfixInstance:
    """A BORDER without any milter."""
    return border_factory(name="plain")


@pytest.fixture(scope="module")
def parking(border_factory: BorderFactory) -> PostfixInstance:
    """A BORDER without any milter that retries deferred mail only when flushed.

    With the harness's short backoff a deferred message moves between the
    deferred and active queues every few seconds; a test that looks at it
    several times needs it to stay put. (A retry too soon after the deferral
    can even find the file still locked by the delivery agent: qmgr then
    parks it for 60 s; see FAST_MAIN and PostfixInstance.flush.)
    """
    return border_factory(
        name="parking", main={"minimal_backoff_time": "1h", "maximal_backoff_time": "1h"}
    )


@pytest.fixture(scope="module")
def probed(border_factory: BorderFactory, probe_milter: ProbeMilter) -> PostfixInstance:
    """A BORDER whose own bounces pass the probe milter; a second port runs it in smtpd too."""
    return border_factory(
        name="probed",
        non_smtpd_milters=probe_milter.spec,
        listeners={"probed-smtpd": {"smtpd_milters": probe_milter.spec}},
        route_bounces=False,
    )


# -- DNS ---------------------------------------------------------------------


@pytest.mark.parametrize("zone", ZONES, ids=lambda z: z.name)
def test_dns_serves_zone(dns: DnsServer, zone: DnsName) -> None:
    res = dns.resolver(lifetime=0.5)
    if zone.silent:
        with pytest.raises(DnsTimeout):
            res.resolve(zone.name, "TXT")
    elif not zone.txt:
        with pytest.raises(NXDOMAIN):
            res.resolve(zone.name, "TXT")
    else:
        answer = res.resolve(zone.name, "TXT")
        assert sorted(b"".join(r.strings).decode() for r in answer) == sorted(zone.txt)


@pytest.mark.parametrize("zone", [z for z in ZONES if z.spf], ids=lambda z: z.name)
def test_spf_result_of_zone(dns: DnsServer, zone: DnsName) -> None:
    # HELO names are checked as the HELO identity (RFC 7208 section 2.3), as
    # for a null sender; the others as MAIL FROM.
    helo = zone.name.startswith("helo.")
    started = time.monotonic()
    with dns.pyspf():
        result, _ = spf.check2(
            i="127.0.0.1",
            s="" if helo else f"someone@{zone.name}",
            h=zone.name if helo else "client.pass.example",
            # querytime bounds the whole check, and when set it overrides
            # timeout (pyspf's default querytime is 20 s).
            querytime=1.0,
        )
    assert result == zone.spf
    assert time.monotonic() - started < 5


# -- sink and client -----------------------------------------------------------


def test_sink_records_envelope_and_refuses_chosen_recipients(sink: Sink) -> None:
    tok = unique()
    good, bad = f"good+{tok}@pass.example", f"bad+{tok}@pass.example"
    utf8 = f"josé+{tok}@pass.example"
    with sink.refusing(bad, "550 5.1.1 nope"):
        t = send(
            sink.port("internet"),
            f"sender+{tok}@pass.example",
            [(good, ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;x+2B{tok}@fwd.example"]), bad, utf8],
            make_message(subject=f"héllo {tok}", body="8bit body: é\n"),
            mail_options=["BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", f"ENVID=env{tok}"],
        )
    assert str(t.rcpt(bad)) == "550 5.1.1 nope"
    assert t.rcpt(good).startswith("250 2.1.5") and t.accepted, t
    msg = sink.wait_for(good, timeout=5)
    assert msg.listener == "internet"
    assert msg.mail_from == f"sender+{tok}@pass.example"
    assert msg.mail_params == {
        "BODY": "8BITMIME",
        "SMTPUTF8": None,
        "RET": "HDRS",
        "ENVID": f"env{tok}",
    }
    assert msg.rcpt_addresses == [good, utf8]
    assert msg.rcpt(good).params["NOTIFY"] == "SUCCESS,FAILURE"
    assert msg.rcpt(good).orcpt == f"rfc822;x+{tok}@fwd.example"
    assert msg.email["Subject"] == f"héllo {tok}"
    assert "8bit body: é".encode() in msg.data
    assert [r.address for r in sink.rejections if tok in r.address] == [bad]


def test_sink_refuse_all_listener_and_pipelining(sink: Sink) -> None:
    tok = unique()
    with socket.create_connection(("127.0.0.1", sink.port("refuse")), timeout=5) as s:
        f = s.makefile("rwb")
        assert f.readline().startswith(b"220 ")
        # Every command in one write (RFC 2920); the replies come in order.
        f.write(
            f"EHLO c.test\r\nMAIL FROM:<a+{tok}@pass.example>\r\n"
            f"RCPT TO:<b+{tok}@inner.example>\r\nDATA\r\nQUIT\r\n".encode()
        )
        f.flush()
        replies = [line.decode().rstrip() for line in f]
        f.close()
    codes = [r[:3] for r in replies if r[3:4] == " "]
    assert codes == ["250", "250", "550", "554", "221"], replies
    assert "250-PIPELINING" in replies and "250-SMTPUTF8" in replies and "250-DSN" in replies


# -- Postfix -------------------------------------------------------------------


def test_message_through_border_and_inner_arrives_with_envelope(
    mail: MailWorld, plain: PostfixInstance
) -> None:
    tok = unique()
    rcpt, sender = f"alice+{tok}@inner.example", f"someone+{tok}@pass.example"
    t = mail.send(
        plain,
        sender,
        [(rcpt, ["NOTIFY=FAILURE", f"ORCPT=rfc822;{xtext(rcpt)}"])],
        make_message(sender, rcpt, subject=f"through {tok}"),
        mail_options=["RET=HDRS", f"ENVID={tok}"],
    )
    assert t.accepted and t.queue_id, t
    msg = mail.wait_for(rcpt)
    assert msg.listener == "inbox"
    assert msg.mail_from == sender
    assert msg.mail_params["RET"] == "HDRS" and msg.mail_params["ENVID"] == tok
    assert msg.rcpt(rcpt).params["NOTIFY"] == "FAILURE"
    assert msg.rcpt(rcpt).orcpt == f"rfc822;{rcpt}"
    received = msg.email.get_all("Received")
    assert "by mx.inner.example" in received[0] and "by plain.fwd.example" in received[1]
    assert t.queue_id in received[1]


def test_smtputf8_and_8bit_mail_pass_through(mail: MailWorld, plain: PostfixInstance) -> None:
    tok = unique()
    sender, rcpt = f"josé+{tok}@pass.example", f"erin+{tok}@inner.example"
    t = mail.send(
        plain,
        sender,
        [rcpt],
        make_message(sender, rcpt, subject=f"ünïcode {tok}", body="Grüße\n"),
        mail_options=["SMTPUTF8", "BODY=8BITMIME"],
    )
    assert t.accepted, t
    msg = mail.wait_for(rcpt)
    assert msg.mail_from == sender and "SMTPUTF8" in msg.mail_params
    assert msg.mail_params["BODY"] == "8BITMIME"
    assert "Grüße".encode() in msg.data


def test_outsider_may_not_relay_but_may_send_to_our_domains(
    mail: MailWorld, plain: PostfixInstance
) -> None:
    tok = unique()
    t = mail.send(
        plain, f"x+{tok}@pass.example", [f"y+{tok}@elsewhere.example"], source_ip="127.0.0.2"
    )
    assert t.rcpt(f"y+{tok}@elsewhere.example").startswith("554 5.7.1"), t
    t = mail.send(
        plain, f"x+{tok}@pass.example", [f"bob+{tok}@inner.example"], source_ip="127.0.0.2"
    )
    assert t.accepted, t
    mail.wait_for(f"bob+{tok}@inner.example")


def test_inner_refuses_unknown_user_and_border_bounces_to_sender(
    mail: MailWorld, plain: PostfixInstance
) -> None:
    tok = unique()
    nobody, sender = f"nobody+{tok}@inner.example", f"alice+{tok}@pass.example"
    direct = send(mail.inner.port, sender, [nobody])
    assert direct.rcpt(nobody).startswith("550 5.1.1"), direct
    t = mail.send(plain, sender, [nobody], make_message(sender, nobody, subject=f"lost {tok}"))
    assert t.accepted, t  # BORDER relays inner.example without knowing its users
    bounce = mail.wait_for(sender)
    assert bounce.listener == "internet" and bounce.mail_from == ""
    assert bounce.email.get_content_type() == "multipart/report"
    assert "5.1.1" in bounce.data.decode(errors="replace") and nobody in bounce.data.decode()
    assert f"lost {tok}".encode() in bounce.data
    mail.assert_nothing_for(nobody)


def test_broken_user_makes_inner_bounce_back_to_border(
    mail: MailWorld, plain: PostfixInstance
) -> None:
    mail.route_bounces_to(plain)
    tok = unique()
    broken, srs = f"broken+{tok}@inner.example", f"SRS0=hash=TT=pass.example=a+{tok}@fwd.example"
    t = mail.send(plain, srs, [broken], make_message(subject=f"broken {tok}"))
    assert t.accepted, t
    bounce = mail.wait_for(srs)
    # INNER's own bounce, received by BORDER over SMTP, left unrewritten (no milter).
    assert bounce.listener == "unrewritten" and bounce.mail_from == ""
    received = bounce.email.get_all("Received")
    assert "from mx.inner.example" in received[0] and "by plain.fwd.example" in received[0]
    assert "by mx.inner.example" in received[1]
    assert any(r.address == broken and r.listener == "refuse" for r in mail.sink.rejections)
    mail.assert_nothing_for(broken, listener="inbox")


def test_deferred_mail_is_listed_and_flushed(mail: MailWorld, parking: PostfixInstance) -> None:
    tok = unique()
    later = f"later+{tok}@pass.example"
    mail.sink.refuse(later, "450 4.2.0 try again later")
    try:
        t = mail.send(parking, f"x+{tok}@pass.example", [later], source_ip="127.0.0.1")
        assert t.accepted, t
        entries = parking.wait_queue(
            lambda q: any(e.queue_id == t.queue_id and e.queue_name == "deferred" for e in q)
        )
        entry = next(e for e in entries if e.queue_id == t.queue_id)
        assert entry.recipients == (later,) and "4.2.0" in entry.delay_reasons[0]
        assert f"recipient: {later}" in parking.postcat(t.queue_id, "-e")
        # Parked: no retry moved it while we looked.
        (again,) = [e for e in parking.queue() if e.queue_id == t.queue_id]
        assert again.queue_name == "deferred"
        assert [r for r in mail.sink.rejections if r.address == later] != []
    finally:
        mail.sink.accept(later)
    parking.flush()
    mail.wait_for(later)
    parking.wait_queue(lambda q: all(e.queue_id != t.queue_id for e in q))
    assert t.queue_id not in parking.parked()


def test_qmgr_parks_a_deferred_message_it_finds_locked(
    mail: MailWorld, parking: PostfixInstance
) -> None:
    """What PostfixInstance.flush guards against, shown: qmgr reopens a
    deferred queue file while another process holds a shared lock on it (as
    the delivery agent that deferred it does for a moment), logs "skipped,
    still being delivered" and parks the message in the incoming queue, where
    it stays for a minute: longer than any wait of the tests."""
    tok = unique()
    later = f"later+{tok}@pass.example"
    with mail.sink.refusing(later, "450 4.2.0 try again later"):
        t = mail.send(parking, f"x+{tok}@pass.example", [later], source_ip="127.0.0.1")
        parking.wait_queue(
            lambda q: any(e.queue_id == t.queue_id and e.queue_name == "deferred" for e in q)
        )
    (path,) = (parking.queue_dir / "deferred").rglob(t.queue_id)
    try:
        with path.open("rb") as held:
            fcntl.flock(held, fcntl.LOCK_SH)  # as a delivery agent holds it
            subprocess.run(["postqueue", "-c", str(parking.config_dir), "-f"], check=True)
            parking.wait_log(rf"{t.queue_id}: skipped, still being delivered")
        assert t.queue_id in parking.parked()
        time.sleep(3)  # the lock is long gone: the message stays parked all the same
        (entry,) = [e for e in parking.queue() if e.queue_id == t.queue_id]
        assert entry.queue_name == "incoming"
        assert mail.sink.messages(later) == []
    finally:
        parking.postsuper("-d", t.queue_id)


def test_flush_waits_for_the_delivery_agent_to_let_go(
    mail: MailWorld, parking: PostfixInstance
) -> None:
    """A deferred queue file that a process still holds is not flushed (qmgr
    would find it locked and park it for 60 s): flush waits until it is let go."""
    tok = unique()
    later = f"later+{tok}@pass.example"
    with mail.sink.refusing(later, "450 4.2.0 try again later"):
        t = mail.send(parking, f"x+{tok}@pass.example", [later], source_ip="127.0.0.1")
        parking.wait_queue(
            lambda q: any(e.queue_id == t.queue_id and e.queue_name == "deferred" for e in q)
        )
    (path,) = (parking.queue_dir / "deferred").rglob(t.queue_id)
    with path.open("rb") as held:
        assert parking.open_queue_files("deferred") == [t.queue_id]
        with pytest.raises(TimeoutError, match="holds a deferred queue file"):
            parking.flush(timeout=0.5)
        held.close()
        parking.flush()
    mail.wait_for(later)
    assert t.queue_id not in parking.parked()


# -- a milter on Postfix's own bounces -------------------------------------------


def test_border_bounce_passes_non_smtpd_milter(
    mail: MailWorld, probed: PostfixInstance, probe_milter: ProbeMilter
) -> None:
    tok = unique()
    nobody, sender = f"nobody+{tok}@inner.example", f"alice+{tok}@pass.example"
    t = mail.send(probed, sender, [nobody], make_message(sender, nobody))
    assert t.accepted, t
    bounce = mail.wait_for(sender)
    assert bounce.mail_from == "" and bounce.email[HEADER] == "from=<>"
    seen = [r for r in probe_milter.records() if sender in r["rcpts"]]
    # smtpd_milters is empty on the main port: the milter saw the bounce alone,
    # and got its null sender as an empty string.
    assert [(r["mail_from"], r["action"]) for r in seen] == [("", "accept")]


def test_border_bounce_quarantined_by_milter_goes_to_hold(
    mail: MailWorld, probed: PostfixInstance, probe_milter: ProbeMilter
) -> None:
    tok = unique()
    nobody, sender = f"nobody+{tok}@inner.example", f"alice+{tok}@pass.example"
    subject = f"{QUARANTINE_MARKER.decode()} {tok}"
    t = mail.send(probed, sender, [nobody], make_message(sender, nobody, subject=subject))
    assert t.accepted, t
    held = probed.wait_queue(
        lambda q: any(e.queue_name == "hold" and sender in e.recipients for e in q),
        what="the bounce is held",
    )
    entry = next(e for e in held if sender in e.recipients)
    assert entry.sender == ""
    probed.wait_log(rf"{entry.queue_id}: milter-hold: .* milter triggers HOLD action")
    assert subject in probed.postcat(entry.queue_id, "-b")
    mail.assert_nothing_for(sender)
    # Released, the bounce is delivered (the milter is not asked again).
    probed.postsuper("-H", entry.queue_id)
    probed.flush()
    assert mail.wait_for(sender).mail_from == ""
    assert probed.hold_queue() == []


def test_second_listener_with_its_own_milter(
    mail: MailWorld, probed: PostfixInstance, probe_milter: ProbeMilter
) -> None:
    tok = unique()
    rcpt, sender = f"carol+{tok}@inner.example", f"x+{tok}@pass.example"
    t = send(probed.listener_ports["probed-smtpd"], sender, [rcpt])
    assert t.accepted, t
    assert mail.wait_for(rcpt).email[HEADER] == f"from=<{sender}>"
    t = mail.send(probed, sender, [f"dave+{tok}@inner.example"])
    assert HEADER not in mail.wait_for(f"dave+{tok}@inner.example").email
    assert "fatal" not in "".join(probed.problems())
