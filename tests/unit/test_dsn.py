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
