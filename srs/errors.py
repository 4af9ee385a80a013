"""Errors raised by the SRS codec.

Every refusal is one of these, so a caller can tell what went wrong
without parsing a message::

    SRSError                 any refusal by the codec
    ├── AddressError         forward(): the sender is not a usable address
    ├── NotSRS               reverse(): not an SRS address at all
    ├── Malformed            reverse(): looks like SRS but cannot be parsed
    ├── BadHash              reverse(): the tag does not verify (forged or mangled)
    └── Expired              reverse(): the day stamp is too old, or from the future

The text of each error names what is wrong. It may quote the address
(truncated), so it is fit for a log line; the milter answers the SMTP client
with its own fixed texts, never with these.
"""

from __future__ import annotations

__all__ = ["AddressError", "BadHash", "Expired", "Malformed", "NotSRS", "SRSError"]


class SRSError(Exception):
    """The SRS codec refused an address."""


class AddressError(SRSError, ValueError):
    """The sender address cannot be rewritten."""


class NotSRS(SRSError, ValueError):
    """The address is not an SRS address."""


class Malformed(SRSError, ValueError):
    """The address looks like SRS but cannot be parsed."""


class BadHash(SRSError):
    """The SRS tag does not verify with any of the secrets."""


class Expired(SRSError):
    """The SRS day stamp is older than the maximum age, or lies in the future."""
