"""Header field values: authserv-id (RFC 8601), trace values, property values."""

from __future__ import annotations

import pytest

from fwdmilter import headers, policy


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mx.fwd.example; spf=pass", "mx.fwd.example"),
        ("MX.fwd.example (c); spf=pass", "mx.fwd.example"),
        (" other.example 1; none", "other.example"),
        # RFC 8601 section 2.2: CFWS before the id, comments that nest.
        ("(a (nested) comment) mx.fwd.example; spf=pass", "mx.fwd.example"),
        ("((x)(y)) mx.fwd.example; none", "mx.fwd.example"),
        ("(a \\) quoted paren) mx.fwd.example; none", "mx.fwd.example"),
        ("\r\n\t(folded)\r\n mx.fwd.example; none", "mx.fwd.example"),
        # The id as a quoted string (a "value" of RFC 2045).
        ('"mx.fwd.example"; spf=pass', "mx.fwd.example"),
        ('"MX.FWD.EXAMPLE" 1; none', "mx.fwd.example"),
        ('"mx.fw\\d.example"; none', "mx.fwd.example"),
        # A comment right after the id ends it.
        ("mx.fwd.example(forged); spf=pass", "mx.fwd.example"),
        ("mx.fwd.example.; none", "mx.fwd.example"),
        # Nothing to name: never an exception.
        (";", ""),
        ("", ""),
        ("   ", ""),
        ("(unclosed mx.fwd.example; none", ""),
        ('"unclosed', "unclosed"),
        ("\\", ""),  # a tspecial: no token
        ("caf\udcc3\udca9.example; none", "caf\udcc3\udca9.example"),
    ],
)
def test_authserv_id(value: str, expected: str) -> None:
    assert headers.authserv_id(value) == expected


def test_policy_reexports_the_header_helpers() -> None:
    assert policy.authserv_id is headers.authserv_id
    assert policy.AUTH_RESULTS_HEADER == headers.AUTH_RESULTS_HEADER == "Authentication-Results"
    assert policy.TRACE_HEADER == headers.TRACE_HEADER == "Fwdmilter-Trace"


def test_trace_fields() -> None:
    assert headers.trace_fields("FWD.example; id=abc23; by=mx") == ("fwd.example", "abc23")
    assert headers.trace_fields(" fwd.example ;id=x") == ("fwd.example", "x")
    assert headers.trace_fields("fwd.example; by=mx") is None
    assert headers.trace_fields(";") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice@pass.example", "alice@pass.example"),
        ("a b", '"a b"'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
        ("", '""'),
        ("x\r\ny", '"x??y"'),
        ("caf\udcc3", '"caf?"'),
    ],
)
def test_ptext(value: str, expected: str) -> None:
    assert headers.ptext(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("caf\udcc3\udca9", "café"),  # UTF-8 octets read as undecodable ASCII
        ("bad\udcff", "bad\ufffd"),
        ("lone\ud800", "lone\ufffd"),
        ("nul\0", "nul\ufffd"),
        ("déjà", "déjà"),
    ],
)
def test_clean(value: str, expected: str) -> None:
    assert headers.clean(value) == expected
