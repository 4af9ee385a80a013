"""srs: the Sender Rewriting Scheme, byte-compatible with Mail::SRS and postsrsd.

A pure codec: no I/O, no logging, no state beyond its settings.

    >>> from srs import SRS
    >>> s = SRS(secrets=["newest", "older"], domain="fwd.example.net")
    >>> s.reverse(s.forward("alice@example.org", now=0), now=0)
    'alice@example.org'
"""

from srs.codec import (
    ALIAS_HOST,
    MAX_ADDRESS_LENGTH,
    MAX_LOCAL_PART,
    SRS,
    SRSAddress,
    alias_key,
    ascii_domain,
    format_address,
    local_part_too_long,
    looks_like_srs,
)
from srs.errors import AddressError, BadHash, Expired, Malformed, NotSRS, SRSError

__all__ = [
    "ALIAS_HOST",
    "MAX_ADDRESS_LENGTH",
    "MAX_LOCAL_PART",
    "alias_key",
    "local_part_too_long",
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
