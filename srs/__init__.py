"""srs: the Sender Rewriting Scheme, byte-compatible with Mail::SRS and postsrsd.

A pure codec: no I/O, no logging, no state beyond its settings.

    >>> from srs import SRS
    >>> s = SRS(secrets=["newest", "older"], domain="fwd.example.net")
    >>> s.reverse(s.forward("alice@example.org", now=0), now=0)
    'alice@example.org'
"""

from srs.codec import (
    MAX_ADDRESS_LENGTH,
    SRS,
    SRSAddress,
    ascii_domain,
    format_address,
    looks_like_srs,
)
from srs.errors import AddressError, BadHash, Expired, Malformed, NotSRS, SRSError

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "SRS",
    "AddressError",
    "BadHash",
    "Expired",
    "Malformed",
    "NotSRS",
    "SRSAddress",
    "SRSError",
    "ascii_domain",
    "format_address",
    "looks_like_srs",
]
