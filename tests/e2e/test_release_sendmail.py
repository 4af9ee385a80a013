"""Release on the border's own delivery, through a real Sendmail 8.17.

Sendmail queues its own bounces (a qf file from the null sender to the SRS
address) before they pass the milter through its loop-back daemon, so
``held release`` must see both: the requeued message gone from every queue
folder, and no bounce to its SRS address waiting there. The target is on
the sink's "internet" listener: DSN offered, ``NOTIFY=SUCCESS`` accepted, no
notice ever sent. The fixtures are test_sendmail.py's (one Sendmail and one
milter for the module).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from fwdmilter import replies
from fwdmilter.mta.sendmail import Sendmail
from tests.e2e.test_sendmail import fm, held, rcpt_reply, send, sendmail
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import MailWorld
from tests.harness.sendmail import SendmailInstance
from tests.harness.smtp import unique

__all__ = ["fm", "sendmail"]  # the fixtures, used by name

pytestmark = pytest.mark.e2e


def hold_internet(
    fm: FwdMilter, sm: SendmailInstance, mail: MailWorld, reply: str
) -> tuple[str, str, str, dict[str, Any]]:
    tok = unique()
    rcpt, target = f"f{tok}@fwd.example", f"t{tok}@target.example"
    fm.fwdctl("forward", "set", rcpt, target)
    with mail.sink.refusing(target, reply):
        t = send(mail, sm, f"s{tok}@softfail.example", rcpt, tok)
        assert t.accepted, t
        fm.wait_log(rf"sender=<> rcpts=<SRS0=[^>]*{tok}@fwd.example> .*action=hold")
    (entry,) = held(fm, target)
    return rcpt, target, tok, entry


def wait_gone(sm: SendmailInstance, queue_id: str, timeout: float = 30.0) -> None:
    adapter = Sendmail(str(sm.queue_dir), str(sm.cf))
    deadline = time.monotonic() + timeout
    while any(m.queue_id == queue_id for m in adapter.queued()):
        assert time.monotonic() < deadline, sm.explain()
        time.sleep(0.3)


def test_requeued_mail_sendmail_delivered_is_released(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    rcpt, target, tok, _ = hold_internet(fm, sendmail, mail, "550 5.1.1 unknown")
    assert rcpt_reply(sendmail, f"u{tok}@softfail.example", rcpt).startswith(
        "451 4.7.1 Mail for this recipient is held"
    )
    out = fm.fwdctl("held", "requeue", "--target", target)
    (requeued,) = held(fm, target)
    assert requeued["state"] == "R"
    # Sendmail's "250 2.0.0 ID Message accepted for delivery" named the id.
    assert requeued["requeue_id"] and f"as {requeued['requeue_id']}" in out.stdout
    got = mail.wait_for(target, listener="internet", match=lambda m: m.email["Subject"] == tok)
    assert got.rcpt(target).params.get("NOTIFY") == "SUCCESS,FAILURE"
    wait_gone(sendmail, requeued["requeue_id"])
    out = fm.fwdctl("held", "release")
    assert f"released: {requeued['requeue_id']} was delivered by the MTA" in out.stdout
    assert held(fm, target) == []
    assert rcpt_reply(sendmail, f"u{tok}@softfail.example", rcpt).startswith("250")
    mail.assert_nothing_for(f"s{tok}@softfail.example")


def test_requeued_mail_that_fails_again_in_sendmail_is_held_again(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    rcpt, target, tok, first = hold_internet(fm, sendmail, mail, "550 5.1.1 unknown")
    with mail.sink.refusing(target, "550 5.1.1 still unknown"):
        fm.fwdctl("held", "requeue", "--target", target)
        deadline = time.monotonic() + 30
        while True:
            # Until the bounce is held again, release must find a reason to
            # wait: the requeued message, or Sendmail's bounce, is queued.
            assert fm.fwdctl("held", "release").stdout == ""
            (entry,) = held(fm, target)
            if entry["state"] == "H" and entry["queue_id"] != first["queue_id"]:
                break
            assert time.monotonic() < deadline, (entry, fm.log()[-2000:], sendmail.explain())
            time.sleep(0.3)
    assert "still unknown" in entry["reason"]
    assert fm.fwdctl("held", "release").stdout == ""
    assert held(fm, target)[0]["state"] == "H"
    assert rcpt_reply(sendmail, f"u{tok}@softfail.example", rcpt).startswith("451 4.7.1")
    fm.fwdctl("held", "drop", "--target", target)


def test_two_targets_one_refusing_only_it_is_held_requeued_and_released(
    fm: FwdMilter, sendmail: SendmailInstance, mail: MailWorld
) -> None:
    tok = unique()
    rcpt = f"f{tok}@fwd.example"
    good, bad = f"g{tok}@target.example", f"b{tok}@target.example"
    fm.fwdctl("forward", "set", rcpt, good, bad)
    with mail.sink.refusing(bad, "550 5.1.1 unknown"):
        t = send(mail, sendmail, f"s{tok}@softfail.example", rcpt, tok)
        assert t.accepted, t
        fm.wait_log(rf"sender=<> rcpts=<SRS0=[^>]*{tok}@fwd.example> .*action=hold")
        mail.wait_for(good, listener="internet", match=lambda m: m.email["Subject"] == tok)
    (entry,) = held(fm, bad)
    assert (entry["state"], entry["rcpt"]) == ("H", rcpt)
    assert held(fm, good) == []
    assert rcpt_reply(sendmail, f"u{tok}@softfail.example", rcpt).said(replies.TARGET_HELD)
    out = fm.fwdctl("held", "requeue", "--target", bad)
    assert f"submitted to {bad}" in out.stdout
    (requeued,) = held(fm, bad)
    again = mail.wait_for(bad, listener="internet", match=lambda m: m.email["Subject"] == tok)
    assert again.rcpt_addresses == [bad]
    wait_gone(sendmail, requeued["requeue_id"])
    out = fm.fwdctl("held", "release")
    assert f"released: {requeued['requeue_id']} was delivered by the MTA" in out.stdout
    assert held(fm, bad) == []
    mail.wait_idle()
    # The target that got the message the first time never got it twice.
    assert len(mail.sink.messages(good, match=lambda m: m.email["Subject"] == tok)) == 1
    assert rcpt_reply(sendmail, f"u{tok}@softfail.example", rcpt).startswith("250")
    mail.assert_nothing_for(f"s{tok}@softfail.example")
