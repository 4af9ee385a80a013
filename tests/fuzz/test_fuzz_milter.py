"""The whole milter path on hostile input, through pymilter's TestCtx (hypothesis).

The real FwdMilter with a real SQLite store and the session's DNS server,
both healthy: every 4xx is then caused by the input, and none may be (RFC
5321 section 4.2.5: a 4xx tells the client to retry, and input that earns
one earns it again on every retry). Properties, for any envelope, headers
and body a client can send:

- no callback raises or logs an unexpected error ("reason=internal");
- no reply is temporary, except the deferral of U mail for a target that
  has held mail (caused by the store's state, which earlier examples built);
- every string handed to libmilter (replies, header and envelope changes,
  quarantine reasons) is one its C layer takes: UTF-8, without NUL.
"""

from __future__ import annotations

import email.message
import logging
import time
from collections.abc import Iterator
from typing import Any

import Milter
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwdmilter import replies, runtime
from fwdmilter.milter import FwdMilter
from fwdmilter.store.base import Forward, MessageRecord
from srs import SRSError
from tests.fuzz.strategies import SCALE, hostile_text, octets_text, path
from tests.fuzz.test_fuzz_parsers import dsn_messages
from tests.harness.dns import DnsServer
from tests.milter.test_milter_ctx import Ctx, Hooks, make_runtime

FUZZ = settings(
    max_examples=150 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TRUSTED_IP, OUTSIDE_IP = "127.0.0.1", "192.0.2.10"
#: Senders whose SRS addresses have records: one verified (B), one not (U).
B_SENDER, U_SENDER = "verified@pass.example", "spoofed@softfail.example"


def _c_string(value: object) -> None:
    """What pymilter's C layer does with a str argument ("s" format)."""
    if isinstance(value, str):
        value.encode("utf-8")  # UnicodeEncodeError for a lone surrogate
        if "\0" in value:
            raise ValueError("embedded null character")


class StrictCtx(Ctx):
    """TestCtx that refuses, as libmilter's C layer would, what it cannot pass on."""

    def __init__(self) -> None:
        super().__init__()
        self._msg = email.message.Message()

    def setreply(self, *args: Any) -> None:
        for a in args:
            _c_string(a)
        super().setreply(*args)

    def addheader(self, field: str, value: str, idx: int) -> None:
        _c_string(field), _c_string(value)
        super().addheader(field, value, idx)

    def chgheader(self, field: str, idx: int, value: str) -> None:
        _c_string(field), _c_string(value)
        super().chgheader(field, idx, value)

    def chgfrom(self, sender: str, params: Any = None) -> None:
        _c_string(sender), _c_string(params)
        super().chgfrom(sender, params)

    def addrcpt(self, rcpt: str, params: Any = None) -> None:
        _c_string(rcpt), _c_string(params)
        super().addrcpt(rcpt, params)

    def delrcpt(self, rcpt: str) -> None:
        _c_string(rcpt)
        super().delrcpt(rcpt)

    def quarantine(self, reason: str) -> None:
        _c_string(reason)
        super().quarantine(reason)


class Errors(logging.Handler):
    """Log records that say the milter met something it did not expect."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "reason=internal" in text or "spf=error" in text or record.exc_info:
            self.seen.append(self.format(record))


@pytest.fixture(scope="module")
def fuzz_rt(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer) -> Iterator[runtime.Runtime]:
    tmp = tmp_path_factory.mktemp("fuzz")
    rt = make_runtime(tmp, dns, f'url = "sqlite://{tmp}/state.db"')
    rt.store.put_forward(Forward("bob@fwd.example", ("bob@inner.example",), contact="c@x.example"))
    # Several targets, one shared with bob: expanded, shared ones added once.
    rt.store.put_forward(Forward("carol@fwd.example", ("Carol@Inner.Example", "bob@inner.example")))
    rt.store.put_forward(Forward("old@fwd.example", (), moved_to="new@elsewhere.example"))
    rt.store.put_forward(
        Forward("nul@fwd.example", ("nul@inner.example", "nul@phone.example"), null_sender="hold")
    )
    # A recipient with a policy of its own: its SPF actions, its sender
    # rewrite, trusted forwarders whose checks fail, miss and pass.
    rt.store.put_forward(
        Forward(
            "pol@fwd.example",
            ("pol@inner.example",),
            spf_actions=(("softfail", "reject"), ("fail", "accept")),
            rewrite="none",
            trusted=("relay.example", "198.51.100.0/24", "alumni.example"),
        )
    )
    now = time.time()
    records = []
    for i, (sender, state) in enumerate(((B_SENDER, "B"), (U_SENDER, "U"))):
        srs_addr = rt.settings.srs.forward(sender, now=now).lower()
        records.append(
            MessageRecord(
                srs_addr,
                f"m{i}.0",
                f"m{i}",
                state,
                sender,
                "bob@fwd.example",
                "bob@inner.example",
                now,
                rt.settings.instance,
                "Q0",
            )
        )
    rt.store.record_messages(records, 86400)
    yield rt
    rt.store.close()


@pytest.fixture(scope="module")
def errors() -> Iterator[Errors]:
    handler = Errors()
    logger = logging.getLogger("fwdmilter")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


header_name = st.sampled_from(
    [
        "Authentication-Results",
        "Fwdmilter-Trace",
        "Content-Type",
        "Subject",
        "From",
        "Received",
        "Auto-Submitted",
        "X-Fuzz",
    ]
)
header_value = st.one_of(
    hostile_text,
    octets_text,
    st.sampled_from(
        [
            ";",
            "",
            "mx.fwd.example; spf=pass",
            '"mx.fwd.example"; spf=pass',
            "(a (b)) mx.fwd.example; none",
            "fwd.example; id=abc; by=mx.fwd.example",
            "multipart/report; report-type=delivery-status; boundary=b1",
        ]
    ),
)
headers = st.lists(st.tuples(header_name, header_value), max_size=8)


def _split_message(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\n\n")
    fields = []
    for line in head.decode("utf-8", "surrogateescape").split("\n"):
        name, _, value = line.partition(": ")
        fields.append((name, value))
    return fields, body


#: (header fields, body): arbitrary ones, or a fuzzed bounce report whose
#: own Content-Type leads the fuzzed fields.
message = st.one_of(
    st.tuples(headers, st.binary(max_size=500)),
    st.builds(
        lambda report, extra: (_split_message(report)[0] + extra, _split_message(report)[1]),
        dsn_messages(),
        headers,
    ),
)


def _weighted(*choices: tuple[int, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """One of ``choices``, each as often as its weight says (st.one_of
    would favour the richest one)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


ours = st.sampled_from(
    [
        "<bob@fwd.example>",
        "<BOB@FWD.EXAMPLE>",
        "<carol@fwd.example>",
        "<old@fwd.example>",
        "<nul@fwd.example>",
        "<pol@fwd.example>",
        "<nobody@fwd.example>",
        "<x@elsewhere.example>",
    ]
)
hostile_local = st.one_of(hostile_text, octets_text)
srs_field = st.one_of(st.from_regex(r"\A[A-Za-z0-9+/]{0,6}\Z"), hostile_text)
rcpt = _weighted(
    (3, ours),
    (3, st.sampled_from(["B", "U", "fresh", "forged"])),  # SRS addresses: see _rcpt
    (1, path),
    (1, st.builds(lambda lp: f"<{lp}@fwd.example>", hostile_local)),
    # Valid SRS addresses of hostile senders, and SRS-shaped garbage.
    (1, st.builds(lambda lp: f"srs:{lp}", hostile_local)),
    (
        1,
        st.builds(
            lambda tag, h, t, d, lp: f"<{tag}={h}={t}={d}={lp}@fwd.example>",
            st.sampled_from(["SRS0", "SRS1", "srs0", "SRS0+"]),
            srs_field,
            srs_field,
            srs_field,
            hostile_local,
        ),
    ),
)
inside_sender = _weighted(
    (3, st.just("<>")),
    (
        3,
        st.sampled_from(
            ["<alice@pass.example>", "<Ünï@bücher.example>", "<@r.example:a@b.example>"]
        ),
    ),
    (1, path),
    (1, st.builds(lambda lp: f"<{lp}@pass.example>", hostile_local)),
    (1, st.builds(lambda d: f"<x@{d}>", hostile_local)),
)
# From outside, only names the session's DNS server answers for (it refuses
# the rest, which would be DNS trouble, not input).
outside_sender = _weighted(
    (3, st.sampled_from(["<>", "<alice@pass.example>", "<x@softfail.example>"])),
    (1, st.builds(lambda p: f"<{p}.example>", hostile_text.filter(lambda t: "@" in t))),
    (1, st.builds(lambda lp: f"<{lp}@pass.example>", hostile_text)),
    (
        2,
        st.builds(
            lambda lp, d: f"<{lp}@{d}>",
            st.one_of(hostile_text, st.from_regex(r"\A[a-z.-]{0,70}\Z")),
            st.sampled_from(["macro.example", "explain.example"]),
        ),
    ),
    (1, st.builds(lambda d: f"<x@{d}.example>", hostile_text)),
)


# RCPT parameters (RFC 3461): NOTIFY and ORCPT are carried over to the
# forwarded recipient, so their values reach libmilter's addrcpt.
esmtp_param = _weighted(
    (1, st.just("NOTIFY=FAILURE")),
    (1, hostile_text),
    (1, st.builds(lambda v: f"NOTIFY={v}", st.one_of(hostile_text, octets_text))),
    (1, st.builds(lambda v: f"ORCPT=rfc822;{v}", st.one_of(hostile_text, octets_text))),
)


@st.composite
def transactions(draw: st.DrawFn) -> dict[str, Any]:
    outside = draw(st.booleans())
    if outside:
        sender = draw(outside_sender)
        helo = draw(
            st.one_of(st.just("mx.pass.example"), hostile_text.map(lambda t: t + ".example"))
        )
    else:
        sender = draw(inside_sender)
        helo = draw(st.one_of(st.just("inner.example"), hostile_text))
    return {
        "ip": OUTSIDE_IP if outside else TRUSTED_IP,
        "helo": helo,
        "sender": sender,
        "rcpts": draw(st.lists(rcpt, min_size=1, max_size=3)),
        **dict(zip(("headers", "body"), draw(message), strict=True)),
        "params": draw(st.lists(esmtp_param, max_size=2)),
    }


def _rcpt(rt: runtime.Runtime, which: str) -> str:
    now = time.time()
    if which == "B":
        return f"<{rt.settings.srs.forward(B_SENDER, now=now)}>"
    if which == "U":
        return f"<{rt.settings.srs.forward(U_SENDER, now=now)}>"
    if which == "fresh":
        return f"<{rt.settings.srs.forward('fresh@pass.example', now=now)}>"
    if which == "forged":
        return "<SRS0=AAAA=JM=pass.example=alice@fwd.example>"
    if which.startswith("srs:"):
        try:
            return f"<{rt.settings.srs.forward(which[4:] + '@pass.example', now=now)}>"
        except SRSError:
            return which[4:]
    return which


def _temporary_ok(reply: tuple[Any, ...]) -> bool:
    """The only 4xx input may earn: a held target (state, not the input's
    fault, and it ends), and 452 4.5.3 for a recipient that must come in a
    transaction of its own (RFC 5321 section 3.5.3: the client sends it at
    once, and it is not refused again for that)."""
    return any(
        reply[:3] == (str(r.code), r.status, r.milter_text())
        for r in (replies.TARGET_HELD, replies.SPLIT_TRANSACTION)
    )


FINAL = {int(Milter.CONTINUE), int(Milter.REJECT), int(Milter.DISCARD), int(Milter.ACCEPT)}


def run_transaction(rt: runtime.Runtime, hooks: Hooks, tx: dict[str, Any]) -> list[int]:
    """Drive one transaction as libmilter would; the callbacks' answers."""
    ctx = StrictCtx()
    Milter.factory = lambda: FwdMilter(rt, hooks)
    rc = ctx._connect(host="client.example", helo=tx["helo"], ip=tx["ip"])
    answers = [rc]
    if rc != Milter.CONTINUE:
        return answers
    rc = ctx._envfrom(tx["sender"])
    answers.append(rc)
    if rc != Milter.CONTINUE:
        _check_reply(rc, ctx._reply)
        return answers
    accepted = 0
    for rcpt in tx["rcpts"]:
        ctx._stage = Milter.M_ENVRCPT
        rc = ctx._priv.envrcpt(_rcpt(rt, rcpt), *tx["params"])
        ctx._stage = None
        answers.append(rc)
        if rc == Milter.CONTINUE:
            accepted += 1
        else:
            _check_reply(rc, ctx._reply)
    if not accepted:
        return answers
    for name, value in tx["headers"]:
        answers.append(ctx._priv.header_bytes(name, value.encode("utf-8", "surrogateescape")))
    if tx["body"]:
        answers.append(ctx._priv.body(tx["body"]))
    ctx._body = None
    ctx._reply = None
    rc = ctx._eom()
    _check_reply(rc, ctx._reply)
    answers.append(rc)
    return answers


def _check_reply(rc: int, reply: tuple[Any, ...] | None) -> None:
    if rc == Milter.TEMPFAIL:
        assert reply is not None and _temporary_ok(reply), reply
    else:
        assert rc in FINAL, (rc, reply)


@FUZZ
@given(transactions())
def test_no_input_earns_a_temporary_reply_or_an_internal_error(
    fuzz_rt: runtime.Runtime, errors: Errors, tx: dict[str, Any]
) -> None:
    errors.seen.clear()
    answers = run_transaction(fuzz_rt, Hooks(), tx)
    assert not errors.seen, errors.seen
    for rc in answers:
        assert rc in FINAL or rc in (Milter.TEMPFAIL, Milter.NOREPLY), answers
