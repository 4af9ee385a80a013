"""Session fixtures: private Redis servers, started on first use, stopped at the end.

Registered by ``pytest_plugins`` in tests/conftest.py. A test that stops or
restarts a server takes its own (:func:`redis_private`), never a shared one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.redis import RedisCluster3, RedisSentinel, RedisServer

#: The ACL user of :func:`redis_acl_server` and its password.
ACL_USER = ("fwdmilter", "s3cret-Pa55")


@pytest.fixture(scope="session")
def redis_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("redis")


@pytest.fixture(scope="session")
def redis_server(redis_dir: Path) -> Iterator[RedisServer]:
    """A standalone server on TCP and a unix socket, no password."""
    server = RedisServer(redis_dir, unix_socket=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_acl_server(redis_dir: Path) -> Iterator[RedisServer]:
    """Default user off; :data:`ACL_USER` with the ACL docs/redis.md gives."""
    server = RedisServer(redis_dir, acl_user=ACL_USER)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_tls_server(redis_dir: Path) -> Iterator[RedisServer]:
    """TLS only, client certificates required (its CA and certificates in .tls)."""
    server = RedisServer(redis_dir, tls=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_sentinel(redis_dir: Path) -> Iterator[RedisSentinel]:
    setup = RedisSentinel(redis_dir)
    yield setup
    setup.stop()


@pytest.fixture(scope="session")
def redis_cluster(redis_dir: Path) -> Iterator[RedisCluster3]:
    cluster = RedisCluster3(redis_dir)
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_private(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, which it may stop and restart."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()
