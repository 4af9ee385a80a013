"""Submitting mail to the MTA: what goes on the wire (against the harness's sink)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fwdmilter.submit import submit
from tests.harness.sink import Sink


@pytest.fixture(scope="module")
def submit_sink() -> Iterator[Sink]:
    s = Sink()
    s.add_listener("mta")
    yield s
    s.stop()


def test_lf_line_ends_go_out_as_crlf(submit_sink: Sink) -> None:
    # Held messages come from the MTA's queue with LF line ends; Sendmail
    # 8.17 drops a client that sends a bare LF (RFC 5321 section 2.3.8).
    message = b"Subject: lf\n\nline one\r\n.dot line\nlast\n"
    submit(f"127.0.0.1:{submit_sink.port('mta')}", "a@x.example", ["lf@y.example"], message)
    got = submit_sink.wait_for("lf@y.example", timeout=5)
    assert got.data == b"Subject: lf\r\n\r\nline one\r\n.dot line\r\nlast\r\n"
