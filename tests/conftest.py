"""Fixtures shared by the whole suite; the real components live in tests/harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.peers import MailSRS

pytest_plugins = ["tests.harness.mail_fixtures", "tests.harness.redis_fixtures"]


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the files of the session's servers."""
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def mail_srs() -> Iterator[MailSRS]:
    """One Perl process running Mail::SRS for the whole session."""
    peer = MailSRS()
    yield peer
    peer.close()
