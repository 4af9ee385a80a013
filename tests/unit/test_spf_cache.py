"""SPFChecker keeps DNS answers for their TTL, and no longer."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from fwdmilter.config import DNSSettings
from fwdmilter.spf import SPFChecker
from tests.harness.dns import ZONES, DnsName, DnsServer


@pytest.mark.parametrize(("ttl", "queries"), [(0, 3), (300, 1)])
def test_answers_are_cached_for_their_ttl(tmp_path: Path, ttl: int, queries: int) -> None:
    server = DnsServer(tmp_path / "dns", ttl=ttl)
    try:
        checker = SPFChecker(DNSSettings(nameservers=("127.0.0.1",), port=server.port, timeout=2.0))
        for _ in range(3):
            outcome = checker.check("127.0.0.1", "alice@pass.example", "helo.pass.example")
            assert outcome.result == "pass"
        asked = re.findall(r"query\[TXT\] pass\.example from", server.log())
        assert len(asked) == queries
    finally:
        server.stop()


def test_no_answer_is_kept_past_its_ttl(tmp_path: Path) -> None:
    server = DnsServer(tmp_path / "dns", ttl=1)
    try:
        checker = SPFChecker(DNSSettings(nameservers=("127.0.0.1",), port=server.port, timeout=2.0))
        for _ in range(2):
            assert checker.check("127.0.0.1", "alice@pass.example", "").result == "pass"
        time.sleep(1.2)
        assert checker.check("127.0.0.1", "alice@pass.example", "").result == "pass"
        asked = re.findall(r"query\[TXT\] pass\.example from", server.log())
        assert len(asked) == 2
    finally:
        server.stop()


@pytest.mark.parametrize("ttl", [0, 300])
def test_every_zone_gives_its_result(tmp_path: Path, ttl: int) -> None:
    """The direct UDP path and dnspython's resolver agree on every kind of
    answer: records, NXDOMAIN, no SPF record, a syntax error, no answer."""
    server = DnsServer(tmp_path / "dns", ttl=ttl)
    try:
        checker = SPFChecker(DNSSettings(nameservers=("127.0.0.1",), port=server.port, timeout=0.5))
        for zone in ZONES:
            if zone.spf is None or zone.name.startswith("helo."):
                continue
            for _ in range(2):  # the second from the cache when the TTL allows
                outcome = checker.check("127.0.0.1", f"alice@{zone.name}", "")
                assert (zone.name, outcome.result) == (zone.name, zone.spf)
    finally:
        server.stop()


def test_an_answer_too_long_for_udp_is_read_over_tcp(tmp_path: Path) -> None:
    filler = tuple(f"filler{i} " + "x" * 200 for i in range(3))
    zones = (DnsName("long.example", ("v=spf1 ip4:127.0.0.0/8 -all", *filler), "pass"),)
    server = DnsServer(tmp_path / "dns", zones=(*ZONES, *zones))
    try:
        checker = SPFChecker(DNSSettings(nameservers=("127.0.0.1",), port=server.port, timeout=2.0))
        assert checker.check("127.0.0.1", "alice@long.example", "").result == "pass"
        assert checker.check("192.0.2.7", "alice@long.example", "").result == "fail"
    finally:
        server.stop()


def test_a_dead_server_is_a_temperror_within_the_timeout(tmp_path: Path) -> None:
    server = DnsServer(tmp_path / "dns")
    port = server.port
    server.stop()
    checker = SPFChecker(DNSSettings(nameservers=("127.0.0.1",), port=port, timeout=0.5))
    started = time.monotonic()
    assert checker.check("127.0.0.1", "alice@pass.example", "").result == "temperror"
    assert time.monotonic() - started < 2.0
