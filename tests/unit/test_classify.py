"""What reaches an SRS address, told apart: only failures are failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwdmilter.classify import Kind, classify, trace_ids_in

BOUNCES = Path(__file__).parents[1] / "data" / "bounces"


def load(name: str) -> bytes:
    return (BOUNCES / name).read_bytes()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("postfix-failed.eml", Kind.FAILURE),  # RFC 3464, Action: failed
        ("postfix-headers-only.eml", Kind.FAILURE),  # RET=HDRS
        ("utf8-recipient.eml", Kind.FAILURE),  # RFC 6533
        ("not-a-dsn.eml", Kind.FAILURE),  # qmail's format, through flufl.bounce
        ("exim-failed.eml", Kind.FAILURE),  # Exim's, despite its Auto-Submitted
        ("delayed.eml", Kind.DELAY),
        ("relayed.eml", Kind.SUCCESS),
        ("vacation.eml", Kind.AUTO_REPLY),  # RFC 3834 Auto-Submitted
        ("legacy-autoreply.eml", Kind.AUTO_REPLY),  # X-Autoreply
        ("read-receipt.eml", Kind.READ_RECEIPT),  # RFC 8098
        ("person-reply.eml", Kind.OTHER),
    ],
)
def test_kinds(name: str, kind: Kind) -> None:
    assert classify(load(name), null_sender=True).kind is kind
    assert classify(load(name).replace(b"\n", b"\r\n"), null_sender=True).kind is kind


def test_a_subject_alone_marks_an_auto_reply_only_from_the_null_sender() -> None:
    raw = load("subject-autoreply.eml")
    assert classify(raw, null_sender=True).kind is Kind.AUTO_REPLY
    assert classify(raw, null_sender=False).kind is Kind.OTHER


def test_auto_submitted_no_is_a_person() -> None:
    raw = load("vacation.eml").replace(b"Auto-Submitted: auto-replied", b"Auto-Submitted: no")
    raw = raw.replace(b"Subject: Out of office: Lunch", b"Subject: Lunch")
    assert classify(raw, null_sender=False).kind is Kind.OTHER


def test_failure_reason_is_the_status_and_diagnostic_once() -> None:
    c = classify(load("postfix-failed.eml"), null_sender=True)
    assert c.reason.startswith("550 5.1.1 <broken@inner.example>")
    assert c.reason.count("5.1.1") == 1
    assert c.dsn is not None


def test_legacy_bounce_names_the_failed_recipient() -> None:
    c = classify(load("exim-failed.eml"), null_sender=True)
    assert c.reason == "bounce in a legacy format (not RFC 3464) for broken@exim.example"


def test_trace_ids_come_from_returned_headers_or_a_quoted_copy() -> None:
    returned = classify(load("postfix-failed.eml"), null_sender=True)
    assert returned.trace_values == ("fwd.example; id=abcdefgh23456789; by=mx.fwd.example",)
    quoted = classify(load("exim-failed.eml"), null_sender=True)
    assert quoted.trace_values == ("fwd.example; id=abcdefgh23456789; by=mx.fwd.example",)
    assert trace_ids_in(b"> Fwdmilter-Trace: fwd.example; id=q; by=x\r\n") == (
        "fwd.example; id=q; by=x",
    )
    assert classify(load("vacation.eml"), null_sender=True).trace_values == ()


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xff\xfe\x00garbage", b"Content-Type: multipart/report\n\n--x--\n", b"\n\n\n"],
)
def test_unreadable_mail_is_other_never_an_exception(raw: bytes) -> None:
    assert classify(raw, null_sender=True).kind is Kind.OTHER
