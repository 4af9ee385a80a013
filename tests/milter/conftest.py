"""Fixtures of the TestCtx tests: a milter runtime on a real SQLite store and
the harness's DNS server, with one forwarding address (bob@fwd.example to
bob@inner.example). test_milter_ctx.py has a fuller table of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fwdmilter import runtime
from fwdmilter.states import Forward
from tests.harness.dns import DnsServer
from tests.milter.test_milter_ctx import Hooks, make_runtime


@pytest.fixture
def rt(tmp_path: Path, dns: DnsServer) -> Iterator[runtime.Runtime]:
    r = make_runtime(tmp_path, dns, f'url = "sqlite://{tmp_path}/state.db"')
    r.store.put_forward(Forward("bob@fwd.example", ("bob@inner.example",)))
    yield r
    r.store.close()


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()
