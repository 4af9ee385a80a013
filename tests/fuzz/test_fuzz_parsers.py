"""The header, address and DSN parsers are total on hostile input (hypothesis).

Property: whatever a client sends, each function returns (or, for the DSN
parser, raises DSNError), and what it returns can be stored and logged: it
encodes as UTF-8.
"""

from __future__ import annotations

import contextlib
import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fwdmilter import addr, dsn, headers
from fwdmilter.errors import DSNError
from tests.fuzz.strategies import SCALE, address, hostile_text, octets_text, path

FAST = settings(
    max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- headers ----------------------------------------------------------------------

header_value = st.one_of(hostile_text, octets_text)


@FAST
@given(header_value)
@example(";")
@example("")
@example("(((")
@example('"unclosed')
@example("\\")
def test_header_helpers_are_total(value: str) -> None:
    assert isinstance(headers.authserv_id(value), str)
    assert headers.skip_cfws(value) <= len(value)
    fields = headers.trace_fields(value)
    assert fields is None or fields[1].isalnum()
    cleaned = headers.clean(value)
    assert _encodes(cleaned) and "\0" not in cleaned
    quoted = headers.ptext(value)
    assert _encodes(quoted) and not any(c < " " for c in quoted)


def _comment(depth: int, text: str) -> str:
    body = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    for _ in range(depth):
        body = f"({body} )"
    return body


token = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9.-]{0,20}\Z")
cfws = st.builds(
    lambda ws, depth, text: ws + (_comment(depth, text) if depth else "") + ws,
    st.sampled_from(["", " ", "\t", "\r\n "]),
    st.integers(0, 4),
    st.text(alphabet=string.printable, max_size=10),
)


@FAST
@given(token, cfws, cfws, st.booleans(), st.sampled_from(["; spf=pass", " 1; none", ";"]))
def test_authserv_id_reads_through_cfws_and_quotes(
    name: str, before: str, after: str, quoted: bool, rest: str
) -> None:
    """RFC 8601 section 2.2: [CFWS] authserv-id [CFWS] ..., the id a token
    or a quoted string; comments nest."""
    written = f'"{name}"' if quoted else name
    value = f"{before}{written}{after}{rest}"
    assert headers.authserv_id(value) == name.lower().rstrip(".")


# -- addresses ---------------------------------------------------------------------


@FAST
@given(path)
def test_address_helpers_are_total(raw: str) -> None:
    bare = addr.strip_brackets(raw)
    addr.split(bare)
    addr.domain_of(bare)
    addr.is_null(raw)
    addr.in_domains(bare, frozenset({"fwd.example"}))
    shown = addr.printable(bare)
    assert _encodes(shown) and not any(c < " " or c == "\x7f" for c in shown)
    if addr.problem(bare) is None:
        # What the milter goes on with can be stored, logged and handed back
        # to libmilter (its "s" format wants UTF-8 without NUL).
        assert _encodes(bare) and "\0" not in bare
        assert _encodes(addr.key(bare))


@FAST
@given(address)
def test_problem_is_none_only_for_encodable_addresses(a: str) -> None:
    unencodable = not _encodes(a) or any(c < " " or c == "\x7f" for c in a)
    assert (addr.problem(a) is not None) >= unencodable


# -- DSN ---------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=2000))
def test_dsn_parse_of_any_bytes(raw: bytes) -> None:
    with contextlib.suppress(DSNError):
        dsn.parse(raw)
    dsn.returned_message(raw)


def _xtext_or_junk() -> st.SearchStrategy[str]:
    return st.one_of(
        hostile_text,
        st.from_regex(r"\A(rfc822|utf-8|x-weird|);[ a-z@.+0-9A-F\\{}x]{0,30}\Z"),
        st.builds(
            lambda n: f"utf-8; caf\\x{{{n:X}}}@x.example",
            st.integers(0, 0xFFFFFF),
        ),
        st.builds(lambda n: f"rfc822; a+{n:02X}b@x.example", st.integers(0, 255)),
    )


field_value = st.one_of(_xtext_or_junk(), octets_text)
charset = st.sampled_from(["us-ascii", "utf-8", "x-unknown", "iso-8859-1", "utf-7", ""])


def _mostly(good: str, *bad: str) -> st.SearchStrategy[str]:
    """``good`` three times in four, else one of ``bad``: most reports get
    past the structure checks to the fields."""
    return st.one_of(st.just(good), st.just(good), st.just(good), st.sampled_from(bad))


@st.composite
def dsn_messages(draw: st.DrawFn) -> bytes:
    """Bounces shaped like RFC 3464 reports, with every field and part fuzzed."""
    boundary = draw(_mostly("b1", "", '"quoted b"', "b1; b2", "=?x?="))
    report_type = draw(_mostly("delivery-status", "DELIVERY-STATUS", "", "x", "*0*=a"))
    status_type = draw(
        _mostly("message/delivery-status", "message/global-delivery-status", "text/plain", "junk")
    )

    def fld(name: str) -> bytes:
        value = draw(field_value)
        return f"{name}: {value}\n".encode("utf-8", "surrogateescape")

    per_msg_names = ["Reporting-MTA", "Arrival-Date", "Original-Envelope-Id", "X-Junk"]
    per_msg = b"".join(fld(n) for n in draw(st.lists(st.sampled_from(per_msg_names), max_size=4)))
    rcpt_names = [
        "Original-Recipient",
        "Action",
        "Status",
        "Diagnostic-Code",
        "Remote-MTA",
        "Last-Attempt-Date",
    ]
    blocks = []
    for _ in range(draw(st.integers(0, 3))):
        names = draw(st.lists(st.sampled_from(rcpt_names), max_size=6))
        if draw(_mostly("yes", "no")) == "yes":
            names.insert(0, "Final-Recipient")
        blocks.append(b"".join(fld(n) for n in names))
    status_body = per_msg + b"\n" + b"\n".join(blocks)
    cte = draw(_mostly("7bit", "8bit", "base64", "quoted-printable", "x-bogus", ""))
    returned_type = draw(
        st.sampled_from(["message/rfc822", "text/rfc822-headers", "message/global", "none"])
    )
    returned = draw(st.binary(max_size=300))
    b = boundary.strip('"').encode("utf-8", "replace") or b"missing"
    parts = [
        b"Content-Type: text/plain; charset="
        + draw(charset).encode()
        + b"\n\n"
        + draw(st.binary(max_size=100)),
        b"Content-Type: "
        + status_type.encode()
        + b"\nContent-Transfer-Encoding: "
        + cte.encode()
        + b"\n\n"
        + status_body,
    ]
    if returned_type != "none":
        parts.append(b"Content-Type: " + returned_type.encode() + b"\n\n" + returned)
    body = b"".join(b"--" + b + b"\n" + p + b"\n" for p in parts)
    if draw(st.booleans()):
        body += b"--" + b + b"--\n"
    for _ in range(int(draw(_mostly("0", "1", "3")))):
        body = b"--" + b + b"\nContent-Type: multipart/mixed; boundary=" + b + b"\n\n" + body
    head = (
        "Content-Type: multipart/report; report-type="
        + report_type
        + (f"; boundary={boundary}" if boundary else "")
        + "\n"
    ).encode()
    return head + b"MIME-Version: 1.0\n\n" + body


@settings(max_examples=400 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dsn_messages())
def test_dsn_parse_of_fuzzed_reports(raw: bytes) -> None:
    try:
        parsed = dsn.parse(raw)
    except DSNError:
        return
    strings = [parsed.reporting_mta, parsed.envelope_id]
    for r in parsed.recipients:
        strings += [
            r.final_recipient,
            r.original_recipient,
            r.action,
            r.status,
            r.diagnostic,
            r.remote_mta,
        ]
    for name, value in parsed.returned_headers:
        strings += [name, value]
    assert all(_encodes(s) and "\0" not in s for s in strings), strings
    assert parsed.kind in ("failure", "delay", "success")
    dsn.returned_message(raw)
