"""Several milter instances, one Redis: shared state, outages, concurrency.

Two BORDERs, each with its own fwdmilter process, share one private Redis
server. A target held through one is deferred through the other; Redis
stopped mid-run turns into 451s (nothing accepted that could be lost) and
the milters recover by themselves when it returns; 200 concurrent
transactions leave held counters exactly equal to the held entries.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fwdmilter import replies
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import OUTSIDE, BorderFactory, MailWorld
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.redis import RedisServer
from tests.harness.sink import Sink
from tests.harness.smtp import Transcript, make_message, unique

pytestmark = pytest.mark.e2e


@dataclass
class Pair:
    redis: RedisServer
    milters: tuple[FwdMilter, FwdMilter]
    borders: tuple[PostfixInstance, PostfixInstance]
    mail: MailWorld
    sink: Sink

    def send(self, i: int, sender: str, rcpt: str, subject: str) -> Transcript:
        return self.mail.send(
            self.borders[i],
            sender,
            [rcpt],
            make_message(sender, rcpt, subject=subject),
            source_ip=OUTSIDE,
            helo="helo." + sender.rpartition("@")[2],
        )

    def held(self, target: str | None = None) -> list[dict[str, Any]]:
        args = ["--target", target] if target else []
        return self.milters[0].held(*args)


@pytest.fixture(scope="module")
def pair(
    mail: MailWorld,
    sink: Sink,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("shared")
    redis = RedisServer(workdir / "redis")
    milters: list[FwdMilter] = []
    borders: list[PostfixInstance] = []
    secret = "shared-secret-of-both-borders"
    for i in (1, 2):
        fm = FwdMilter(
            runtime.socket(f"fwd-shared{i}"),
            workdir / f"milter{i}",
            dns_port=mail.dns.port,
            store_url=redis.url,
            hostname=f"border{i}.fwd.example",
            secret=secret,
            settings={"store": {"timeout": 0.5}},
        )
        border = border_factory(
            milter=fm.spec,
            start=False,
            name=f"shared{i}",
            hostname=f"border{i}.fwd.example",
            transport={"downstream.example": f"smtp:[127.0.0.1]:{sink.port('mda')}"},
        )
        fm.serve(border)
        border.start()
        milters.append(fm)
        borders.append(border)
    yield Pair(redis, (milters[0], milters[1]), (borders[0], borders[1]), mail, sink)
    for fm in milters:
        fm.stop()
    redis.stop()


def wait_until_held(p: Pair, target: str, count: int = 1, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len([e for e in p.held(target) if e["state"] == "H"]) < count:
        assert time.monotonic() < deadline, (p.held(target), p.mail.explain())
        time.sleep(0.2)


def test_a_target_held_through_one_border_is_deferred_through_the_other(pair: Pair) -> None:
    p = pair
    tok = unique()
    rcpt, target = f"f{tok}@fwd.example", f"t{tok}@downstream.example"
    p.milters[0].fwdctl("forward", "set", rcpt, target)
    with p.sink.refusing(target):
        assert p.send(0, f"s{tok}@softfail.example", rcpt, f"one {tok}").accepted
        wait_until_held(p, target)
    (entry,) = p.held(target)
    assert entry["host"] == "border1.fwd.example"
    t = p.send(1, f"u{tok}@neutral.example", rcpt, f"two {tok}")
    assert t.rcpt(rcpt).said(replies.TARGET_HELD), t
    assert p.send(1, f"b{tok}@pass.example", rcpt, f"three {tok}").accepted
    # Requeue must run on the host that holds the bounce.
    other = p.milters[1].fwdctl("held", "requeue", "--target", target, check=False)
    assert other.returncode == 1 and "held on border1.fwd.example" in other.stderr
    p.milters[0].fwdctl("held", "requeue", "--target", target)
    p.mail.wait_for(target, match=lambda m: f"one {tok}" in str(m.email["Subject"]))


def test_redis_outage_answers_451_loses_nothing_and_recovers(pair: Pair) -> None:
    p = pair
    tok = unique()
    rcpt, target = f"f{tok}@fwd.example", f"t{tok}@downstream.example"
    p.milters[0].fwdctl("forward", "set", rcpt, target)
    assert p.send(0, f"a{tok}@pass.example", rcpt, f"before {tok}").accepted
    p.mail.wait_for(target, match=lambda m: f"before {tok}" in str(m.email["Subject"]))
    p.redis.stop()
    try:
        for i in (0, 1):
            t = p.send(i, f"d{tok}@pass.example", rcpt, f"during {tok}")
            assert t.rcpt(rcpt).said(replies.STORE_UNAVAILABLE), t
            assert not t.accepted
        p.milters[0].wait_log(r"stage=rcpt action=tempfail reason=store")
    finally:
        p.redis.restart()
    # The data was in memory only: the forwarding entry is gone with it, and
    # the milters answer again without a restart of their own.
    p.milters[0].fwdctl("forward", "set", rcpt, target)
    for i in (0, 1):
        t = p.send(i, f"d{tok}@pass.example", rcpt, f"after {i} {tok}")
        assert t.accepted, t
        p.mail.wait_for(target, match=lambda m, i=i: f"after {i} {tok}" in str(m.email["Subject"]))
    assert p.milters[0].alive and p.milters[1].alive


def test_200_concurrent_transactions_leave_exact_counters(pair: Pair) -> None:
    p = pair
    tok = unique()
    targets = [f"t{tok}-{n}@downstream.example" for n in range(5)]
    rcpts = [f"f{tok}-{n}@fwd.example" for n in range(5)]
    for rcpt, target in zip(rcpts, targets, strict=True):
        p.milters[0].fwdctl("forward", "set", rcpt, target)
    results: list[tuple[int, Transcript]] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        t = p.send(n % 2, f"u{tok}-{n}@softfail.example", rcpts[n % 5], f"c {tok} {n}")
        with lock:
            results.append((n, t))

    for target in targets:
        p.sink.refuse(target)
    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(200)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        accepted = [n for n, t in results if t.accepted]
        deferred = [n for n, t in results if t.rcpt(rcpts[n % 5]).said(replies.TARGET_HELD)]
        assert len(results) == 200
        assert len(accepted) + len(deferred) == 200, [str(t) for _, t in results if not t.accepted][
            :3
        ]
        assert accepted
        # Every accepted U message bounces, and every bounce is held: none
        # is lost, none reaches its sender.
        per_target = {t: sum(1 for n in accepted if targets[n % 5] == t) for t in targets}
        deadline = time.monotonic() + 90
        while True:
            entries = p.held()
            held = {
                t: sum(1 for e in entries if e["target"] == t and e["state"] == "H")
                for t in targets
            }
            if held == per_target or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert held == per_target
        stats = json.loads(p.milters[1].fwdctl("stats", "--json").stdout)
        for target in targets:
            if per_target[target]:
                assert stats["held_by_target"][target] == {"H": per_target[target], "R": 0}
    finally:
        for target in targets:
            p.sink.accept(target)
    for target in targets:
        p.milters[0].fwdctl("held", "requeue", "--target", target, check=False)
        p.milters[1].fwdctl("held", "requeue", "--target", target, check=False)
    p.mail.assert_nothing_for(
        match=lambda m: m.mail_from == "" and f"u{tok}-" in m.rcpt_addresses[0]
    )
