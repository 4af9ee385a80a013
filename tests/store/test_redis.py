"""What only the Redis backend promises: round trips, key layout, outages, URLs."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from fwdmilter.config import StoreSettings
from fwdmilter.errors import ConfigError, StoreSchemaError, StoreUnavailable
from fwdmilter.store import describe_url, open_store
from fwdmilter.store._url import parse_nodes
from fwdmilter.store.base import SCHEMA_VERSION, Store
from fwdmilter.store.redis import RedisStore
from tests.harness.proc import free_port
from tests.harness.redis import RedisCluster3, RedisServer
from tests.store.conftest import REDIS_BACKENDS, Backend, Clock, entry, fwd, make_backend, rec


def _open(settings: StoreSettings, clock: Clock | None = None) -> RedisStore:
    store = open_store(settings, instance="tests", clock=clock or Clock(time.time()))
    assert isinstance(store, RedisStore)
    return store


def _one_message(store: Store, n: int = 1) -> None:
    """What the milter does for one forwarded message with ``n`` recipients."""
    rcpts = [f"u{i}@fwd.example" for i in range(n)]
    infos = store.rcpt_info(rcpts)
    assert all(i.forward is not None for i in infos)
    store.record_messages(
        [rec(record_id=f"{time.monotonic_ns()}.{i}", rcpt=r) for i, r in enumerate(rcpts)],
        ttl=3600,
    )


# -- the round-trip budget ---------------------------------------------------------------


@pytest.fixture(params=REDIS_BACKENDS)
def redis_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


def test_steady_state_message_costs_two_round_trips(redis_backend: Backend) -> None:
    store = _open(redis_backend.new_settings())
    try:
        for i in range(3):
            store.put_forward(fwd(f"u{i}@fwd.example", f"t{i}@dest.example"))
        store.hold(entry("t1@dest.example"))
        before = store.round_trips
        _one_message(store, 3)  # first sight of these recipients: one trip more
        assert store.round_trips - before == 3
        for _ in range(5):
            before = store.round_trips
            _one_message(store, 3)
            assert store.round_trips - before == 2  # rcpt_info 1 + record_messages 1
        # A changed target costs the second trip once, then the budget holds again.
        store.put_forward(fwd("u0@fwd.example", "t1@dest.example"))
        before = store.round_trips
        assert [i.held for i in store.rcpt_info(["u0@fwd.example"])] == [1]
        assert store.round_trips - before == 2
        before = store.round_trips
        assert [i.held for i in store.rcpt_info(["u0@fwd.example"])] == [1]
        assert store.round_trips - before == 1
    finally:
        store.close()


def test_commands_one_forwarded_message_costs(redis_server: RedisServer) -> None:
    store = _open(StoreSettings(url=redis_server.url, prefix="fwdmilter:cost"))
    try:
        store.put_forward(fwd("u0@fwd.example", "t0@dest.example"))
        store.put_forward(fwd("u1@fwd.example", "t1@dest.example"))
        _one_message(store, 2)  # warm: the targets are known now
        with redis_server.admin() as admin:
            admin.config_resetstat()
            _one_message(store, 2)
            stats = admin.info("commandstats")
    finally:
        store.close()
    calls = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))
    }
    print("\nINFO commandstats for one message with two recipients:", calls)
    # rcpt_info: one pipeline of HGETALL (forward) + HMGET (counters) per recipient.
    # record_messages: MULTI, per record HSET + PEXPIRE, SADD and two PEXPIRE of
    # the address's set (NX then GT), EXEC.
    assert calls == {
        "hgetall": 2,
        "hmget": 2,
        "multi": 1,
        "hset": 2,
        "pexpire": 4,
        "sadd": 1,
        "exec": 1,
    }


# -- the keys, as docs/redis.md shows them -----------------------------------------------


def test_key_layout_and_lifetimes(redis_server: RedisServer) -> None:
    store = _open(StoreSettings(url=redis_server.url, prefix="fwdmilter:layout"))
    try:
        store.put_forward(fwd())
        store.record_messages([rec(record_id="r1")], ttl=100)
        store.record_messages([rec(record_id="r2")], ttl=900)
        store.hold(entry("alice@dest.example", "mx1/4AbC"))
        store.hold(entry("alice@dest.example", "mx1/5DeF"))
        store.mark_requeued("alice@dest.example", "mx1/5DeF", 1.0)
    finally:
        store.close()
    p = "fwdmilter:layout"
    srs = rec().srs
    with redis_server.admin() as r:
        keys = sorted(r.scan_iter(match=f"{p}:*"))
        assert keys == sorted(
            [
                f"{p}:schema",
                f"{p}:forward:{{alice@fwd.example}}",
                f"{p}:message:{{{srs}}}:r1",
                f"{p}:message:{{{srs}}}:r2",
                f"{p}:messages:{{{srs}}}",
                f"{p}:held:{{alice@dest.example}}:mx1/4AbC",
                f"{p}:held:{{alice@dest.example}}:mx1/5DeF",
                f"{p}:held-index:{{alice@dest.example}}",
                f"{p}:held-count:{{alice@dest.example}}",
            ]
        )
        assert r.get(f"{p}:schema") == str(SCHEMA_VERSION)
        assert r.ttl(f"{p}:forward:{{alice@fwd.example}}") == -1
        assert 95 <= r.ttl(f"{p}:message:{{{srs}}}:r1") <= 100
        assert 895 <= r.ttl(f"{p}:message:{{{srs}}}:r2") <= 900
        assert 895 <= r.ttl(f"{p}:messages:{{{srs}}}") <= 900  # as long as the newest
        assert r.hgetall(f"{p}:held-count:{{alice@dest.example}}") == {"H": "1", "R": "1"}
        assert r.smembers(f"{p}:held-index:{{alice@dest.example}}") == {"mx1/4AbC", "mx1/5DeF"}
        assert r.ttl(f"{p}:held:{{alice@dest.example}}:mx1/4AbC") == -1
        assert r.hget(f"{p}:held:{{alice@dest.example}}:mx1/5DeF", "state") == "R"
        assert r.hget(f"{p}:forward:{{alice@fwd.example}}", "target") == "alice@dest.example"


def test_a_shorter_ttl_never_shortens_the_set(redis_server: RedisServer) -> None:
    store = _open(StoreSettings(url=redis_server.url, prefix="fwdmilter:ttl"))
    try:
        store.record_messages([rec(record_id="long")], ttl=900)
        store.record_messages([rec(record_id="short")], ttl=50)
    finally:
        store.close()
    with redis_server.admin() as r:
        assert r.ttl(f"fwdmilter:ttl:messages:{{{rec().srs}}}") > 800


def test_cluster_keeps_each_target_and_address_in_one_slot(redis_cluster: RedisCluster3) -> None:
    store = _open(StoreSettings(url=redis_cluster.url, prefix="fwdmilter:slots"))
    try:
        for i in range(20):
            store.hold(entry(f"t{i}@dest.example", "mx1/A"))
            store.record_messages([rec(f"srs0=s{i}@fwd.example", "1")], 60)
    finally:
        store.close()
    with redis_cluster.admin() as r:
        keys = list(r.scan_iter(match="fwdmilter:slots:*", target_nodes=RedisCluster.PRIMARIES))
        slots_by_tag: dict[str, set[int]] = {}
        for key in keys:
            if "{" in key:
                tag = key[key.index("{") + 1 : key.index("}")]
                slots_by_tag.setdefault(tag, set()).add(r.keyslot(key))
        assert len(slots_by_tag) == 40
        assert all(len(s) == 1 for s in slots_by_tag.values())
        # ...and the keys are spread over the three masters.
        nodes = {r.get_node_from_key(k).name for k in keys}
        assert len(nodes) == 3


# -- outages -----------------------------------------------------------------------------


def _assert_unavailable_soon(call: Callable[[], object], within: float) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        call()
    assert time.monotonic() - started < within


def test_outage_then_recovery_with_the_same_store(redis_private: RedisServer) -> None:
    store = _open(StoreSettings(url=redis_private.url, timeout=0.5))
    try:
        store.put_forward(fwd())
        store.hold(entry())
        assert store.rcpt_info(["alice@fwd.example"])[0].held == 1

        redis_private.stop()
        for call in (
            store.ping,
            lambda: store.rcpt_info(["alice@fwd.example"]),
            lambda: store.record_messages([rec()], 60),
            lambda: store.hold(entry(entry_id="mx1/B")),
            store.held,
            store.list_forwards,
        ):
            _assert_unavailable_soon(call, within=1.0)

        redis_private.restart()  # same port, empty (no persistence)
        store.ping()
        assert store.rcpt_info(["alice@fwd.example"]) == [store.rcpt_info(["alice@fwd.example"])[0]]
        store.put_forward(fwd())
        # The scripts are gone with the old server: EVALSHA loads them again.
        assert store.hold(entry())
        assert store.rcpt_info(["alice@fwd.example"])[0].held == 1
        store.record_messages([rec()], 60)
        assert len(store.messages(rec().srs)) == 1
        # Pipelined scripts too (import_items), after another loss of the scripts.
        redis_private.restart()
        assert store.import_items([fwd(), entry(), rec(expires=time.time() + 60)]) == 3
        assert store.held_counts(entry().target) == (1, 0)
    finally:
        store.close()


def test_outage_under_load(redis_private: RedisServer) -> None:
    """Threads keep working through a stop and a restart: while Redis is away
    every failure is StoreUnavailable, and afterwards every thread succeeds."""
    store = _open(StoreSettings(url=redis_private.url, timeout=0.5))
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def work(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                store.put_forward(fwd(f"u{n}@fwd.example", f"t{n}@dest.example"))
                store.rcpt_info([f"u{n}@fwd.example"])
                store.record_messages([rec(record_id=f"{n}.{i}")], 60)
                store.hold(entry(f"t{n}@dest.example", f"mx1/{i}"))
                store.drop(f"t{n}@dest.example", f"mx1/{i}")
                outcomes.append((time.monotonic(), "ok"))
            except StoreUnavailable:
                outcomes.append((time.monotonic(), "unavailable"))
                time.sleep(0.01)
            except Exception as exc:  # noqa: BLE001 (the test's point: nothing else)
                outcomes.append((time.monotonic(), repr(exc)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        redis_private.stop()
        time.sleep(0.5)
        redis_private.restart()
        back = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        store.close()
    kinds = {kind for _, kind in outcomes}
    assert kinds == {"ok", "unavailable"}, kinds
    after = [kind for at, kind in outcomes if at > back + 0.6]  # timeout + margin
    assert after and set(after) == {"ok"}


def test_a_stalled_server_times_out_and_does_not_poison_the_pool(
    redis_private: RedisServer,
) -> None:
    store = _open(StoreSettings(url=redis_private.url, timeout=0.3))
    try:
        store.put_forward(fwd())
        store.put_forward(fwd("bob@fwd.example", "bob@dest.example"))
        assert redis_private.proc is not None
        redis_private.proc.signal(signal.SIGSTOP)
        try:
            _assert_unavailable_soon(lambda: store.rcpt_info(["alice@fwd.example"]), 0.9)
            _assert_unavailable_soon(lambda: store.get_forward("bob@fwd.example"), 0.9)
        finally:
            redis_private.proc.signal(signal.SIGCONT)
        # The late replies to the timed-out commands must not be read as the
        # answers to new ones: each reply matches its question.
        for _ in range(5):
            assert store.get_forward("bob@fwd.example") == fwd(
                "bob@fwd.example", "bob@dest.example"
            )
            assert store.rcpt_info(["alice@fwd.example"])[0].forward == fwd()
    finally:
        store.close()


def test_unreachable_at_open_is_unavailable(tmp_path: Path) -> None:
    port = free_port()
    for url in (f"redis://127.0.0.1:{port}/0", f"unix://{tmp_path}/none.sock"):
        _assert_unavailable_soon(
            lambda url=url: open_store(StoreSettings(url=url, timeout=0.5)), within=1.5
        )


# -- refusals ----------------------------------------------------------------------------


def test_newer_or_foreign_schema_is_refused(redis_server: RedisServer) -> None:
    with redis_server.admin() as r:
        r.set("fwdmilter:newer:schema", SCHEMA_VERSION + 1)
        r.set("fwdmilter:foreign:schema", "hello")
    with pytest.raises(StoreSchemaError, match="newer fwdmilter"):
        _open(StoreSettings(url=redis_server.url, prefix="fwdmilter:newer"))
    with pytest.raises(StoreSchemaError, match="not a schema version"):
        _open(StoreSettings(url=redis_server.url, prefix="fwdmilter:foreign"))


def test_data_of_the_wrong_shape_is_a_schema_error(redis_server: RedisServer) -> None:
    store = _open(StoreSettings(url=redis_server.url, prefix="fwdmilter:bad"))
    try:
        with redis_server.admin() as r:
            r.set("fwdmilter:bad:forward:{x@fwd.example}", "not a hash")
            r.hset(
                "fwdmilter:bad:held:{t@dest.example}:mx1/A",
                mapping={"target": "t@dest.example", "entry_id": "mx1/A", "state": "Z"},
            )
            r.hset("fwdmilter:bad:held:{t@dest.example}:mx1/B", mapping={"entry_id": "x"})
        with pytest.raises(StoreSchemaError, match="WRONGTYPE"):
            store.get_forward("x@fwd.example")
        with pytest.raises(
            StoreSchemaError, match=r"held:\{t@dest.example\}:mx1/A: field 'state' is 'Z'"
        ):
            store.get_held("t@dest.example", "mx1/A")
        with pytest.raises(StoreSchemaError, match="'target' is missing"):
            store.get_held("t@dest.example", "mx1/B")
    finally:
        store.close()


def test_wrong_password_and_missing_permission(
    redis_acl_server: RedisServer, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    with pytest.raises(StoreSchemaError, match="refuses our user"):
        _open(StoreSettings(url=redis_acl_server.url, password_file=str(wrong)))
    right = tmp_path / "right"
    right.write_text("s3cret-Pa55\n")
    # The ACL allows keys under fwdmilter:* only.
    with pytest.raises(StoreSchemaError, match="refuses our user"):
        _open(StoreSettings(url=redis_acl_server.url, password_file=str(right), prefix="other"))


def test_client_name_shows_the_instance(redis_server: RedisServer) -> None:
    store = open_store(StoreSettings(url=redis_server.url), instance="mx 1")
    try:
        store.ping()
        with redis_server.admin() as r:
            names = {c["name"] for c in r.client_list()}
        assert "fwdmilter-mx_1" in names
    finally:
        store.close()


# -- URLs and settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (StoreSettings(url="mysql://x/y"), "unknown scheme"),
        (StoreSettings(url="sqlite://relative/state.db"), "sqlite:///ABSOLUTE/PATH"),
        (StoreSettings(url="sqlite:///a.db?mode=ro"), "no options"),
        (StoreSettings(url="sqlite:///a.db", password_file="/x"), "store.password_file"),
        (StoreSettings(url="redis://h:1/0", prefix="a{b}"), "store.prefix"),
        (StoreSettings(url="redis://h:1/0", prefix=""), "store.prefix"),
        (StoreSettings(url="redis://h:1/0", tls_ca_file="/etc/hostname"), "rediss://"),
        (StoreSettings(url="redis://:pw@h:1/0", password_file="/etc/hostname"), "one place"),
        (StoreSettings(url="redis://h:1/0", password_file="/nonexistent"), "cannot read"),
        (StoreSettings(url="rediss://h:1/0", tls_cert_file="/etc/hostname"), "tls_key_file"),
        (StoreSettings(url="redis+sentinel://h:1"), "/MASTER"),
        (StoreSettings(url="redis+sentinel://h:1/m/x"), "/MASTER"),
        (StoreSettings(url="redis+cluster://h:1/3"), "database 0"),
        (StoreSettings(url="redis+cluster://h:99999"), "HOST:PORT"),
        (StoreSettings(url="redis://h:1/notanumber"), "store.url"),
    ],
)
def test_unusable_settings_are_config_errors(settings: StoreSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_store(settings)


def test_url_helpers() -> None:
    assert parse_nodes("a:1,[::1]:2,b", 26379) == [("a", 1), ("::1", 2), ("b", 26379)]
    assert describe_url("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert describe_url("redis+sentinel://:pw@a:1,b:2/m") == "redis+sentinel://:***@a:1,b:2/m"
    assert describe_url("sqlite:///var/lib/x.db") == "sqlite:///var/lib/x.db"


def test_password_from_url(redis_acl_server: RedisServer) -> None:
    url = redis_acl_server.url.replace("fwdmilter@", "fwdmilter:s3cret-Pa55@")
    store = _open(StoreSettings(url=url))
    store.ping()
    store.close()
