"""A forwarding address with several targets, through the milter shell in-process.

The real FwdMilter and a real SQLite store, driven by TestCtx as in
test_milter_ctx.py (whose fixtures and helpers these are): every target
replaces the recipient and gets its record, a failure DSN for one target
holds that target only, and then U mail for the whole address waits while B
mail still goes to every target.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import Milter
import pytest

from fwdmilter import policy, replies, runtime
from fwdmilter.headers import trace_fields
from fwdmilter.store.base import Forward, HeldEntry
from tests.milter.test_milter_ctx import Ctx, Hooks, connect, feed, hooks, rt, said

__all__ = ["hooks", "rt"]  # the fixtures, used by name

BOUNCE = Path(__file__).parents[1] / "data" / "bounces" / "postfix-failed.eml"
GOOD, BAD = "carol@inner.example", "broken+carol@inner.example"


def two_targets(rt: runtime.Runtime, **kw: object) -> Forward:
    fwd = Forward(
        "carol@fwd.example", (GOOD, "Broken+Carol@Inner.Example"), contact="carol@mobile.example"
    )
    fwd = replace(fwd, **kw)  # type: ignore[arg-type]
    rt.store.put_forward(fwd)
    return fwd


def carols(rt: runtime.Runtime) -> list[HeldEntry]:
    return [e for e in rt.store.held() if e.rcpt == "carol@fwd.example"]


def trace_id(ctx: Ctx) -> str:
    fields = trace_fields(ctx._msg[policy.TRACE_HEADER])
    assert fields is not None
    return fields[1]


def failure_for(target: str, srs_addr: str, msg_id: str) -> bytes:
    raw = BOUNCE.read_bytes()
    raw = raw.replace(
        b"Final-Recipient: rfc822; broken@inner.example",
        f"Final-Recipient: rfc822; {target}".encode(),
    )
    raw = raw.replace(b"rfc822;bob@fwd.example", b"rfc822;carol@fwd.example")
    raw = raw.replace(b"abcdefgh23456789", msg_id.encode())
    return raw.replace(b"SRS0=C3Bs=JM=example.org=alice@fwd.example", srs_addr.encode())


def test_every_target_replaces_the_recipient_and_has_its_record(
    rt: runtime.Runtime, hooks: Hooks, caplog: pytest.LogCaptureFixture
) -> None:
    two_targets(rt)
    ctx = connect(rt, hooks)
    with caplog.at_level(logging.INFO, logger="fwdmilter.milter"):
        assert feed(ctx, "x@softfail.example", "carol@fwd.example") == Milter.CONTINUE
    # The decision's log line names every target.
    (line,) = [r.getMessage() for r in caplog.records if "stage=eom" in r.getMessage()]
    assert f"to=<{GOOD}>,<{BAD}>" in line and "action=forward" in line
    assert ctx._delrcpt == ["<carol@fwd.example>"]
    orcpt = "ORCPT=rfc822;carol@fwd.example"
    assert ctx._addrcpt == [(f"<{GOOD}>", orcpt), (f"<{BAD}>", orcpt)]
    srs_addr = rt.settings.srs.forward("x@softfail.example")
    records = rt.store.messages(srs_addr.lower())
    assert sorted((r.rcpt, r.target, r.state) for r in records) == [
        ("carol@fwd.example", BAD, "U"),
        ("carol@fwd.example", GOOD, "U"),
    ]
    assert {r.msg_id for r in records} == {trace_id(ctx)}


def test_a_target_two_recipients_share_is_added_once(rt: runtime.Runtime, hooks: Hooks) -> None:
    two_targets(rt)
    rt.store.put_forward(Forward("dan@fwd.example", (GOOD, "dan@inner.example")))
    ctx = connect(rt, hooks)
    assert feed(ctx, "alice@pass.example", "carol@fwd.example", "dan@fwd.example") == (
        Milter.CONTINUE
    )
    assert ctx._delrcpt == ["<carol@fwd.example>", "<dan@fwd.example>"]
    added = [a for a, _ in ctx._addrcpt]
    assert added == [f"<{GOOD}>", f"<{BAD}>", "<dan@inner.example>"]
    srs_addr = rt.settings.srs.forward("alice@pass.example")
    pairs = sorted((r.rcpt, r.target) for r in rt.store.messages(srs_addr.lower()))
    assert pairs == [
        ("carol@fwd.example", BAD),
        ("carol@fwd.example", GOOD),
        ("dan@fwd.example", GOOD),
        ("dan@fwd.example", "dan@inner.example"),
    ]


def test_a_failure_for_one_target_holds_it_alone_and_defers_the_whole_address(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    two_targets(rt)
    ctx = connect(rt, hooks)
    assert feed(ctx, "x@softfail.example", "carol@fwd.example") == Milter.CONTINUE
    srs_addr = rt.settings.srs.forward("x@softfail.example", now=time.time())
    bounce = failure_for(BAD, srs_addr, trace_id(ctx))
    ctx = connect(rt, hooks, ip="127.0.0.1", helo="inner.example")
    assert feed(ctx, "", srs_addr, message=bounce) == Milter.CONTINUE
    assert ctx.quarantined is not None
    (entry,) = carols(rt)
    assert (entry.target, entry.state, entry.sender) == (BAD, "H", "x@softfail.example")
    assert rt.store.held(target=GOOD) == []
    states = {r.target: r.state for r in rt.store.messages(srs_addr.lower())}
    assert states == {GOOD: "U", BAD: "H"}
    assert [(a.target, a.rcpt) for a in hooks.alerts] == [(BAD, "carol@fwd.example")]
    # U mail for the address waits, every target with it ...
    ctx = connect(rt, hooks)
    assert feed(ctx, "y@softfail.example", "carol@fwd.example") == Milter.TEMPFAIL
    assert said(ctx, replies.TARGET_HELD)
    # ... B mail still goes to both.
    ctx = connect(rt, hooks)
    assert feed(ctx, "alice@pass.example", "carol@fwd.example") == Milter.CONTINUE
    assert [a for a, _ in ctx._addrcpt] == [f"<{GOOD}>", f"<{BAD}>"]


def test_a_failure_naming_no_target_holds_every_target(rt: runtime.Runtime, hooks: Hooks) -> None:
    two_targets(rt)
    ctx = connect(rt, hooks)
    assert feed(ctx, "x@softfail.example", "carol@fwd.example") == Milter.CONTINUE
    srs_addr = rt.settings.srs.forward("x@softfail.example", now=time.time())
    # A downstream forwarder rewrote the recipient: nothing tells which failed.
    bounce = failure_for("mailbox7@store.example", srs_addr, trace_id(ctx))
    ctx = connect(rt, hooks, ip="127.0.0.1", helo="inner.example")
    assert feed(ctx, "", srs_addr, message=bounce) == Milter.CONTINUE
    assert sorted(e.target for e in carols(rt)) == [BAD, GOOD]


def test_null_sender_mail_kept_by_policy_is_one_n_entry_per_target(
    rt: runtime.Runtime, hooks: Hooks, caplog: pytest.LogCaptureFixture
) -> None:
    two_targets(rt, null_sender="hold")
    ctx = connect(rt, hooks, helo="mx.pass.example")
    with caplog.at_level(logging.INFO, logger="fwdmilter.milter"):
        assert feed(ctx, "", "carol@fwd.example") == Milter.CONTINUE
    assert ctx.quarantined is not None
    entries = carols(rt)
    assert f"action=hold-null-sender to=<{GOOD}>,<{BAD}>" in caplog.text
    entry_id = f"{rt.settings.instance}/QID42"
    assert sorted((e.target, e.state, e.entry_id) for e in entries) == [
        (BAD, "N", entry_id),
        (GOOD, "N", entry_id),
    ]
    # N entries defer nobody.
    ctx = connect(rt, hooks)
    assert feed(ctx, "y@softfail.example", "carol@fwd.example") == Milter.CONTINUE
