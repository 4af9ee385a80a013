"""A malformed domain has no SPF record (RFC 7208 section 4.3), never a temperror."""

from __future__ import annotations

import dns.resolver
import pytest
import spf

from fwdmilter.spf import pyspf_answers
from tests.harness.proc import free_port


@pytest.fixture
def nowhere() -> dns.resolver.Resolver:
    """A resolver whose server does not exist: any query would fail."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = free_port()
    return resolver


@pytest.mark.parametrize(
    "name",
    [
        "a..b.example",  # an empty label
        "x" * 64 + ".example",  # a label over 63 octets
        ("abcdefgh." * 30) + "example",  # a name over 255 octets
        "\udcff.example",  # octets that were not UTF-8
        "☃\u200d.example",  # IDNA refuses it
        "\\.example",  # an escape: dnspython would ask for the label ".example"
        "a\\065.pass.example",
    ],
)
def test_malformed_names_have_no_records(nowhere: dns.resolver.Resolver, name: str) -> None:
    assert pyspf_answers(nowhere, name, "TXT", 0.5) == []


def test_a_well_formed_name_still_asks_the_server(nowhere: dns.resolver.Resolver) -> None:
    with pytest.raises(spf.TempError):
        pyspf_answers(nowhere, "pass.example", "TXT", 0.5)
