"""Submitting mail to the MTA: what goes on the wire (against the harness's sink)."""

from __future__ import annotations

import pytest

from fwdmilter.errors import MTAError
from fwdmilter.submit import queue_id_of, submit, submit_each
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


def test_the_queue_id_is_read_from_postfix_and_sendmail_replies() -> None:
    assert queue_id_of("2.0.0 Ok: queued as 4XyZ1Q2b3C") == "4XyZ1Q2b3C"
    assert queue_id_of("2.0.0 0B1MxAbc012345 Message accepted for delivery") == "0B1MxAbc012345"
    assert queue_id_of("0B1MxAbc012345 Message accepted for delivery") == "0B1MxAbc012345"
    assert queue_id_of("2.0.0 OK") == ""
    assert queue_id_of("") == ""


def test_one_refused_recipient_does_not_stop_the_others(sink: Sink) -> None:
    good, bad, later = (f"{unique(x)}@y.example" for x in ("good", "bad", "later"))
    port = f"127.0.0.1:{sink.port('internet')}"
    with sink.refusing(bad, "550 5.1.1 no such user"), sink.refusing(later, "451 4.3.0 later"):
        done = submit_each(port, "", [good, bad, later], b"Subject: each\n\nhi\n")
        with pytest.raises(MTAError, match="refused RCPT TO:<" + bad):
            submit(port, "", [good, bad], b"Subject: all\n\nhi\n")
    assert done.accepted == (good,)
    assert set(done.refused) == {bad, later}
    assert done.refused[bad].startswith("550 5.1.1")
    assert done.permanent == {bad}
    got = sink.wait_for(good, timeout=5)
    assert got.rcpt_addresses == [good]
    sink.assert_nothing_for(good, match=lambda m: m.email["Subject"] == "all")
    # Every recipient refused: nothing is sent, no error either.
    with sink.refusing(bad, "550 5.1.1 no such user"):
        none = submit_each(port, "", [bad], b"Subject: none\n\nhi\n")
    assert (none.queue_id, none.accepted, none.permanent) == ("", (), {bad})
