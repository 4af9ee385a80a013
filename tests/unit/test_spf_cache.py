"""SPFChecker keeps DNS answers for their TTL, and no longer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fwdmilter.config import DNSSettings
from fwdmilter.spf import SPFChecker
from tests.harness.dns import DnsServer


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
