"""Hostile input through real Postfix gets a final answer, never a 451 (issue 14).

The in-process tests (tests/milter/test_hostile_input.py) and the fuzz
(tests/fuzz) cover each case against the milter alone; these check that
Postfix passes the same input on and that the client sees the final answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwdmilter import replies
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import OUTSIDE, BorderFactory, MailWorld
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.smtp import make_message, raw_envelope, said, unique

pytestmark = pytest.mark.e2e

BOUNCES = Path(__file__).parents[1] / "data" / "bounces"


@pytest.fixture(scope="module")
def fm(
    mail: MailWorld,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FwdMilter]:
    workdir = tmp_path_factory.mktemp("hostile")
    milter = FwdMilter(runtime.socket("fwd-hostile"), workdir / "milter", dns_port=mail.dns.port)
    border = border_factory(milter=milter.spec, start=False)
    milter.serve(border)
    border.start()
    milter.border = border  # type: ignore[attr-defined]
    yield milter
    milter.stop()


@pytest.fixture(scope="module")
def border(fm: FwdMilter) -> PostfixInstance:
    b: PostfixInstance = fm.border  # type: ignore[attr-defined]
    return b


def forwarding(fm: FwdMilter) -> tuple[str, str, str]:
    tok = unique()
    rcpt, target = f"f{tok}@fwd.example", f"alice+{tok}@inner.example"
    fm.fwdctl("forward", "set", rcpt, target)
    return rcpt, target, tok


def test_malformed_and_forged_authentication_results(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    rcpt, target, tok = forwarding(fm)
    sender = f"s{tok}@pass.example"
    headers = [
        ("Authentication-Results", ";"),  # was 451 4.3.0 at end of message, every time
        ("Authentication-Results", "(a (nested) comment) border.fwd.example; spf=pass"),
        ("Authentication-Results", '"Border.fwd.example"; dkim=pass'),
        ("Authentication-Results", "other.example; spf=fail"),
    ]
    message = make_message(sender, rcpt, subject=tok, headers=headers)
    t = mail.send(border, sender, [rcpt], message, source_ip=OUTSIDE, helo="helo.pass.example")
    assert t.accepted, t
    got = mail.wait_for(target).email.get_all("Authentication-Results")
    assert sorted(got) == [
        ";",
        f"border.fwd.example; spf=pass smtp.mailfrom={sender}",
        "other.example; spf=fail",
    ]


def test_bounce_with_a_broken_utf8_address_is_held_not_deferred(
    fm: FwdMilter, border: PostfixInstance, mail: MailWorld
) -> None:
    rcpt, target, tok = forwarding(fm)
    sender = f"s{tok}@softfail.example"  # unverified: its bounce is held
    t = mail.send(
        border,
        sender,
        [rcpt],
        make_message(sender, rcpt, subject=tok),
        source_ip=OUTSIDE,
        helo="helo.softfail.example",
    )
    assert t.accepted, t
    srs_addr = mail.wait_for(target).mail_from
    bounce = (BOUNCES / "postfix-failed.eml").read_bytes()
    bounce = bounce.replace(b"SRS0=C3Bs=JM=example.org=alice@fwd.example", srs_addr.encode())
    bounce = bounce.replace(
        b"Final-Recipient: rfc822; broken@inner.example",
        f"Final-Recipient: utf-8; alice+{tok}\\x{{110000}}@inner.example".encode(),
    )
    t = mail.send(border, "", [srs_addr], bounce, source_ip="127.0.0.1", helo="mx.inner.example")
    assert t.accepted, t  # 451 4.3.0 before, on every retry
    border.wait_queue(
        lambda q: any(e.queue_name == "hold" and srs_addr in e.recipients for e in q),
        what="the bounce is held",
    )
    fm.wait_log(rf"rcpts=<{re.escape(srs_addr)}> .*stage=eom action=hold")
    mail.assert_nothing_for(sender)


def test_addresses_that_are_not_utf8_get_a_final_answer(
    fm: FwdMilter, border: PostfixInstance
) -> None:
    rcpt, _target, tok = forwarding(fm)
    # Postfix refuses octets that are not UTF-8 itself ("500 5.5.2 Error: bad
    # UTF-8 syntax"); a control character reaches the milter. Either way the
    # client is told for good: never a 4xx to retry for ever.
    latin1 = f"caf\xe9{tok}@pass.example".encode("latin-1")
    answers = raw_envelope(border.port, latin1, rcpt.encode())
    assert answers == ["500 5.5.2 Error: bad UTF-8 syntax"], answers
    answers = raw_envelope(
        border.port, f"s{tok}@pass.example".encode(), f"f{tok}\x01@fwd.example".encode()
    )
    assert answers[0].startswith("250") and said(answers[1], replies.BAD_RECIPIENT), answers
