"""Header field values the milter reads and writes: pure, total functions.

Every function here takes any ``str`` a client can send, including lone
surrogates (pymilter decodes bytes that are not UTF-8 with
``surrogateescape``), and returns a value without raising: a header the
milter cannot read is treated as one that says nothing, never as an error
that would answer 451 for ever.

- :func:`authserv_id`: whose Authentication-Results a field claims to be
  (RFC 8601 section 2.2), so that forged ones naming us are removed
  (section 5).
- :func:`trace_fields`: the forwarder's domain and message id in a
  ``Fwdmilter-Trace`` value.
- :func:`ptext`: a property value for an Authentication-Results field we
  write, as a token or a quoted string.
- :func:`clean`: text read from a message made fit to store and log.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "TRACE_HEADER",
    "AUTH_RESULTS_HEADER",
    "authserv_id",
    "trace_fields",
    "ptext",
    "skip_cfws",
    "clean",
]

#: The header that marks mail this forwarder relayed: loop detection, and the
#: id that ties a returned bounce to the message record it is about.
TRACE_HEADER: Final = "Fwdmilter-Trace"
AUTH_RESULTS_HEADER: Final = "Authentication-Results"

def clean(value: str) -> str:
    """``value`` with every character a store or a log can encode.

    Octets that were not UTF-8 reach Python as lone surrogates
    (``surrogateescape``, U+DC80-DCFF): if they spell UTF-8 after all (an
    8-bit header read as ASCII) they are decoded, else each becomes U+FFFD.
    Any other lone surrogate becomes U+FFFD too. NUL, which some stores
    refuse, becomes U+FFFD."""
    if value.isascii() and "\0" not in value:
        return value
    raw = bytearray()
    for c in value:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:
            raw.append(o - 0xDC00)
        elif 0xD800 <= o <= 0xDFFF or o == 0:
            raw += "\ufffd".encode()
        else:
            raw += c.encode("utf-8")
    return raw.decode("utf-8", "replace")


# RFC 2045 section 5.1: tspecials, which end a token; with SP and CTLs.
_TSPECIALS: Final = frozenset('()<>@,;:\\"/[]?=')
_WSP: Final = frozenset(" \t\r\n")


def skip_cfws(value: str, i: int = 0) -> int:
    """The index of the first character at or after ``i`` that is neither
    folding white space nor part of a comment (RFC 5322 section 3.2.2).

    Comments nest, and a backslash quotes the next character inside one. An
    unclosed comment runs to the end of the value (there is nothing after
    it to read)."""
    n = len(value)
    while i < n:
        c = value[i]
        if c in _WSP:
            i += 1
            continue
        if c != "(":
            return i
        depth = 0
        while i < n:
            c = value[i]
            if c == "\\":
                i += 2
                continue
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    i += 1
                    break
            i += 1
    return min(i, n)


def _quoted_string(value: str, i: int) -> tuple[str, int]:
    """The content of the quoted string opening at ``value[i]`` (a ``"``),
    quoted-pairs undone, and the index after its closing quote."""
    out: list[str] = []
    i += 1
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), n


def _is_token_char(c: str) -> bool:
    return c not in _TSPECIALS and c not in _WSP and not (c < " " or c == "\x7f")


def authserv_id(header_value: str) -> str:
    """The authserv-id of an Authentication-Results value, lower-cased; ""
    if it names none.

    RFC 8601 section 2.2: ``authres-payload = [CFWS] authserv-id [ CFWS
    authres-version ] ( no-result / 1*resinfo ) [CFWS]``, and the
    authserv-id is a ``value`` of RFC 2045: a token or a quoted string.
    Comments (which nest) and folding white space may stand before it, and
    a comment may follow it without a space: ``mx.example(forged); ...``
    names ``mx.example``, and so does ``"MX.Example"; ...``. A trailing
    dot is dropped, as a host name's root label is.
    """
    i = skip_cfws(header_value)
    if i >= len(header_value):
        return ""
    if header_value[i] == '"':
        name, _ = _quoted_string(header_value, i)
        name = name.strip()
    else:
        j = i
        while j < len(header_value) and _is_token_char(header_value[j]):
            j += 1
        name = header_value[i:j]
    return name.lower().rstrip(".")


# A trace value we write: "<srs domain>; id=<msg id>; by=<hostname>".
_TRACE_RE: Final = re.compile(r"\s*([^;\s]+)\s*;\s*id=([A-Za-z0-9]+)")


def trace_fields(value: str) -> tuple[str, str] | None:
    """(lower-cased domain, id) of a ``Fwdmilter-Trace`` value, None if the
    value is not in the form this forwarder writes."""
    m = _TRACE_RE.match(value)
    if m is None:
        return None
    return m.group(1).lower(), m.group(2)


_TOKEN_VALUE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]+")


def ptext(value: str) -> str:
    """A property value for Authentication-Results: a token or a quoted
    string (RFC 8601 section 2.2, ``pvalue``). Characters that cannot
    stand in a header we write (controls, and lone surrogates from bytes
    that were not UTF-8) become ``?``."""
    if value and _TOKEN_VALUE.fullmatch(value):
        return value
    clean = "".join(
        "?" if (c < " " or c == "\x7f" or "\ud800" <= c <= "\udfff") else c for c in value
    )
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'
