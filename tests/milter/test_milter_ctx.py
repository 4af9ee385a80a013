"""The milter shell driven in-process through whole transactions.

pymilter's TestCtx plays the MTA's side in libmilter's order; the milter
under test is the real FwdMilter with a real SQLite store. Clients come from
127.0.0.0/8 (trusted: SPF skipped) or from 192.0.2.0/24, for which SPF is
checked against the session's private DNS server. The end-to-end tests
repeat the important cases through real Postfix.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import Milter
import pytest
from Milter.testctx import TestCtx as MilterTestCtx

from fwdmilter import config, policy, replies, runtime
from fwdmilter.milter import FwdMilter
from fwdmilter.store.base import Forward, HeldEntry, MessageRecord
from tests.harness.dns import DnsServer
from tests.harness.redis import RedisServer

MESSAGE = b"From: Alice <alice@pass.example>\nTo: bob@fwd.example\nSubject: hi\n\nHello Bob.\n"


_DEFAULT_OPTS: tuple[int, ...] = tuple(MilterTestCtx.default_opts)


def _replied(rc: int) -> int:
    # The MTA reads NOREPLY as "carry on"; TestCtx predates it.
    return int(Milter.CONTINUE) if rc == Milter.NOREPLY else rc


class Ctx(MilterTestCtx):  # type: ignore[misc]
    """TestCtx that also records quarantine, serves the queue id macro, and
    treats NOREPLY (negotiated for connect, HELO, headers, body) as the MTA
    does."""

    def __init__(self) -> None:
        super().__init__()
        self.quarantined: str | None = None
        self._macros = {"i": "QID42"}

    def _negotiate(self) -> int:
        # TestCtx hands every context one class-wide list, into which
        # negotiate() writes the protocol it chose (a TCP socket's milter
        # asks for DATA): a fresh copy each time, so that no test sees the
        # options an earlier one negotiated.
        MilterTestCtx.default_opts = list(_DEFAULT_OPTS)
        rc: int = super()._negotiate()
        return rc

    def _connect(self, *args: Any, **kw: Any) -> int:
        rc = self._negotiate()
        if rc not in (Milter.CONTINUE, Milter.ALL_OPTS):
            return int(rc)
        self._stage = Milter.M_CONNECT
        rc = _replied(Milter.connect_callback(self, kw["host"], 2, (kw["ip"], 1234)))
        self._stage = None
        if rc != Milter.CONTINUE:
            return rc
        return self._helo(kw["helo"])

    def _helo(self, helo: str) -> int:
        self._stage = Milter.M_HELO
        rc = _replied(self._priv.hello(helo))
        self._stage = None
        return rc

    def _header(self, fld: str, val: Any) -> int:
        return _replied(super()._header(fld, val))

    def _feed_body(self, bfp: Any) -> int:
        while buf := bfp.read(8192):
            rc = _replied(self._priv.body(buf))
            if rc != Milter.CONTINUE:
                return rc
        return int(Milter.CONTINUE)

    def chgheader(self, field: str, idx: int, value: str) -> None:
        # libmilter counts occurrences of the name from 1; TestCtx would
        # delete every occurrence.
        if not self._body:
            raise OSError("chgheader not called from eom()")
        seen = 0
        for i, (name, _) in enumerate(self._msg._headers):
            if name.lower() == field.lower():
                seen += 1
                if seen == idx:
                    if value:
                        self._msg._headers[i] = (name, value)
                    else:
                        del self._msg._headers[i]
                    return

    def quarantine(self, reason: str) -> None:
        if not self._body:
            raise OSError("quarantine not called from eom()")
        self.quarantined = reason


class Hooks:
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.transactions = 0
        self.running = 0
        self.stopping = False
        self.alerts: list[HeldEntry] = []

    def connection_opened(self) -> None:
        self.opened += 1

    def connection_closed(self) -> None:
        self.closed += 1

    def transaction_started(self) -> None:
        self.transactions += 1
        self.running += 1

    def transaction_ended(self) -> None:
        self.running -= 1

    def alert(self, entry: HeldEntry) -> None:
        self.alerts.append(entry)


def make_runtime(tmp_path: Path, dns: DnsServer, store: str) -> runtime.Runtime:
    """A runtime as the daemon builds it; ``store`` is the [store] table's body."""
    secrets = tmp_path / "secrets"
    secrets.write_text("s3cret\n")
    secrets.chmod(0o600)
    cfg = config.loads(
        f"""
[milter]
hostname = "mx.fwd.example"
[srs]
domain = "fwd.example"
secrets_file = "{secrets}"
[forwarding]
domains = ["fwd.example"]
[dns]
nameservers = ["127.0.0.1"]
port = {dns.port}
timeout = 2.0
[store]
{store}
"""
    )
    return runtime.build(cfg)


@pytest.fixture
def rt(tmp_path: Path, dns: DnsServer) -> Iterator[runtime.Runtime]:
    r = make_runtime(tmp_path, dns, f'url = "sqlite://{tmp_path}/state.db"')
    r.store.put_forward(
        Forward("bob@fwd.example", ("bob@inner.example",), contact="bob@mobile.example")
    )
    r.store.put_forward(Forward("old@fwd.example", (), moved_to="new@elsewhere.example"))
    yield r
    r.store.close()


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


def connect(
    rt: runtime.Runtime, hooks: Hooks, ip: str = "192.0.2.10", helo: str = "mx.pass.example"
) -> Ctx:
    ctx = Ctx()
    Milter.factory = lambda: FwdMilter(rt, hooks)
    assert ctx._connect(host="client.example", helo=helo, ip=ip) == Milter.CONTINUE
    return ctx


def feed(ctx: Ctx, sender: str, *rcpts: str, message: bytes = MESSAGE) -> int:
    """One transaction in libmilter's order, the message's bytes as they are.

    TestCtx's own _feedFile re-serialises the message through the email
    package first, which rewrites a message/delivery-status part so that it
    no longer parses as one: a bounce fed that way reached the milter as
    "not a DSN". Here each header line and the body go over unchanged.
    """
    ctx._body = None
    ctx._reply = None
    ctx._msg = email.message_from_bytes(message)  # what addheader/chgheader edit
    rc: int = ctx._envfrom(f"<{sender}>")
    if rc != Milter.CONTINUE:
        return rc
    for rcpt in rcpts:
        rc = ctx._envrcpt(f"<{rcpt}>")
        if rc != Milter.CONTINUE:
            return rc
    head, _, body = message.replace(b"\r\n", b"\n").partition(b"\n\n")
    for line in re.split(rb"\n(?![ \t])", head):
        if line.strip():
            name, _, value = line.partition(b":")
            rc = _replied(ctx._priv.header_bytes(name.decode("ascii"), value.lstrip()))
            if rc != Milter.CONTINUE:
                return rc
    rc = ctx._feed_body(io.BytesIO(body))
    if rc != Milter.CONTINUE:
        return rc
    rc = ctx._eom()
    return int(rc)


def reply(ctx: Ctx) -> tuple[Any, ...]:
    return tuple(ctx._reply or ())


def said(ctx: Ctx, expected: replies.Reply, *, completed: bool = False) -> bool:
    """The milter set ``expected`` as its reply: code, enhanced status, text
    (with ``completed``, the milter added to the text: only its start)."""
    got = reply(ctx)
    if got[:2] != (str(expected.code), expected.status) or len(got) < 3:
        return False
    text = str(got[2])
    return text.startswith(expected.milter_text()) if completed else text == expected.milter_text()


def test_negotiates_only_what_it_uses(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks)
    actions = ctx._opts[0]
    assert actions & Milter.CHGFROM and actions & Milter.QUARANTINE
    assert not actions & Milter.CHGBODY
    proto = ctx._protocol
    # The MTA waits for no reply to connect, HELO, headers and body, and
    # skips DATA, end of headers and unknown commands altogether.
    for bit in (Milter.P_NR_CONN, Milter.P_NR_HELO, Milter.P_NR_HDR, Milter.P_NR_BODY):
        assert proto & bit
    for bit in (Milter.P_NODATA, Milter.P_NOEOH, Milter.P_NOUNKNOWN):
        assert proto & bit
    assert not proto & (Milter.P_NOMAIL | Milter.P_NORCPT)


def test_over_tcp_data_is_answered(rt: runtime.Runtime, hooks: Hooks) -> None:
    # The reply to DATA carries the ACK the MTA's next write waits for
    # (fwdmilter.tcp); over a unix socket DATA stays skipped (above).
    milter_cfg = dataclasses.replace(rt.cfg.milter, socket="inet:10025@127.0.0.1")
    tcp_rt = dataclasses.replace(rt, cfg=dataclasses.replace(rt.cfg, milter=milter_cfg))
    ctx = connect(tcp_rt, hooks)
    assert not ctx._protocol & (Milter.P_NODATA | Milter.P_NR_DATA)
    assert ctx._protocol & Milter.P_NOEOH and ctx._protocol & Milter.P_NR_HDR
    assert feed(ctx, "alice@pass.example", "bob@fwd.example") == Milter.CONTINUE
    assert ctx._delrcpt == ["<bob@fwd.example>"]


def test_spf_pass_is_forwarded_with_an_srs_sender(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks)  # 192.0.2.10 is in pass.example's SPF record
    assert feed(ctx, "alice@pass.example", "bob@fwd.example") == Milter.CONTINUE
    srs_sender = rt.settings.srs.forward("alice@pass.example")
    assert ctx._sender == f"<{srs_sender}>"
    assert ctx._delrcpt == ["<bob@fwd.example>"]
    assert ctx._addrcpt[0][0] == "<bob@inner.example>"
    assert ctx._msg[policy.TRACE_HEADER].startswith("fwd.example; id=")
    assert ctx._msg[policy.AUTH_RESULTS_HEADER] == (
        "mx.fwd.example; spf=pass smtp.mailfrom=alice@pass.example"
    )
    (record,) = rt.store.messages(srs_sender.lower())
    assert (record.state, record.target, record.queue_id) == ("B", "bob@inner.example", "QID42")
    # The record outlives its SRS address, valid through max_age_days: two
    # days more, so that a bounce the SRS check lets in finds its record.
    lifetime = record.expires - record.created
    assert abs(lifetime - (rt.cfg.srs.max_age_days + 2) * 86400) < 60


def test_spf_fail_is_refused_at_rcpt(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks)
    assert ctx._envfrom("<mallory@fail.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@fwd.example>") == Milter.REJECT
    assert said(ctx, replies.SPF_FAIL, completed=True)
    assert "fail.example" in reply(ctx)[2]
    # The global action for recipients that are not forwarding addresses too.
    ctx._reply = None
    assert ctx._envrcpt("<someone@elsewhere.example>") == Milter.REJECT
    assert said(ctx, replies.SPF_FAIL, completed=True)


def test_dns_timeout_answers_451(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks)
    started = time.monotonic()
    assert ctx._envfrom("<x@temperror.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@fwd.example>") == Milter.TEMPFAIL
    assert said(ctx, replies.SPF_TEMPERROR, completed=True)
    assert time.monotonic() - started < 5  # dns.timeout is 2 s, not pyspf's 20


def test_unknown_and_moved_recipients(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks)
    assert feed(ctx, "alice@pass.example", "nobody@fwd.example") == Milter.REJECT
    assert said(ctx, replies.UNKNOWN_RECIPIENT)
    ctx = connect(rt, hooks)
    assert feed(ctx, "alice@pass.example", "old@fwd.example") == Milter.REJECT
    moved = replies.MOVED_RECIPIENT
    assert said(ctx, moved.with_text(moved.text.format(moved_to="new@elsewhere.example")))


def test_forged_srs_bounce_is_refused(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks, helo="inner.example")
    assert feed(ctx, "", "SRS0=AAAA=JM=pass.example=alice@fwd.example") == Milter.REJECT
    assert said(ctx, replies.SRS_FORGED)


def forwarded_u_message(rt: runtime.Runtime) -> str:
    """The record of a U message forwarded to bob@inner.example; its SRS address."""
    now = time.time()
    srs_addr = rt.settings.srs.forward("spoofed@softfail.example", now=now)
    rt.store.record_messages(
        [
            MessageRecord(
                srs_addr.lower(),
                "m.0",
                "m",
                "U",
                "spoofed@softfail.example",
                "bob@fwd.example",
                "bob@inner.example",
                now,
                "mx.fwd.example",
                "Q0",
            )
        ],
        86400,
    )
    return srs_addr


def test_bounce_for_unbouncable_message_is_quarantined(rt: runtime.Runtime, hooks: Hooks) -> None:
    srs_addr = forwarded_u_message(rt)
    bounce = (Path(__file__).parents[1] / "data" / "bounces" / "postfix-failed.eml").read_bytes()
    bounce = bounce.replace(b"broken@inner.example", b"bob@inner.example")
    ctx = connect(rt, hooks, ip="127.0.0.1", helo="inner.example")
    assert feed(ctx, "", srs_addr, message=bounce) == Milter.CONTINUE
    assert ctx.quarantined is not None and "sender not verified" in ctx.quarantined
    assert ctx._addrcpt == [] and ctx._delrcpt == []
    (entry,) = rt.store.held(target="bob@inner.example")
    assert (entry.state, entry.sender, entry.queue_id) == ("H", "spoofed@softfail.example", "QID42")
    assert "mailbox full" in entry.reason  # read as a DSN: its diagnostic
    assert rt.store.held_counts("bob@inner.example") == (1, 0)
    assert [a.target for a in hooks.alerts] == ["bob@inner.example"]
    # Now U mail for that target is deferred, B mail still flows.
    ctx = connect(rt, hooks)
    assert feed(ctx, "x@softfail.example", "bob@fwd.example") == Milter.TEMPFAIL
    assert said(ctx, replies.TARGET_HELD)
    ctx = connect(rt, hooks)
    assert feed(ctx, "alice@pass.example", "bob@fwd.example") == Milter.CONTINUE


def test_loop_is_refused(rt: runtime.Runtime, hooks: Hooks) -> None:
    trace = b"Fwdmilter-Trace: fwd.example; id=a; by=mx.fwd.example\n"
    ctx = connect(rt, hooks)
    assert (
        feed(ctx, "alice@pass.example", "bob@fwd.example", message=trace * 3 + MESSAGE)
        == Milter.REJECT
    )
    assert said(ctx, replies.LOOP)


def test_forged_authentication_results_are_removed(rt: runtime.Runtime, hooks: Hooks) -> None:
    forged = b"Authentication-Results: mx.fwd.example; spf=pass smtp.mailfrom=x@y\n"
    other = b"Authentication-Results: other.example; spf=fail smtp.mailfrom=x@y\n"
    ctx = connect(rt, hooks)
    assert (
        feed(ctx, "alice@pass.example", "bob@fwd.example", message=other + forged + MESSAGE)
        == Milter.CONTINUE
    )
    values = ctx._msg.get_all(policy.AUTH_RESULTS_HEADER)
    assert "other.example; spf=fail smtp.mailfrom=x@y" in values
    assert "mx.fwd.example; spf=pass smtp.mailfrom=x@y" not in values


def test_store_outage_answers_451_not_an_accept(
    rt: runtime.Runtime, hooks: Hooks, tmp_path: Path
) -> None:
    rt.store.close()
    (tmp_path / "state.db").unlink()
    (tmp_path / "state.db").mkdir()  # the file is gone and cannot come back
    ctx = connect(rt, hooks)
    rc = feed(ctx, "alice@pass.example", "bob@fwd.example")
    assert rc == Milter.TEMPFAIL
    assert said(ctx, replies.STORE_UNAVAILABLE)


def test_connections_and_transactions_are_counted(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks)
    feed(ctx, "alice@pass.example", "bob@fwd.example")
    assert (hooks.transactions, hooks.running) == (1, 0)
    feed(ctx, "a\x01b@pass.example", "bob@fwd.example")  # refused at MAIL: over at once
    assert (hooks.transactions, hooks.running) == (2, 0)
    # Refused at RCPT (SPF fail): the transaction lasts until the MTA ends it.
    feed(ctx, "mallory@fail.example", "bob@fwd.example")
    assert (hooks.transactions, hooks.running) == (3, 1)
    ctx._envfrom("<alice@pass.example>")
    assert (hooks.transactions, hooks.running) == (4, 1)
    ctx._abort()  # also closes
    assert hooks.running == 0
    assert (hooks.opened, hooks.closed) == (1, 1)


def test_no_new_transaction_or_connection_while_stopping(rt: runtime.Runtime, hooks: Hooks) -> None:
    ctx = connect(rt, hooks)
    hooks.stopping = True
    assert feed(ctx, "alice@pass.example", "bob@fwd.example") == Milter.TEMPFAIL
    assert said(ctx, replies.SHUTTING_DOWN)
    assert hooks.running == 0
    fresh = Ctx()
    Milter.factory = lambda: FwdMilter(rt, hooks)
    assert fresh._negotiate() == Milter.REJECT


@pytest.mark.parametrize(("on_error", "expected"), [("tempfail", "451"), ("accept", None)])
def test_store_lost_between_rcpt_and_end_of_message(
    tmp_path: Path, dns: DnsServer, hooks: Hooks, on_error: str, expected: str | None
) -> None:
    """store.on_error: with "accept", a message whose record cannot be written
    is still forwarded (its bounce, finding no record, would be held: nothing
    is lost); with "tempfail" (the default) the client is told to retry."""
    redis = RedisServer(tmp_path / "redis")
    rt = make_runtime(tmp_path, dns, f'url = "{redis.url}"\ntimeout = 0.5\non_error = "{on_error}"')
    try:
        rt.store.put_forward(Forward("bob@fwd.example", ("bob@inner.example",)))
        ctx = connect(rt, hooks)
        ctx._body = None
        ctx._msg = email.message_from_bytes(MESSAGE)
        assert ctx._envfrom("<alice@pass.example>") == Milter.CONTINUE
        assert ctx._envrcpt("<bob@fwd.example>") == Milter.CONTINUE
        redis.stop()
        for name, value in ctx._msg.items():
            ctx._header(name, value)
        rc = ctx._eom()
        if expected is None:
            assert rc == Milter.CONTINUE
            assert ctx._addrcpt[0][0] == "<bob@inner.example>"
            assert ctx._sender is not None and ctx._sender.startswith("<SRS0=")
        else:
            assert rc == Milter.TEMPFAIL
            assert said(ctx, replies.STORE_UNAVAILABLE)
            assert ctx._addrcpt == []
    finally:
        rt.store.close()
        redis.stop()


@pytest.mark.parametrize(
    "missing", [Milter.QUARANTINE, Milter.CHGFROM, Milter.ADDRCPT, Milter.DELRCPT]
)
def test_an_mta_without_the_needed_actions_is_refused_at_negotiation(
    rt: runtime.Runtime,
    hooks: Hooks,
    missing: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Without QUARANTINE the milter would write held entries for bounces the
    # MTA then delivers; without CHGFROM it would forward without SRS.
    offered = [_DEFAULT_OPTS[0] & ~missing, *_DEFAULT_OPTS[1:]]

    class Lacking(Ctx):
        def _negotiate(self) -> int:
            MilterTestCtx.default_opts = list(offered)
            rc: int = MilterTestCtx._negotiate(self)
            return rc

    ctx = Lacking()
    Milter.factory = lambda: FwdMilter(rt, hooks)
    assert ctx._connect(host="client.example", helo="h", ip="192.0.2.10") == Milter.REJECT
    (line,) = [r.getMessage() for r in caplog.records if "negotiate: refused" in r.getMessage()]
    name = {
        Milter.QUARANTINE: "QUARANTINE",
        Milter.CHGFROM: "CHGFROM",
        Milter.ADDRCPT: "ADDRCPT",
        Milter.DELRCPT: "DELRCPT",
    }[missing]
    assert f"missing={name}" in line


def test_mixed_bounce_and_forward_is_split_at_rcpt(rt: runtime.Runtime, hooks: Hooks) -> None:
    srs_addr = rt.settings.srs.forward("spoofed@softfail.example", now=time.time())
    ctx = connect(rt, hooks, ip="127.0.0.1", helo="inner.example")
    rc = feed(ctx, "", srs_addr, "bob@fwd.example", message=MESSAGE)
    assert rc == Milter.TEMPFAIL
    assert reply(ctx)[:2] == ("452", "4.5.3")
    assert "new transaction" in reply(ctx)[2]


class RefusingCtx(Ctx):
    """An MTA that fails the quarantine request (a lost connection)."""

    def quarantine(self, reason: str) -> None:
        raise Milter.error("cannot quarantine")


def test_an_mta_that_does_not_hold_leaves_no_entry_and_no_alert(
    rt: runtime.Runtime, hooks: Hooks
) -> None:
    srs_addr = forwarded_u_message(rt)
    bounce = (Path(__file__).parents[1] / "data" / "bounces" / "postfix-failed.eml").read_bytes()
    ctx = RefusingCtx()
    Milter.factory = lambda: FwdMilter(rt, hooks)
    assert ctx._connect(host="inner.example", helo="inner.example", ip="127.0.0.1") == 0
    assert feed(ctx, "", srs_addr, message=bounce) == Milter.TEMPFAIL
    assert reply(ctx)[:3] == ("451", "4.3.0", "Temporary local problem; try again later")
    assert rt.store.held(target="bob@inner.example") == []
    assert rt.store.held_counts("bob@inner.example") == (0, 0)
    assert hooks.alerts == []
