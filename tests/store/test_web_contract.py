"""The store contract's web part (pending targets, web tokens, rate counters),
run against every backend like test_contract.py."""

from __future__ import annotations

import threading

from fwdmilter.store.base import Forward, Store, WebToken
from tests.store.conftest import Clock, fwd

NOW = 1_700_000_000.0


def tok(
    digest: str = "d1", kind: str = "signin", rcpt: str = "a@fwd.example", **kw: object
) -> WebToken:
    fields: dict[str, object] = {"created": NOW, "expires": NOW + 600, **kw}
    return WebToken(kind, digest, rcpt, **fields)  # type: ignore[arg-type]


def test_pending_target_round_trips_and_a_move_clears_it(store: Store) -> None:
    f = fwd(pending="new@dest.example", pending_expires=NOW + 3600)
    store.put_forward(f)
    got = store.get_forward(f.rcpt)
    assert got == f
    assert got is not None and got.pending_at(NOW) == "new@dest.example"
    assert got.pending_at(NOW + 3600) == ""
    [info] = store.rcpt_info([f.rcpt])
    assert info.forward == f
    assert store.delete_forward(f.rcpt, "moved@else.example", now=NOW)
    moved = store.get_forward(f.rcpt)
    assert moved is not None and moved.pending == "" and moved.pending_expires == 0.0


def test_a_forward_without_target_but_pending_is_not_active(store: Store) -> None:
    f = Forward("p@fwd.example", (), pending="t@dest.example", pending_expires=NOW + 60)
    store.put_forward(f)
    got = store.get_forward("p@fwd.example")
    assert got is not None and not got.active and got.pending_at(NOW) == "t@dest.example"


def test_token_get_take_once(store: Store) -> None:
    t = tok(name="n", data="x")
    store.put_token(t)
    assert store.get_token("signin", "d1", NOW) == t
    assert store.get_token("session", "d1", NOW) is None  # kinds are apart
    assert store.take_token("signin", "d1", NOW) == t
    assert store.take_token("signin", "d1", NOW) is None
    assert store.get_token("signin", "d1", NOW) is None
    assert store.tokens("signin", "a@fwd.example", NOW) == []


def test_expired_tokens_are_invisible(store: Store, clock: Clock) -> None:
    store.put_token(tok(expires=clock.now + 5))
    assert store.get_token("signin", "d1", clock.now + 5) is None
    assert store.take_token("signin", "d1", clock.now + 5) is None
    assert store.tokens("signin", "a@fwd.example", clock.now + 5) == []
    assert store.get_token("signin", "d1", clock.now) is not None


def test_tokens_of_one_recipient_by_kind_and_name(store: Store) -> None:
    store.put_token(tok("a1", "api", name="laptop", expires=0.0))
    store.put_token(tok("a2", "api", name="cron", expires=0.0, created=NOW + 1))
    store.put_token(tok("a3", "api", rcpt="b@fwd.example", name="laptop", expires=0.0))
    store.put_token(tok("s1", "session"))
    names = [t.name for t in store.tokens("api", "a@fwd.example", NOW + 10**6)]
    assert names == ["laptop", "cron"]
    assert store.delete_tokens("api", "a@fwd.example", "laptop") == 1
    assert [t.digest for t in store.tokens("api", "a@fwd.example", NOW)] == ["a2"]
    assert [t.digest for t in store.tokens("api", "b@fwd.example", NOW)] == ["a3"]
    assert store.delete_tokens("session", "a@fwd.example") == 1
    assert store.get_token("session", "s1", NOW) is None


def test_take_token_is_single_use_under_concurrency(store: Store) -> None:
    store.put_token(tok("race", "confirm"))
    got: list[WebToken | None] = []
    lock = threading.Lock()

    def take() -> None:
        t = store.take_token("confirm", "race", NOW)
        with lock:
            got.append(t)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for t in got if t is not None) == 1


def test_count_hit_counts_per_window_and_key(store: Store) -> None:
    start = NOW - NOW % 3600
    assert [store.count_hit("k", 3600, start + i) for i in range(3)] == [1, 2, 3]
    assert store.count_hit("other", 3600, start) == 1
    assert store.count_hit("k", 3600, start + 3600) == 1  # the next window
