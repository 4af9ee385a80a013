"""The Sender Rewriting Scheme, as Mail::SRS (Guarded) and postsrsd write it.

A forwarder that relays alice@example.org's mail from its own address breaks
the next hop's SPF check. SRS replaces the envelope sender with an address at
the forwarder's own domain that carries the original sender, a day stamp and a
MAC, so that a bounce can be sent back, and only a genuine one::

    alice@example.org
      -> SRS0=HHHH=TT=example.org=alice@fwd.example.net          (first hop)
    SRS0=HHHH=TT=example.org=alice@fwd.example.net
      -> SRS1=GGGG=fwd.example.net==HHHH=TT=example.org=alice@next.example
                                                                  (later hops)

The format is fixed by the reference implementations, and this module is
byte-compatible with both for the same secret and day:

* The MAC is HMAC-SHA1 keyed by the secret over the fields, each lower-cased
  (ASCII letters only, as Perl's ``lc`` on bytes and C's ``tolower`` do) and
  concatenated without a separator; it is base64 encoded and cut to
  ``hash_length`` characters. postsrsd 2.3 and later write the base64url
  alphabet instead (``-_`` for ``+/``: some receivers refuse ``/`` in a
  local part); ``hash_alphabet`` chooses what this rewriter writes, and
  either verifies, as postsrsd 2 accepts both. SRS0 signs (stamp, host, user); SRS1 signs
  (host, user), where host is the first forwarder's domain.
* The stamp is the day number modulo 1024, as two base32 characters
  (``A-Z2-7``). Base32 survives an MTA that smashes the case of the local
  part (RFC 5321 section 2.4 forbids it, some do it anyway), and so does
  the MAC check, which compares without regard to case.
* After the tag comes one separator (``=``, ``+`` or ``-``) that the admin
  chooses, so that an MTA with recipient delimiters can route SRS0/SRS1 as
  users; every later separator is ``=``. The host part never contains ``=``,
  which is why no field needs escaping: the user, last, takes the rest.
* An SRS1 address keeps the first forwarder's SRS0 address minus its "SRS0"
  tag (hence the ``==``): the chain stays one hop long, and a bounce goes
  straight back to the first forwarder, who alone can check its stamp.

This module does no I/O and keeps no state besides its settings; the clock
is a parameter (``now=``), read from ``clock`` only when none is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import idna

from srs.errors import AddressError, BadHash, Expired, Malformed, NotSRS

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "MAX_LOCAL_PART",
    "ALIAS_HOST",
    "SRS",
    "HashAlphabet",
    "alias_key",
    "local_part_too_long",
    "SRSAddress",
    "ascii_domain",
    "format_address",
    "looks_like_srs",
]

#: Longest address either direction accepts. RFC 5321 section 4.5.3.1.3 caps a
#: whole path at 256 octets; SRS1 addresses may grow past that on the way, so
#: this leaves room while keeping hostile input cheap to refuse.
MAX_ADDRESS_LENGTH: Final = 1024

_SEPARATORS: Final = "=+-"
_SEP: Final = "="
_BASE32: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32_VALUE: Final = {c: i for i, c in enumerate(_BASE32)} | {
    c.lower(): i for i, c in enumerate(_BASE32)
}
#: Hash characters of both alphabets: base64 (RFC 4648 section 4), as Mail::SRS
#: and postsrsd 1 write it, and base64url (section 5), as postsrsd 2.3 and
#: later write it, since some receivers refuse "/" in a local part.
_BASE64_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_"
)
_TO_URL: Final = bytes.maketrans(b"+/", b"-_")
#: One form for comparing hashes of either alphabet, without regard to case.
_FOLD: Final = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ+/", b"abcdefghijklmnopqrstuvwxyz-_"
)
HashAlphabet = Literal["base64", "base64url"]
_NOT_IN_HOST: Final = re.compile(r'[=\\" \t\r\n<>@]').search
_DAY: Final = 86400
_TICKSLOTS: Final = 1024  # two base32 characters
_MAX_HASH: Final = 27  # base64 of a 20-byte SHA-1 digest, without padding


@dataclass(frozen=True, slots=True)
class SRSAddress:
    """A verified SRS address, taken apart.

    ``kind`` is "SRS0" or "SRS1". For SRS0, ``host`` and ``user`` are the
    original sender's domain and local part, and ``stamp`` its day stamp; for
    SRS1, ``host`` is the first forwarder's domain, ``user`` the rest of its
    SRS0 local part, and there is no stamp. ``reversed`` is where a bounce
    goes: the original sender, or the first forwarder's SRS0 address.
    """

    kind: Literal["SRS0", "SRS1"]
    hash: str
    stamp: str | None
    host: str
    user: str
    reversed: str


def _short(text: str, limit: int = 80) -> str:
    """Quote ``text`` for an error message, cut to a readable length."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"


# A Dot-string (RFC 5321 section 4.1.2): atext runs joined by single dots,
# where UTF-8 characters count as atext (RFC 6531 section 3.3).
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+"
_is_dot_string: Final = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z").match


def _quote_local(local: str) -> str:
    if _is_dot_string(local):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _unquote_local(local: str) -> str:
    """The content of a Quoted-string local part, or ``local`` as it is."""
    if len(local) < 2 or local[0] != '"' or local[-1] != '"':
        return local
    out: list[str] = []
    chars = iter(local[1:-1])
    for c in chars:
        out.append(next(chars, "") if c == "\\" else c)
    return "".join(out)


def format_address(local: str, host: str) -> str:
    """Join a local part and a domain, quoting the local part if it needs it."""
    return f"{_quote_local(local)}@{host}"


def _split(address: str) -> tuple[str, str] | None:
    """Split at the last ``@`` outside quotes; None if there is none."""
    at = address.rfind("@")
    if at <= 0 or at == len(address) - 1:
        return None
    return address[:at], address[at + 1 :]


def _tag(local: str) -> str | None:
    """ "SRS0" or "SRS1" if ``local`` starts with a tag and a separator."""
    if len(local) > 4 and local[4] in _SEPARATORS:
        tag = local[:4].upper()
        if tag in ("SRS0", "SRS1"):
            return tag
    return None


#: RFC 5321 section 4.5.3.1.1: a local part is at most 64 octets, and
#: receivers enforce it ("553 5.1.7 local part too long").
MAX_LOCAL_PART: Final = 64
#: The host of a short form (as postsrsd 2 writes them in its database
#: mode): "1" is no domain, so a short form never reverses to a mailbox.
ALIAS_HOST: Final = "1"


def alias_key(address: str) -> str:
    """The user of the short form for ``address``: the base32hex (RFC 4648
    section 7) SHA-1 of the address, 32 characters, as postsrsd 2 makes it.

    A short form ``SRS0=HHHH=TT=1=KEY@domain`` is signed and dated like any
    SRS0 address; the original sender it stands for is not in it, but in the
    forwarder's store (fwdmilter keeps it in the message records).
    """
    digest = hashlib.sha1(address.encode("utf-8", "surrogateescape")).digest()
    return base64.b32hexencode(digest).decode("ascii")


def local_part_too_long(address: str) -> bool:
    """True if ``address``'s local part exceeds :data:`MAX_LOCAL_PART` octets."""
    local = address.rpartition("@")[0]
    return len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL_PART


def looks_like_srs(address: str) -> bool:
    """True if ``address`` has the form of an SRS address (nothing is verified)."""
    parts = _split(address)
    return parts is not None and _tag(_unquote_local(parts[0])) is not None


def _a_label(host: str, what: str) -> str:
    """``host`` with every non-ASCII label in its A-label form (RFC 5891)."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as exc:
        raise AddressError(f"{what} domain {_short(host)} is not a valid IDN: {exc}") from None


_Pads = tuple["hashlib._Hash", "hashlib._Hash"]


def _hmac_sha1_pads(key: bytes) -> _Pads:
    """SHA-1 states with the HMAC key pads absorbed (RFC 2104 section 2).

    Each MAC then starts from copies of these two C objects: the same result
    as the hmac module, at less than half the cost per address.
    """
    if len(key) > 64:
        key = hashlib.sha1(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha1(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha1(bytes(b ^ 0x5C for b in key))
    return inner, outer


def ascii_domain(address: str) -> str:
    """``address`` with its domain in A-label form, as an SRS address carries
    it; the address as it is if it has no valid IDN domain."""
    parts = _split(address)
    if parts is None or parts[1].isascii():
        return address
    try:
        return f"{parts[0]}@{_a_label(parts[1], 'sender')}"
    except AddressError:
        return address


class SRS:
    """An SRS rewriter for one forwarding domain.

    ``secrets`` lists the keys, newest first: the first signs, every one
    verifies, so a new key is added in front and an old one dropped after
    ``max_age_days`` (rotation without a flag day). ``hash_length`` is the
    length of new tags; a tag shorter than ``hash_min_length`` is refused.
    ``separator`` is the one after the SRS0/SRS1 tag. A sender already in
    ``domain`` is returned unchanged unless ``always_rewrite`` is set, as the
    reference implementations do.

    Instances are immutable after construction and safe to share between
    threads.
    """

    __slots__ = (
        "_always_rewrite",
        "_clock",
        "_domain",
        "_domain_lower",
        "_hash_length",
        "_hash_min_length",
        "_keys",
        "_max_age",
        "_separator",
        "_url_hash",
    )

    def __init__(
        self,
        secrets: Sequence[str | bytes] | str | bytes,
        domain: str,
        hash_length: int = 4,
        hash_min_length: int | None = None,
        max_age_days: int = 21,
        separator: str = "=",
        *,
        hash_alphabet: HashAlphabet = "base64",
        always_rewrite: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(secrets, (str, bytes)):
            secrets = [secrets]
        keys: list[bytes] = []
        for i, secret in enumerate(secrets):
            raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
            if not raw:
                raise ValueError(f"SRS secret #{i + 1} is empty")
            keys.append(raw)
        if not keys:
            raise ValueError("SRS needs at least one secret")
        if not isinstance(hash_length, int) or not 1 <= hash_length <= _MAX_HASH:
            raise ValueError(f"hash_length must be 1 to {_MAX_HASH}, not {hash_length!r}")
        if hash_min_length is None:
            hash_min_length = hash_length
        if not isinstance(hash_min_length, int) or not 1 <= hash_min_length <= hash_length:
            raise ValueError(
                f"hash_min_length must be 1 to hash_length ({hash_length}), not {hash_min_length!r}"
            )
        if not isinstance(max_age_days, int) or not 0 <= max_age_days < _TICKSLOTS:
            raise ValueError(f"max_age_days must be 0 to {_TICKSLOTS - 1}, not {max_age_days!r}")
        if hash_alphabet not in ("base64", "base64url"):
            raise ValueError(f"hash_alphabet must be base64 or base64url, not {hash_alphabet!r}")
        if separator not in ("=", "+", "-"):
            raise ValueError(f"separator must be one of = + -, not {separator!r}")
        if not isinstance(domain, str) or not domain or "@" in domain or "=" in domain:
            raise ValueError(f"domain must be a domain name, not {domain!r}")
        try:
            domain = _a_label(domain, "SRS")
        except AddressError as exc:
            raise ValueError(str(exc)) from None
        self._keys = tuple(_hmac_sha1_pads(k) for k in keys)
        self._hash_length = hash_length
        self._hash_min_length = hash_min_length
        self._max_age = max_age_days
        self._separator = separator
        self._url_hash = hash_alphabet == "base64url"
        self._domain = domain
        self._domain_lower = domain.lower()
        self._always_rewrite = always_rewrite
        self._clock = clock

    @property
    def domain(self) -> str:
        """The domain of every SRS address this rewriter makes (in A-label form)."""
        return self._domain

    @property
    def max_age_days(self) -> int:
        return self._max_age

    # -- the MAC and the stamp ----------------------------------------------

    @staticmethod
    def _digest(key: _Pads, fields: tuple[str, ...]) -> bytes:
        inner = key[0].copy()
        # The fields are MACed back to back, so one update of their join is
        # the same. bytes.lower() folds ASCII letters only, as Perl's lc and
        # C's tolower do; surrogateescape carries undecodable octets from the
        # MTA through unchanged.
        inner.update("".join(fields).encode("utf-8", "surrogateescape").lower())
        outer = key[1].copy()
        outer.update(inner.digest())
        return binascii.b2a_base64(outer.digest(), newline=False)

    def _sign(self, *fields: str) -> str:
        tag = self._digest(self._keys[0], fields)[: self._hash_length]
        return (tag.translate(_TO_URL) if self._url_hash else tag).decode("ascii")

    def _verify(self, tag: str, *fields: str) -> None:
        if len(tag) < self._hash_min_length:
            raise BadHash(
                f"SRS hash {tag!r} is {len(tag)} characters, shorter than the minimum of "
                f"{self._hash_min_length}"
            )
        # Either alphabet verifies, in any case: a site that moves between
        # base64 and base64url keeps reversing the addresses it issued.
        given = tag.encode("ascii").translate(_FOLD)
        for key in self._keys:
            expected = self._digest(key, fields)[: len(given)].translate(_FOLD)
            if hmac.compare_digest(expected, given):
                return
        raise BadHash(f"SRS hash {tag!r} does not verify: forged or damaged address")

    @staticmethod
    def _day(now: float) -> int:
        return int(now // _DAY)

    @classmethod
    def stamp(cls, now: float) -> str:
        """The two-character day stamp for the Unix time ``now``."""
        day = cls._day(now)
        return _BASE32[(day >> 5) & 31] + _BASE32[day & 31]

    def _check_stamp(self, stamp: str, now: float) -> None:
        then = (_BASE32_VALUE[stamp[0]] << 5) | _BASE32_VALUE[stamp[1]]
        # Stamps cycle every 1024 days; one from the future reads as very old.
        age = (self._day(now) - then) % _TICKSLOTS
        if age > self._max_age:
            if age > _TICKSLOTS // 2:
                raise Expired(f"SRS day stamp {stamp!r} lies in the future")
            raise Expired(
                f"SRS day stamp {stamp!r} is {age} days old, older than the maximum of "
                f"{self._max_age}"
            )

    # -- forward ------------------------------------------------------------

    def forward(self, address: str, now: float | None = None) -> str:
        """The SRS address to use as envelope sender in place of ``address``.

        An SRS0 or SRS1 address of another forwarder becomes an SRS1 address;
        anything else an SRS0 address. An address already in this rewriter's
        domain comes back unchanged (unless ``always_rewrite``). Raises
        :class:`AddressError` for what cannot be a sender: the null sender,
        no ``@``, an ``@`` in the local part, an invalid IDN domain.
        """
        if not isinstance(address, str):
            raise AddressError(f"sender must be a string, not {type(address).__name__}")
        if len(address) > MAX_ADDRESS_LENGTH:
            raise AddressError(
                f"sender is {len(address)} characters long, more than {MAX_ADDRESS_LENGTH}"
            )
        if address in ("", "<>"):
            raise AddressError("the null sender is never rewritten")
        parts = _split(address)
        if parts is None:
            raise AddressError(f"sender {_short(address)} is not of the form local@domain")
        quoted_local, host = parts
        local = _unquote_local(quoted_local)
        if "@" in local or "<" in address or ">" in address:
            raise AddressError(f"sender {_short(address)} is not a plain mailbox")
        if _NOT_IN_HOST(host):
            raise AddressError(f"sender domain {_short(host)} is not a domain")
        host = _a_label(host, "sender")
        if host.lower() == self._domain_lower and not self._always_rewrite:
            return address

        tag = _tag(local)
        if tag == "SRS1":
            # Keep the chain one hop long: re-sign the first forwarder's part.
            fields = local[5:].split(_SEP, 2)
            if len(fields) == 3 and fields[1] and fields[2]:
                _, first_host, rest = fields
                mac = self._sign(first_host, rest)
                return format_address(
                    f"SRS1{self._separator}{mac}={first_host}={rest}", self._domain
                )
            # A broken SRS1 address is rewritten as a plain sender below.
        elif tag == "SRS0":
            rest = local[4:]  # keeps its separator: hence the "==" in SRS1
            mac = self._sign(host, rest)
            return format_address(f"SRS1{self._separator}{mac}={host}={rest}", self._domain)

        stamp = self.stamp(self._clock() if now is None else now)
        mac = self._sign(stamp, host, local)
        return format_address(f"SRS0{self._separator}{mac}={stamp}={host}={local}", self._domain)

    # -- reverse ------------------------------------------------------------

    def parse(self, address: str, now: float | None = None) -> SRSAddress:
        """Verify the SRS address ``address`` and take it apart.

        Raises :class:`NotSRS`, :class:`Malformed`, :class:`BadHash` or
        :class:`Expired`. The domain of ``address`` is not checked: the
        caller decides which domains are its own.
        """
        if not isinstance(address, str):
            raise NotSRS(f"address must be a string, not {type(address).__name__}")
        if len(address) > MAX_ADDRESS_LENGTH:
            raise Malformed(
                f"address is {len(address)} characters long, more than {MAX_ADDRESS_LENGTH}"
            )
        parts = _split(address)
        local = _unquote_local(parts[0] if parts else address)
        kind = _tag(local)
        if kind is None:
            raise NotSRS(f"{_short(address)} is not an SRS address")
        if parts is None:
            raise Malformed(f"SRS address {_short(address)} has no domain")
        if kind == "SRS0":
            return self._parse_srs0(address, local, now)
        return self._parse_srs1(address, local)

    def _check_tag_chars(self, address: str, tag: str) -> None:
        if not tag or len(tag) > _MAX_HASH or not _BASE64_CHARS.issuperset(tag):
            raise Malformed(f"SRS address {_short(address)} has no valid hash")

    def _parse_srs0(self, address: str, local: str, now: float | None) -> SRSAddress:
        fields = local[5:].split(_SEP, 3)
        if len(fields) != 4 or not all(fields):
            raise Malformed(
                f"SRS0 address {_short(address)} does not have the four fields hash=stamp=host=user"
            )
        tag, stamp, host, user = fields
        self._check_tag_chars(address, tag)
        if len(stamp) != 2 or stamp[0] not in _BASE32_VALUE or stamp[1] not in _BASE32_VALUE:
            raise Malformed(f"SRS0 address {_short(address)} has no valid day stamp")
        if "@" in user:
            raise Malformed(f"SRS0 address {_short(address)} hides an address in its user field")
        self._verify(tag, stamp, host, user)
        self._check_stamp(stamp, self._clock() if now is None else now)
        return SRSAddress("SRS0", tag, stamp, host, user, format_address(user, host))

    def _parse_srs1(self, address: str, local: str) -> SRSAddress:
        fields = local[5:].split(_SEP, 2)
        if len(fields) != 3 or not all(fields):
            raise Malformed(
                f"SRS1 address {_short(address)} does not have the three fields hash=host=rest"
            )
        tag, host, rest = fields
        self._check_tag_chars(address, tag)
        if rest[0] not in _SEPARATORS or "@" in rest:
            raise Malformed(f"SRS1 address {_short(address)} does not carry an SRS0 address")
        self._verify(tag, host, rest)
        return SRSAddress("SRS1", tag, None, host, rest, format_address("SRS0" + rest, host))

    def reverse(self, address: str, now: float | None = None) -> str:
        """Where a bounce to the SRS address ``address`` goes.

        For SRS0, the original sender; for SRS1, the first forwarder's SRS0
        address (whose stamp that forwarder checks). Raises as :meth:`parse`.
        """
        return self.parse(address, now).reversed
