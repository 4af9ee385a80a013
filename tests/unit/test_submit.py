"""Submitting mail to the MTA: what goes on the wire (against the harness's sink)."""

from __future__ import annotations

from fwdmilter.submit import submit
from tests.harness.sink import Sink
from tests.harness.smtp import unique


def test_lf_line_ends_go_out_as_crlf(sink: Sink) -> None:
    # Held messages come from the MTA's queue with LF line ends; Sendmail
    # 8.17 drops a client that sends a bare LF (RFC 5321 section 2.3.8).
    message = b"Subject: lf\n\nline one\r\n.dot line\nlast\n"
    rcpt = f"{unique('lf')}@y.example"
    submit(f"127.0.0.1:{sink.port('internet')}", "a@x.example", [rcpt], message)
    got = sink.wait_for(rcpt, timeout=5)
    assert got.data == b"Subject: lf\r\n\r\nline one\r\n.dot line\r\nlast\r\n"
