"""The DNS wire format, for the SPF checker's UDP lookups (RFC 1035 4.1).

Only what an SPF evaluation asks for: a query for one name and type, and
the records of a reply (A, AAAA, TXT, SPF, MX, PTR and the CNAMEs leading
to them). A reply this module does not read plainly (a name with bytes
that need escaping, a malformed record, a compression loop) raises
:class:`Unreadable`; the caller then asks dnspython, which reads everything.
dnspython's parser builds an object per record, name and enum: on the
milter's hot path that was most of the cost of a lookup.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final

import dns.ipv6
import dns.name

__all__ = ["A", "AAAA", "CNAME", "MX", "PTR", "SPF", "TXT", "Reply", "Unreadable", "query", "parse"]

A: Final = 1
CNAME: Final = 5
PTR: Final = 12
MX: Final = 15
TXT: Final = 16
AAAA: Final = 28
SPF: Final = 99
TYPES: Final = {"A": A, "AAAA": AAAA, "TXT": TXT, "SPF": SPF, "MX": MX, "PTR": PTR}

_IN: Final = 1
_RD: Final = 0x0100
_QR: Final = 0x8000
_TC: Final = 0x0200
_HEADER: Final = struct.Struct("!HHHHHH")
_RR: Final = struct.Struct("!HHIH")
#: Longest CNAME chain followed (dnspython's resolve_chaining allows 16).
_MAX_CHAIN: Final = 16
_PRINTABLE: Final = frozenset(range(0x21, 0x7F)) - {ord("."), ord("\\"), ord('"')}


class Unreadable(Exception):
    """A reply this module does not read: ask dnspython."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What a reply says about the question: its code, whether it was
    truncated, and the data of the records that answer it."""

    rcode: int
    truncated: bool
    #: The data of the answer's records, after the CNAMEs: str for A, AAAA
    #: and PTR, tuple of bytes for TXT and SPF, (preference, dns.name.Name) for MX.
    data: tuple[object, ...]
    #: Seconds the answer may be kept: the least TTL along the chain.
    ttl: int


def _name_wire(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not raw or len(raw) > 63:
            raise Unreadable(f"a label of {name!r} is empty or too long")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise Unreadable(f"{name!r} is too long")
    return bytes(out)


def query(qid: int, name: str, rtype: int) -> tuple[bytes, bytes]:
    """(the query's wire form, its question section) for ``name`` (plain
    ASCII labels, else Unreadable), class IN, recursion desired, no EDNS
    (as dnspython's resolver asks)."""
    try:
        question = _name_wire(name) + struct.pack("!HH", rtype, _IN)
    except UnicodeEncodeError:
        raise Unreadable(f"{name!r} is not plain ASCII") from None
    return _HEADER.pack(qid, _RD, 1, 0, 0, 0) + question, question


def _read_name(wire: bytes, offset: int) -> tuple[str, int]:
    """(the name at ``offset`` in lower case without the final dot, the
    offset after it where it is written, not where a pointer led)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if offset >= len(wire):
            raise Unreadable("a name runs past the reply")
        length = wire[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(wire):
                raise Unreadable("a cut pointer")
            if end < 0:
                end = offset + 2
            jumps += 1
            if jumps > 64:
                raise Unreadable("a compression loop")
            offset = ((length & 0x3F) << 8) | wire[offset + 1]
            continue
        if length & 0xC0:
            raise Unreadable("an unknown label type")
        offset += 1
        if length == 0:
            break
        raw = wire[offset : offset + length]
        if len(raw) != length or not _PRINTABLE.issuperset(raw):
            raise Unreadable("a label that needs escaping")
        labels.append(raw.decode("ascii").lower())
        offset += length
    return ".".join(labels), end if end >= 0 else offset


def _strings(rdata: bytes) -> tuple[bytes, ...]:
    out: list[bytes] = []
    i = 0
    while i < len(rdata):
        n = rdata[i]
        piece = rdata[i + 1 : i + 1 + n]
        if len(piece) != n:
            raise Unreadable("a cut TXT string")
        out.append(piece)
        i += 1 + n
    return tuple(out)


def parse(wire: bytes, qid: int, question: bytes, qname: str, rtype: int) -> Reply:
    """The reply ``wire`` to our query (id ``qid``, ``question`` as sent for
    ``qname``, ``rtype``). Raises Unreadable for anything else."""
    if len(wire) < _HEADER.size + len(question):
        raise Unreadable("a short reply")
    rid, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(wire)
    if rid != qid or not flags & _QR or qdcount != 1:
        raise Unreadable("not a reply to our query")
    echoed = wire[_HEADER.size : _HEADER.size + len(question)]
    # The question as asked: the name in any case (RFC 4343), type and class exact.
    if echoed[:-4].lower() != question[:-4].lower() or echoed[-4:] != question[-4:]:
        raise Unreadable("a reply to another question")
    rcode = flags & 0x000F
    if flags & _TC:
        return Reply(rcode, True, (), 0)
    offset = _HEADER.size + len(question)
    records: list[tuple[str, int, int, int, int]] = []  # owner, type, ttl, start, end
    for _ in range(ancount):
        owner, offset = _read_name(wire, offset)
        if offset + _RR.size > len(wire):
            raise Unreadable("a cut record")
        kind, klass, ttl, rdlen = _RR.unpack_from(wire, offset)
        offset += _RR.size
        if offset + rdlen > len(wire):
            raise Unreadable("a cut record")
        if klass == _IN:
            records.append((owner, kind, ttl & 0x7FFFFFFF, offset, offset + rdlen))
        offset += rdlen
    current = qname.lower().rstrip(".")
    least = 0x7FFFFFFF
    for _ in range(_MAX_CHAIN):
        found = [r for r in records if r[0] == current and r[1] == rtype]
        if found:
            least = min(least, *(r[2] for r in found))
            return Reply(rcode, False, tuple(_data(wire, r[1], r[3], r[4]) for r in found), least)
        alias = [r for r in records if r[0] == current and r[1] == CNAME]
        if not alias:
            break
        least = min(least, alias[0][2])
        current = _read_name(wire, alias[0][3])[0]
    return Reply(rcode, False, (), 0)


def _data(wire: bytes, kind: int, start: int, end: int) -> object:
    rdata = wire[start:end]
    if kind == A:
        if len(rdata) != 4:
            raise Unreadable("an A record of the wrong size")
        return socket.inet_ntop(socket.AF_INET, rdata)
    if kind == AAAA:
        if len(rdata) != 16:
            raise Unreadable("an AAAA record of the wrong size")
        return dns.ipv6.inet_ntoa(rdata)
    if kind in (TXT, SPF):
        return _strings(rdata)
    if kind == MX:
        if len(rdata) < 3:
            raise Unreadable("a cut MX record")
        exchange, _ = _read_name(wire, start + 2)
        return (struct.unpack_from("!H", rdata)[0], dns.name.from_text(exchange or "."))
    if kind == PTR:
        return _read_name(wire, start)[0]
    raise Unreadable(f"records of type {kind}")
