"""fwdmilter.dnswire reads replies as dnspython does, or says it cannot."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
import pytest

from fwdmilter import dnswire


def _reply(qname: str, qtype: str, answers: list[tuple[str, str, int, list[str]]]) -> bytes:
    query = dns.message.make_query(qname, qtype)
    response = dns.message.make_response(query)
    for owner, rtype, ttl, texts in answers:
        response.answer.append(dns.rrset.from_text_list(owner, ttl, "IN", rtype, texts))
    return response.to_wire()  # names compressed, as servers send them


def _parse(qname: str, qtype: str, wire: bytes) -> dnswire.Reply:
    rtype = dnswire.TYPES[qtype]
    qid = int.from_bytes(wire[:2], "big")
    _, question = dnswire.query(qid, qname, rtype)
    return dnswire.parse(wire, qid, question, qname, rtype)


def _dnspython(qname: str, qtype: str, wire: bytes) -> tuple[list[object], int]:
    """What pyspf gets through dnspython from the same reply (fwdmilter.spf.pyspf_answers)."""
    msg = dns.message.from_wire(wire)
    assert isinstance(msg, dns.message.QueryMessage)
    chain = msg.resolve_chaining()
    if chain.answer is None:
        return [], 0
    out: list[object] = []
    for rdata in chain.answer:
        if qtype in ("A", "AAAA"):
            out.append(rdata.address)
        elif qtype == "MX":
            out.append((rdata.preference, rdata.exchange))
        elif qtype == "PTR":
            out.append(rdata.target.to_text(True))
        else:
            out.append(rdata.strings)
    return out, chain.minimum_ttl


CASES = [
    ("a.example", "TXT", [("a.example.", "TXT", 300, ['"v=spf1 -all"', '"two" "strings"'])]),
    ("a.example", "A", [("a.example.", "A", 60, ["192.0.2.1", "192.0.2.2"])]),
    ("a.example", "AAAA", [("a.example.", "AAAA", 60, ["2001:db8::1", "::ffff:192.0.2.1"])]),
    ("a.example", "MX", [("a.example.", "MX", 10, ["10 mx1.a.example.", "20 MX2.A.example."])]),
    ("a.example", "MX", [("a.example.", "MX", 10, ["0 ."])]),
    ("1.2.0.192.in-addr.arpa", "PTR", [("1.2.0.192.in-addr.arpa.", "PTR", 5, ["h.a.example."])]),
    # A chain: the answer's TTL is the least along it.
    (
        "Alias.example",
        "TXT",
        [
            ("alias.example.", "CNAME", 30, ["mid.example."]),
            ("mid.example.", "CNAME", 300, ["real.example."]),
            ("real.example.", "TXT", 600, ['"v=spf1 ip4:192.0.2.0/24 -all"']),
        ],
    ),
    # A chain that ends nowhere: no answer.
    ("alias.example", "TXT", [("alias.example.", "CNAME", 30, ["gone.example."])]),
    # Records of another name or type are not the answer.
    ("a.example", "TXT", [("b.example.", "TXT", 30, ['"v=spf1 -all"'])]),
    ("a.example", "TXT", []),
]


@pytest.mark.parametrize(("qname", "qtype", "answers"), CASES)
def test_reads_what_dnspython_reads(
    qname: str, qtype: str, answers: list[tuple[str, str, int, list[str]]]
) -> None:
    wire = _reply(qname, qtype, answers)
    ours = _parse(qname, qtype, wire)
    theirs, ttl = _dnspython(qname, qtype, wire)
    assert list(ours.data) == theirs
    assert not ours.truncated
    assert ours.rcode == 0
    if theirs:
        assert ours.ttl == ttl


def test_a_reply_to_another_question_or_query_is_refused() -> None:
    wire = _reply("a.example", "TXT", [("a.example.", "TXT", 30, ['"x"'])])
    qid = int.from_bytes(wire[:2], "big")
    _, question = dnswire.query(qid, "b.example", dnswire.TXT)
    with pytest.raises(dnswire.Unreadable):
        dnswire.parse(wire, qid, question, "b.example", dnswire.TXT)
    _, question = dnswire.query(qid, "a.example", dnswire.A)
    with pytest.raises(dnswire.Unreadable):
        dnswire.parse(wire, qid, question, "a.example", dnswire.A)
    _, question = dnswire.query(qid, "a.example", dnswire.TXT)
    with pytest.raises(dnswire.Unreadable):
        dnswire.parse(wire, qid ^ 1, question, "a.example", dnswire.TXT)
    # The name's case may differ (RFC 4343).
    _, question = dnswire.query(qid, "A.Example", dnswire.TXT)
    assert dnswire.parse(wire, qid, question, "A.Example", dnswire.TXT).data == ((b"x",),)


@pytest.mark.parametrize("cut", [13, 20, 30, 40, -1])
def test_a_cut_reply_is_unreadable(cut: int) -> None:
    wire = _reply("a.example", "TXT", [("a.example.", "TXT", 30, ['"v=spf1 -all"'])])
    qid = int.from_bytes(wire[:2], "big")
    _, question = dnswire.query(qid, "a.example", dnswire.TXT)
    with pytest.raises(dnswire.Unreadable):
        dnswire.parse(wire[:cut], qid, question, "a.example", dnswire.TXT)


def test_a_compression_loop_is_unreadable() -> None:
    wire = bytearray(_reply("a.example", "TXT", [("a.example.", "TXT", 30, ['"x"'])]))
    qid = int.from_bytes(wire[:2], "big")
    _, question = dnswire.query(qid, "a.example", dnswire.TXT)
    at = 12 + len(question)  # the answer's owner: a pointer; make it point at itself
    wire[at : at + 2] = bytes([0xC0 | (at >> 8), at & 0xFF])
    with pytest.raises(dnswire.Unreadable):
        dnswire.parse(bytes(wire), qid, question, "a.example", dnswire.TXT)


def test_names_that_need_escaping_are_left_to_dnspython() -> None:
    with pytest.raises(dnswire.Unreadable):
        dnswire.query(1, "bücher.example", dnswire.TXT)
    name = dns.name.Name([b"we\x00ird", b"example", b""])
    query = dns.message.make_query("a.example", "MX")
    response = dns.message.make_response(query)
    response.answer.append(
        dns.rrset.from_rdata_list(
            "a.example.",
            30,
            [dns.rdata.from_text("IN", "MX", "10 placeholder.example.").replace(exchange=name)],
        )
    )
    with pytest.raises(dnswire.Unreadable):
        _parse("a.example", "MX", response.to_wire())


def test_a_truncated_reply_says_so() -> None:
    query = dns.message.make_query("a.example", "TXT")
    response = dns.message.make_response(query)
    response.flags |= dns.flags.TC
    reply = _parse("a.example", "TXT", response.to_wire())
    assert reply.truncated


def test_nxdomain_is_its_rcode() -> None:
    query = dns.message.make_query("a.example", "TXT")
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    reply = _parse("a.example", "TXT", response.to_wire())
    assert (reply.rcode, reply.data) == (3, ())
    assert dns.rdatatype.TXT == dnswire.TXT
