"""Mail addresses as the milter receives them: parsing and normalising.

Pure functions, no I/O. Addresses come from libmilter as the client wrote
them in MAIL FROM and RCPT TO, usually in angle brackets.

pymilter decodes the envelope as UTF-8 with ``surrogateescape``: octets that
are not UTF-8 arrive as lone surrogates, which no store, log or milter
action can encode. :func:`problem` says why an address is unusable, so that
the milter answers it with a permanent 5xx at once, before an SPF check or a
store lookup would fail on it (and a 4xx would make the client retry for
ever).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "strip_brackets",
    "split",
    "domain_of",
    "key",
    "in_domains",
    "is_null",
    "problem",
    "printable",
]

#: RFC 5321 section 4.5.3.1.3: a path is at most 256 octets; be generous.
MAX_LENGTH: Final = 1024


def strip_brackets(address: str) -> str:
    """``<a@b>`` -> ``a@b``; ``<>`` -> ``""``. Also drops an RFC 5321
    source route (``<@relay:a@b>``, section 4.1.2), which MTAs must accept
    and ignore."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if address.startswith("@") and ":" in address:
        address = address.split(":", 1)[1]
    return address


def is_null(address: str) -> bool:
    """True for the null reverse-path (bounces), however libmilter spells it."""
    return strip_brackets(address) == ""


def split(address: str) -> tuple[str, str] | None:
    """(local, domain) of a bare address, splitting at the last ``@``; None
    if it has no usable ``@``."""
    at = address.rfind("@")
    if at <= 0 or at == len(address) - 1:
        return None
    return address[:at], address[at + 1 :]


def domain_of(address: str) -> str:
    """The lower-cased domain of a bare address, "" if it has none."""
    parts = split(address)
    return parts[1].lower().rstrip(".") if parts else ""


def key(address: str) -> str:
    """The form under which an address is stored and looked up: bare and
    lower-cased (mail admins expect table lookups to ignore case, as
    Postfix's do)."""
    return strip_brackets(address).lower()


def in_domains(address: str, domains: frozenset[str]) -> bool:
    """True if the address's domain is one of ``domains`` (lower-cased)."""
    return domain_of(address) in domains


def _unencodable(c: str) -> bool:
    return "\ud800" <= c <= "\udfff"


def problem(address: str) -> str | None:
    """Why ``address`` (bare) cannot be used as an envelope address; None if
    it can. Checks only what would break the milter's own work: octets that
    are not UTF-8 (RFC 6531 section 3.3 wants UTF-8), control characters
    (no mailbox of RFC 5321 section 4.1.2 holds one), and a length past
    :data:`MAX_LENGTH`. Anything else is the MTA's and the next hop's to
    judge."""
    if any(_unencodable(c) for c in address):
        return "not UTF-8"
    if any(c < " " or c == "\x7f" for c in address):
        return "control character"
    if len(address.encode("utf-8")) > MAX_LENGTH:
        return "too long"
    return None


def printable(address: str, limit: int = 200) -> str:
    """``address`` for a log line: controls and undecodable octets as
    ``\\xNN`` escapes, cut to ``limit`` characters."""
    out = []
    for c in address[:limit]:
        if _unencodable(c):
            # surrogateescape carries the octet in the low byte (U+DC80-DCFF).
            out.append(f"\\x{ord(c) & 0xFF:02x}")
        elif c < " " or c in {"\x7f", "\\"}:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out) + ("..." if len(address) > limit else "")
