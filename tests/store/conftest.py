"""The store under test, once per backend: SQLite, and Redis reached every way.

``store`` (and ``make_store`` for tests needing several stores on one
backend) is parametrized over :data:`BACKENDS`; each Redis store gets a fresh
key prefix on a shared session server, each SQLite store a fresh file.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import Forward, HeldEntry, MessageRecord, Store
from tests.harness.redis import RedisCluster3, RedisSentinel, RedisServer
from tests.harness.redis_fixtures import ACL_USER

BACKENDS = [
    "sqlite",
    "redis",
    "redis-unix",
    "redis-acl",
    "rediss",
    "redis-sentinel",
    "redis-cluster",
]
REDIS_BACKENDS = BACKENDS[1:]

_serial = itertools.count(1)


class Clock:
    """An injected clock: tests move time by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Backend:
    name: str
    #: Settings for a new, empty store (a new prefix or a new file).
    new_settings: Callable[[], StoreSettings]

    @property
    def is_redis(self) -> bool:
        return self.name != "sqlite"


def _redis_settings(url: str, **kwargs: str) -> Callable[[], StoreSettings]:
    def new() -> StoreSettings:
        # Under fwdmilter: the ACL test user may touch those keys only.
        return StoreSettings(url=url, prefix=f"fwdmilter:t{next(_serial)}", **kwargs)

    return new


def make_backend(name: str, request: pytest.FixtureRequest, folder: Path) -> Backend:
    """The backend ``name``, starting its servers if this session has not yet."""
    if name == "sqlite":
        return Backend(
            name, lambda: StoreSettings(url=f"sqlite://{folder}/db{next(_serial)}/state.db")
        )
    if name in ("redis", "redis-unix"):
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url if name == "redis" else server.unix_url
        return Backend(name, _redis_settings(url))
    if name == "redis-acl":
        server = request.getfixturevalue("redis_acl_server")
        password_file = folder / "redis-password"
        password_file.write_text(ACL_USER[1] + "\n")
        return Backend(name, _redis_settings(server.url, password_file=str(password_file)))
    if name == "rediss":
        server = request.getfixturevalue("redis_tls_server")
        assert server.tls is not None
        tls = {
            "tls_ca_file": str(server.tls.ca),
            "tls_cert_file": str(server.tls.client_cert),
            "tls_key_file": str(server.tls.client_key),
        }
        return Backend(name, _redis_settings(server.url, **tls))
    if name == "redis-sentinel":
        sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
        return Backend(name, _redis_settings(sentinel.url))
    if name == "redis-cluster":
        cluster: RedisCluster3 = request.getfixturevalue("redis_cluster")
        return Backend(name, _redis_settings(cluster.url))
    raise ValueError(name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


@pytest.fixture
def make_store(backend: Backend, clock: Clock) -> Iterator[Callable[..., Store]]:
    """Opens stores on ``backend`` (each empty unless given settings); closes them."""
    opened: list[Store] = []

    def make(settings: StoreSettings | None = None) -> Store:
        store = open_store(settings or backend.new_settings(), instance="tests", clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    return make_store()


# -- items ----------------------------------------------------------------------


def fwd(rcpt: str = "alice@fwd.example", target: str = "alice@dest.example", **kw: Any) -> Forward:
    return replace(Forward(rcpt, (target,), created=1000.0, updated=1000.0), **kw)


def rec(
    srs: str = "srs0=hhhh=tt=sender.example=bob@fwd.example",
    record_id: str = "r1",
    **kw: Any,
) -> MessageRecord:
    base = MessageRecord(
        srs=srs,
        record_id=record_id,
        msg_id="m-" + record_id,
        state="U",
        sender="bob@sender.example",
        rcpt="alice@fwd.example",
        target="alice@dest.example",
        created=1000.0,
        instance="mx1",
        queue_id="4XyZ1",
    )
    return replace(base, **kw)


def entry(target: str = "alice@dest.example", entry_id: str = "mx1/4AbC", **kw: Any) -> HeldEntry:
    base = HeldEntry(
        target=target,
        entry_id=entry_id,
        state="H",
        sender="bob@sender.example",
        rcpt="alice@fwd.example",
        queue_id=entry_id.rpartition("/")[2],
        host="mx1",
        reason="550 5.1.1 no such user",
        held_at=2000.0,
        srs="srs0=hhhh=tt=sender.example=bob@fwd.example",
        msg_id="m-1",
        contact="alice-alt@other.example",
    )
    return replace(base, **kw)
