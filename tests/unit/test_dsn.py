"""Reading bounces as RFC 3464 delivery status notifications."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from fwdmilter import dsn
from fwdmilter.errors import DSNError

BOUNCES = Path(__file__).parents[1] / "data" / "bounces"


def load(name: str) -> bytes:
    return (BOUNCES / name).read_bytes()


def test_postfix_failure_with_the_message_returned() -> None:
    report = dsn.parse(load("postfix-failed.eml"))
    assert report.kind == "failure"
    assert report.reporting_mta == "inner.example"
    (status,) = report.recipients
    assert status.final_recipient == "broken@inner.example"
    assert status.original_recipient == "bob@fwd.example"
    assert (status.action, status.status) == ("failed", "5.1.1")
    assert "mailbox full" in status.diagnostic
    assert report.failed() == (status,)
    assert not report.headers_only
    assert report.header_values("fwdmilter-trace") == (
        "fwd.example; id=abcdefgh23456789; by=mx.fwd.example",
    )


def test_headers_only_bounce() -> None:
    report = dsn.parse(load("postfix-headers-only.eml"))
    assert report.headers_only
    assert report.recipients[0].status == "5.2.2"
    assert report.header_values("Fwdmilter-Trace")[0].startswith("fwd.example; id=zzzz")
    assert dsn.returned_message(load("postfix-headers-only.eml")) is None


def test_delay_and_success_kinds() -> None:
    assert dsn.parse(load("delayed.eml")).kind == "delay"
    relayed = dsn.parse(load("relayed.eml"))
    assert relayed.kind == "success"
    assert relayed.envelope_id == "requeue-42"


def test_utf8_and_xtext_addresses_are_decoded() -> None:
    (status,) = dsn.parse(load("utf8-recipient.eml")).recipients
    assert status.final_recipient == "josé@inner.example"
    assert status.original_recipient == "bob+x@fwd.example"
    assert status.status == "5.1.1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"Subject: hi\n\nhello\n", "text/plain, not multipart/report"),
        (
            b"Content-Type: multipart/report; report-type=disposition-notification; boundary=X\n\n"
            b"--X\nContent-Type: text/plain\n\nread\n--X--\n",
            "report type is disposition-notification",
        ),
        (
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=X\n\n"
            b"--X\nContent-Type: text/plain\n\nno status part\n--X--\n",
            "no message/delivery-status part",
        ),
        (
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=X\n\n"
            b"--X\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n--X--\n",
            "no per-recipient fields",
        ),
    ],
)
def test_what_is_not_a_dsn_says_why(raw: bytes, reason: str) -> None:
    with pytest.raises(DSNError, match=reason):
        dsn.parse(raw)


def test_a_plain_text_bounce_is_not_a_dsn() -> None:
    with pytest.raises(DSNError, match="text/plain"):
        dsn.parse(load("not-a-dsn.eml"))


def test_returned_message_is_cut_byte_for_byte() -> None:
    raw = load("postfix-failed.eml")
    original = dsn.returned_message(raw)
    assert original is not None
    assert original.startswith(b"Return-Path: <SRS0=C3Bs")
    assert b"\tby mx.fwd.example (Postfix) with ESMTP id 3ZZZZ;\n" in original
    assert original.endswith(b"Shall we?\nAlice\n")


def test_returned_message_with_crlf_line_ends() -> None:
    raw = load("postfix-failed.eml").replace(b"\n", b"\r\n")
    original = dsn.returned_message(raw)
    assert original is not None
    assert original.startswith(b"Return-Path:") and original.endswith(b"Alice\r\n")


def test_truncated_and_garbage_input_never_crashes() -> None:
    raw = load("postfix-failed.eml")
    for cut in range(0, len(raw), 97):
        with contextlib.suppress(DSNError):
            dsn.parse(raw[:cut])
        dsn.returned_message(raw[:cut])
    with pytest.raises(DSNError):
        dsn.parse(bytes(range(256)) * 50)


# -- hostile reports: every field a final answer (issue 14) -------------------------


def report(*recipient_fields: bytes, per_message: bytes = b"Reporting-MTA: dns; x\n") -> bytes:
    """A minimal failure DSN with these per-recipient fields."""
    return (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=X\n\n"
        b"--X\nContent-Type: message/delivery-status\n\n"
        + per_message
        + b"\n"
        + b"".join(recipient_fields)
        + b"\n--X--\n"
    )


@pytest.mark.parametrize(
    ("field", "address"),
    [
        # RFC 6533: \x{...} outside Unicode's scalar values stays as written
        # (it raised ValueError: 451 for ever).
        (b"utf-8; caf\\x{110000}@x.example", "caf\\x{110000}@x.example"),
        (b"utf-8; caf\\x{FFFFFF}@x.example", "caf\\x{FFFFFF}@x.example"),
        (b"utf-8; caf\\x{D800}@x.example", "caf\\x{D800}@x.example"),
        (b"utf-8; caf\\x{0}@x.example", "caf\\x{0}@x.example"),
        (b"utf-8; caf\\x{E9}@x.example", "caf\xe9@x.example"),
        # RFC 3461 xtext encodes printable ASCII only.
        (b"rfc822; a+2Bb@x.example", "a+b@x.example"),
        (b"rfc822; a+00b@x.example", "a+00b@x.example"),
        (b"rfc822; a+E9b@x.example", "a+E9b@x.example"),
        # 8-bit octets: UTF-8 is decoded, anything else replaced.
        ("utf-8; josé@x.example".encode(), "josé@x.example"),
        (b"rfc822; caf\xe9@x.example", "caf\ufffd@x.example"),
        (b"rfc822; a\xff\xfe@x.example", "a\ufffd\ufffd@x.example"),
        (b"", ""),
        (b"x-unknown;", ""),
        (b";;;", ";;"),
    ],
)
def test_hostile_final_recipient(field: bytes, address: str) -> None:
    (status,) = dsn.parse(report(b"Final-Recipient: " + field + b"\nAction: failed\n")).recipients
    assert status.final_recipient == address
    status.final_recipient.encode("utf-8")  # storable


def test_hostile_action_status_and_diagnostic() -> None:
    parsed = dsn.parse(
        report(
            b"Final-Recipient: rfc822; a@x.example\nAction: \xff\xfe\nStatus: 9.9.9999\n"
            b"Diagnostic-Code: smtp; \xc3\xa9\xff 550 \x00 no\n",
            per_message=b"Reporting-MTA: \xff\nArrival-Date: not a date\n"
            b"Original-Envelope-Id: " + b"e" * 5000 + b"\n",
        )
    )
    (status,) = parsed.recipients
    assert status.action == "\ufffd\ufffd" and status.status == ""
    assert status.diagnostic == "é\ufffd 550 \ufffd no"
    assert parsed.reporting_mta == "\ufffd" and len(parsed.envelope_id) == 1000
    assert parsed.kind == "failure"  # an action we cannot read is no success


def test_empty_action_and_repeated_fields() -> None:
    (status,) = dsn.parse(
        report(b"Final-Recipient: rfc822; a@x\nFinal-Recipient: rfc822; b@x\nAction:\n")
    ).recipients
    assert (status.final_recipient, status.action) == ("a@x", "")


def test_returned_headers_with_8bit_octets_are_cleaned() -> None:
    raw = report(b"Final-Recipient: rfc822; a@x\nAction: failed\n").replace(
        b"\n--X--\n",
        b"\n--X\nContent-Type: text/rfc822-headers\n\n"
        b"Subject: caf\xc3\xa9 \xff\nFwdmilter-Trace: fwd.example; id=abc; by=mx\n\n--X--\n",
    )
    parsed = dsn.parse(raw)
    assert parsed.header_values("subject") == ("café \ufffd",)
    assert parsed.header_values("fwdmilter-trace") == ("fwd.example; id=abc; by=mx",)


@pytest.mark.parametrize(
    "raw",
    [
        # Parts nested thousands deep: the email package's recursion limit.
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
        + b"--b\nContent-Type: multipart/mixed; boundary=b\n\n" * 5000,
        # No boundary at all, and an empty one.
        b"Content-Type: multipart/report; report-type=delivery-status\n\nbody\n",
        b'Content-Type: multipart/report; report-type=delivery-status; boundary=""\n\n--\n',
        # A status part in an unknown transfer encoding, and in broken base64.
        report(b"Final-Recipient: rfc822; a@x\n").replace(
            b"message/delivery-status\n",
            b"message/global-delivery-status\nContent-Transfer-Encoding: x-bogus\n",
        ),
        report(b"Final-Recipient: rfc822; a@x\n").replace(
            b"message/delivery-status\n\nReporting-MTA: dns; x\n",
            b"message/global-delivery-status\nContent-Transfer-Encoding: base64\n\n=====\n",
        ),
    ],
    ids=["nested", "no-boundary", "empty-boundary", "bogus-cte", "broken-base64"],
)
def test_malformed_structures_give_a_dsn_error_or_a_dsn(raw: bytes) -> None:
    try:
        parsed = dsn.parse(raw)
    except DSNError:
        return
    for r in parsed.recipients:
        r.final_recipient.encode("utf-8")
