"""Delivery status notifications (RFC 3464), read with the email package.

A bounce coming back to an SRS address says, in its message/delivery-status
part, which recipients failed (``Final-Recipient``, ``Original-Recipient``),
how (``Action``, ``Status``, ``Diagnostic-Code``), and usually returns the
original message or its headers (message/rfc822, text/rfc822-headers). This
module turns those bytes into a :class:`DSN`, or raises
:class:`~fwdmilter.errors.DSNError` saying why they are not one. Pure: no I/O.

Bounces are hostile input: any bytes at all reach :func:`parse`. It either
returns a DSN whose every string encodes as UTF-8 (octets that are not UTF-8
are decoded where they can be, else replaced: see
:func:`fwdmilter.headers.clean`) or raises DSNError; never another
exception, so that a malformed bounce gets a final answer and never a 451.
"""

from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import email.utils
import itertools
import re
from dataclasses import dataclass
from typing import Final, Literal

from fwdmilter.errors import DSNError
from fwdmilter.headers import clean

__all__ = ["RecipientStatus", "DSN", "parse", "returned_message", "MAX_PARSE"]

#: Bytes of a bounce that are read at most: the report comes first, and a
#: returned message beyond this is cut (its headers are what matter here).
MAX_PARSE: Final = 4 * 1024 * 1024

_STATUS: Final = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_XTEXT: Final = re.compile(r"\+([0-9A-Fa-f]{2})")
_UNITEXT: Final = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_BLANK_LINE: Final = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a DSN (RFC 3464 section 2.3)."""

    final_recipient: str
    original_recipient: str
    action: str  # failed, delayed, delivered, relayed, expanded (lower case)
    status: str  # "5.1.1"
    diagnostic: str = ""
    remote_mta: str = ""


@dataclass(frozen=True, slots=True)
class DSN:
    """A parsed delivery status notification."""

    reporting_mta: str
    recipients: tuple[RecipientStatus, ...]
    #: Header fields of the returned message, in order, if it was returned.
    returned_headers: tuple[tuple[str, str], ...] = ()
    #: True if only the headers came back (text/rfc822-headers, RET=HDRS, or
    #: the MTA's bounce size limit).
    headers_only: bool = False
    envelope_id: str = ""

    @property
    def kind(self) -> Literal["failure", "delay", "success"]:
        """ "failure" if any recipient failed, else "delay" if any is delayed,
        else "success" (delivered, relayed, expanded)."""
        actions = {r.action for r in self.recipients}
        if "failed" in actions or not actions:
            return "failure"
        if "delayed" in actions:
            return "delay"
        if actions <= {"delivered", "relayed", "expanded"}:
            return "success"
        return "failure"

    def failed(self) -> tuple[RecipientStatus, ...]:
        return tuple(r for r in self.recipients if r.action == "failed")

    def recipient_addresses(self) -> list[str]:
        """Every final and original recipient address named."""
        out: list[str] = []
        for r in self.recipients:
            out.extend(a for a in (r.final_recipient, r.original_recipient) if a)
        return out

    def header_values(self, name: str) -> tuple[str, ...]:
        """Values of one header field of the returned message."""
        lower = name.lower()
        return tuple(v for n, v in self.returned_headers if n.lower() == lower)


def _unitext_char(m: re.Match[str]) -> str:
    # RFC 6533 section 3: "\\x{HEXPOINT}" names a Unicode scalar value. One
    # that is none (a surrogate, past U+10FFFF) stays as it was written:
    # the address then matches nothing, which is all a broken one can do.
    code = int(m.group(1), 16)
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF or code == 0:
        return m.group(0)
    return chr(code)


def _xtext_char(m: re.Match[str]) -> str:
    # RFC 3461 section 4: xtext encodes ASCII only ("+" HEXCHAR HEXCHAR for
    # a character outside "!" to "~", or "+" and "="); an octet past ASCII
    # or a control is left as written.
    code = int(m.group(1), 16)
    return chr(code) if 0x20 < code < 0x7F else m.group(0)


def _address(value: str) -> str:
    """The address of an ``address-type ; address`` field (RFC 3464 section
    2.3.1), xtext (RFC 3461 section 4) and utf-8 (RFC 6533) decoded."""
    kind, sep, rest = value.partition(";")
    if not sep:
        rest, kind = value, "rfc822"
    rest = " ".join(rest.split()).strip().strip("<>")
    kind = kind.strip().lower()
    if kind == "utf-8":
        return _UNITEXT.sub(_unitext_char, rest)
    if kind == "rfc822":
        return _XTEXT.sub(_xtext_char, rest)
    return rest


def _status(value: str) -> str:
    m = _STATUS.search(value)
    return ".".join(m.groups()) if m else ""


def _fields_of(block: email.message.Message) -> dict[str, str]:
    # raw_items: the text as it came, 8-bit octets as surrogates, which
    # clean() decodes where they are UTF-8 (RFC 6533 allows it) and
    # replaces where not; the first of a repeated field counts.
    fields: dict[str, str] = {}
    for k, v in block.raw_items():
        fields.setdefault(clean(k).lower(), " ".join(clean(str(v)).split()))
    return fields


def _blocks(part: email.message.Message) -> list[email.message.Message]:
    """The field groups of a message/delivery-status part."""
    payload = part.get_payload()
    messages = (
        [m for m in payload if isinstance(m, email.message.Message)]
        if isinstance(payload, list)
        else []
    )
    if part.get_content_type() == "message/delivery-status" and messages:
        return messages
    # message/global-delivery-status (RFC 6533) reaches us parsed as one
    # message, or as text: split its text into field groups ourselves.
    if messages:
        text = b"".join(m.as_bytes(policy=email.policy.compat32) for m in messages)
    else:
        decoded = part.get_payload(decode=True)
        if not isinstance(decoded, bytes):
            return []
        text = decoded
    groups = re.split(rb"\r?\n\s*\r?\n", text.strip())
    return [email.message_from_bytes(g + b"\n") for g in groups if g.strip()]


def _returned(part: email.message.Message) -> tuple[tuple[tuple[str, str], ...], bool]:
    ctype = part.get_content_type()
    if ctype == "message/rfc822":
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if isinstance(inner, email.message.Message):
            return _header_items(inner), False
    raw = part.get_payload(decode=True)
    if isinstance(raw, bytes):
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
        return _header_items(headers), True
    return (), True


def _header_items(msg: email.message.Message) -> tuple[tuple[str, str], ...]:
    return tuple((clean(k), clean(str(v))) for k, v in msg.raw_items())


#: What the email package could raise on hostile input instead of noting a
#: defect. None was seen in fuzzing (tests/fuzz, thousands of reports), but
#: the package does not promise to be total, and an escape here would answer
#: 451 on every retry; errors of our own kinds (TypeError, AttributeError)
#: are not caught, so that a bug still shows as one.
_EMAIL_ERRORS: Final = (ValueError, LookupError, RecursionError, UnicodeError)


def parse(raw: bytes) -> DSN:
    """Parse a bounce as an RFC 3464 DSN; DSNError says why it is not one."""
    try:
        return _parse(raw)
    except DSNError:
        raise
    except _EMAIL_ERRORS as exc:
        raise DSNError(f"unparsable MIME structure ({type(exc).__name__})") from exc


def _parse(raw: bytes) -> DSN:
    if not raw.strip():
        raise DSNError("empty message")
    msg = email.message_from_bytes(raw[:MAX_PARSE], policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/report":
        raise DSNError(f"content type is {msg.get_content_type()}, not multipart/report")
    report_type = clean(
        email.utils.collapse_rfc2231_value(msg.get_param("report-type") or "")
    ).lower()
    if report_type != "delivery-status":
        raise DSNError(f"report type is {report_type or 'missing'}, not delivery-status")
    parts = msg.get_payload()
    if not isinstance(parts, list):
        raise DSNError("multipart/report without parts")
    status_part = next(
        (
            p
            for p in parts
            if isinstance(p, email.message.Message)
            and p.get_content_type()
            in ("message/delivery-status", "message/global-delivery-status")
        ),
        None,
    )
    if status_part is None:
        raise DSNError("no message/delivery-status part")
    blocks = _blocks(status_part)
    if not blocks:
        raise DSNError("empty message/delivery-status part")
    per_message = _fields_of(blocks[0])
    recipients: list[RecipientStatus] = []
    for block in blocks[1:]:
        f = _fields_of(block)
        if "action" not in f and "final-recipient" not in f:
            continue
        recipients.append(
            RecipientStatus(
                final_recipient=_address(f.get("final-recipient", "")),
                original_recipient=_address(f.get("original-recipient", "")),
                action=f.get("action", "").split()[0].lower() if f.get("action") else "",
                status=_status(f.get("status", "")),
                diagnostic=f.get("diagnostic-code", "").partition(";")[2].strip()
                or f.get("diagnostic-code", ""),
                remote_mta=_address(f.get("remote-mta", "")),
            )
        )
    if not recipients:
        raise DSNError("no per-recipient fields in the delivery-status part")
    returned: tuple[tuple[str, str], ...] = ()
    headers_only = True
    for p in parts:
        if isinstance(p, email.message.Message) and p.get_content_type() in (
            "message/rfc822",
            "text/rfc822-headers",
            "message/global",
            "message/global-headers",
        ):
            returned, headers_only = _returned(p)
            break
    return DSN(
        reporting_mta=_address(per_message.get("reporting-mta", "")),
        recipients=tuple(recipients),
        returned_headers=returned,
        headers_only=headers_only,
        envelope_id=per_message.get("original-envelope-id", "")[:1000],
    )


def returned_message(raw: bytes) -> bytes | None:
    """The original message returned whole in a bounce (its message/rfc822
    part), byte for byte as the bounce carries it; None if the bounce
    returned only headers, or nothing.

    The bytes are cut from the raw bounce at the MIME boundaries instead of
    re-serialised by the email package, which would refold headers.
    """
    header_parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    top = header_parser.parsebytes(raw)
    boundary = top.get_boundary()
    if top.get_content_type() != "multipart/report" or not boundary:
        return None
    # RFC 2046 section 5.1.1: a delimiter is CRLF "--" boundary, at a line start.
    delimiter = re.compile(
        rb"(?:\A|\r?\n)--"
        + re.escape(boundary.encode("ascii", "replace"))
        + rb"(--)?[ \t]*(?=\r?\n|\Z)"
    )
    marks = list(delimiter.finditer(raw))
    for start, end in itertools.pairwise(marks):
        if start.group(1):  # the closing delimiter: no part follows
            break
        part = raw[start.end() : end.start()]
        part = (
            part[2:] if part.startswith(b"\r\n") else part[1:] if part.startswith(b"\n") else part
        )
        blank = _BLANK_LINE.search(part)
        if blank is None:
            continue
        headers = header_parser.parsebytes(part[: blank.start()] + b"\n\n")
        if headers.get_content_type() in ("message/rfc822", "message/global"):
            return part[blank.end() :]
    return None
