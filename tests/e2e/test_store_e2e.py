"""The store under a running milter: moving to Redis, and Redis's cost per message."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis as redis_py

from fwdmilter import replies
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import OUTSIDE, BorderFactory, MailWorld
from tests.harness.postfix import RuntimeDir
from tests.harness.redis import RedisServer
from tests.harness.sink import Sink
from tests.harness.smtp import make_message, unique

pytestmark = pytest.mark.e2e


def test_a_site_moves_from_sqlite_to_redis_without_losing_a_record(
    mail: MailWorld, sink: Sink, runtime: RuntimeDir, border_factory: BorderFactory, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    fm = FwdMilter(runtime.socket("migrate"), tmp_path / "milter", dns_port=mail.dns.port)
    border = border_factory(
        milter=fm.spec,
        start=False,
        name="migrate",
        transport={"downstream.example": f"smtp:[127.0.0.1]:{sink.port('mda')}"},
    )
    fm.serve(border)
    border.start()
    try:
        tok = unique()
        held_rcpt, held_target = f"h{tok}@fwd.example", f"h{tok}@downstream.example"
        rcpt, target = f"f{tok}@fwd.example", f"alice+{tok}@inner.example"
        fm.fwdctl("forward", "set", held_rcpt, held_target, "--contact", f"c{tok}@mobile.example")
        fm.fwdctl("forward", "set", rcpt, target)
        fm.fwdctl("forward", "delete", f"gone{tok}@fwd.example", check=False)
        fm.fwdctl("forward", "set", f"gone{tok}@fwd.example", "x@inner.example")
        fm.fwdctl(
            "forward", "delete", f"gone{tok}@fwd.example", "--moved-to", f"new{tok}@else.example"
        )
        with sink.refusing(held_target):
            t = mail.send(
                border,
                f"s{tok}@softfail.example",
                [held_rcpt],
                make_message(subject=tok),
                source_ip=OUTSIDE,
                helo="helo.softfail.example",
            )
            assert t.accepted, t
            deadline = time.monotonic() + 20
            # Held, and its alert sent (the alert thread waits a moment to
            # coalesce alerts of one target): nothing changes under the copy.
            while not ((listed := fm.held()) and all(e["alerted"] for e in listed)):
                assert time.monotonic() < deadline, mail.explain()
                time.sleep(0.2)
        before = {
            "forwards": json.loads(fm.fwdctl("forward", "list", "--json").stdout),
            "held": fm.held(),
            "stats": json.loads(fm.fwdctl("stats", "--json").stdout),
        }
        out = fm.fwdctl("store", "migrate", "--to", redis.url).stdout
        assert "copied" in out and redis.url.split("//")[1] in out
        # The admin points the milter at Redis and restarts it.
        fm.stop()
        fm.settings["store"]["url"] = redis.url
        fm.serve(border)
        after = {
            "forwards": json.loads(fm.fwdctl("forward", "list", "--json").stdout),
            "held": fm.held(),
            "stats": json.loads(fm.fwdctl("stats", "--json").stdout),
        }
        assert after["forwards"] == before["forwards"]
        for entry in before["held"] + after["held"]:
            entry.pop("age_seconds")
        assert after["held"] == before["held"]
        assert after["stats"] == before["stats"]
        # The moved recipient, the held target and the records all came across.
        t = mail.send(border, f"z{tok}@pass.example", [f"gone{tok}@fwd.example"], source_ip=OUTSIDE)
        moved = replies.MOVED_RECIPIENT
        moved = moved.with_text(moved.text.format(moved_to=f"new{tok}@else.example"))
        assert t.rcpt(f"gone{tok}@fwd.example").said(moved), t
        t = mail.send(border, f"u{tok}@neutral.example", [held_rcpt], source_ip=OUTSIDE)
        assert t.rcpt(held_rcpt).said(replies.TARGET_HELD), t
        fm.fwdctl("held", "requeue", "--target", held_target)
        mail.wait_for(held_target, match=lambda m: tok in str(m.email["Subject"]))
        deadline = time.monotonic() + 20
        while fm.held():
            assert time.monotonic() < deadline, fm.log()[-2000:]
            time.sleep(0.2)
    finally:
        fm.stop()
        redis.stop()


def test_redis_commands_per_forwarded_message(
    mail: MailWorld, runtime: RuntimeDir, border_factory: BorderFactory, tmp_path: Path
) -> None:
    """One pipelined read at RCPT, one MULTI/EXEC at end of message."""
    redis = RedisServer(tmp_path / "redis")
    fm = FwdMilter(
        runtime.socket("rtt"), tmp_path / "milter", dns_port=mail.dns.port, store_url=redis.url
    )
    border = border_factory(milter=fm.spec, start=False, name="rtt")
    fm.serve(border)
    border.start()
    client = redis_py.Redis(port=redis.port)
    try:
        tok = unique()
        rcpt, target = f"f{tok}@fwd.example", f"alice+{tok}@inner.example"
        fm.fwdctl("forward", "set", rcpt, target)

        def send(n: int) -> None:
            t = mail.send(
                border,
                f"s{tok}-{n}@pass.example",
                [rcpt],
                make_message(subject=f"{tok} {n}"),
                source_ip=OUTSIDE,
                helo="helo.pass.example",
            )
            assert t.accepted, t
            mail.wait_for(target, match=lambda m: f"{tok} {n}" in str(m.email["Subject"]))

        send(1)  # the milter learns where rcpt forwards to
        before = client.info("commandstats")
        send(2)
        after = client.info("commandstats")
        calls = {
            k.removeprefix("cmdstat_"): after[k]["calls"] - before.get(k, {}).get("calls", 0)
            for k in after
        }
        calls = {k: v for k, v in calls.items() if v and k not in ("info",)}
        assert calls == {
            "hgetall": 1,  # RCPT: the forward ...
            "hmget": 1,  # ... and its target's held counters, one pipeline
            "multi": 1,  # end of message: one transaction
            "hset": 1,  # the record,
            "pexpire": 3,  # its lifetime, and its index's (NX, then GT: never shorter)
            "sadd": 1,  # the index of the SRS address's records
            "exec": 1,
        }, calls
    finally:
        client.close()
        fm.stop()
        redis.stop()
