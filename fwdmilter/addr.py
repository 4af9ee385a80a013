"""Mail addresses as the milter receives them: parsing and normalising.

Pure functions, no I/O. Addresses come from libmilter as the client wrote
them in MAIL FROM and RCPT TO, usually in angle brackets.
"""

from __future__ import annotations

from typing import Final

__all__ = ["strip_brackets", "split", "domain_of", "key", "in_domains", "is_null"]

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
