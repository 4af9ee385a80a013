"""What docs/postfix.md says about bounce_size_limit, shown on a small scale.

The doc's rule is ``bounce_size_limit = message_size_limit - 1048576``. Here
the bounce limit is 200 000 bytes and the message limit 1 MiB above it, as
the rule says: a held bounce of a message under the bounce limit carries it
whole and ``fwdctl held requeue`` sends it again; a larger message (under
the message limit) bounces with its headers only and stays held. With both
limits equal, the bounce of a message near the limit does not fit: Postfix
refuses to write it and keeps the original deferred ("bounce failed").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.docs.scenario import main_cf
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.sink import Sink
from tests.harness.smtp import make_message, send, unique

pytestmark = pytest.mark.e2e

BOUNCE_LIMIT = 200_000
MARGIN = int(main_cf()["message_size_limit"]) - int(main_cf()["bounce_size_limit"])


def _body(size: int) -> str:
    line = "x" * 77 + "\n"
    return line * (size // len(line))


def _held(fm: FwdMilter, target: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(
        fm.fwdctl("held", "list", "--json", "--target", target).stdout
    )
    return out


def _send_and_hold(
    fm: FwdMilter, border: PostfixInstance, sink: Sink, size: int
) -> tuple[str, dict[str, Any]]:
    tok = unique()
    rcpt, target = f"f{tok}@fwd.example", f"t{tok}@downstream.example"
    fm.fwdctl("forward", "set", rcpt, target)
    sender = f"s{tok}@softfail.example"
    with sink.refusing(target):
        t = send(
            border.port,
            sender,
            [rcpt],
            make_message(sender, rcpt, subject=f"size {tok}", body=_body(size)),
            source_ip="127.0.0.2",
            helo="helo.softfail.example",
        )
        assert t.accepted, t
        deadline = time.monotonic() + 20
        while not (held := _held(fm, target)):
            assert time.monotonic() < deadline, fm.log()[-2000:] + border.explain()
            time.sleep(0.2)
    return target, held[0]


@pytest.fixture(scope="module")
def forwarder(
    mail: MailWorld,
    sink: Sink,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FwdMilter, PostfixInstance]]:
    fm = FwdMilter(
        runtime.socket("docs-bounce-size"),
        tmp_path_factory.mktemp("bounce-size"),
        dns_port=mail.dns.port,
    )
    border = border_factory(
        milter=fm.spec,
        name="border-size",
        start=False,
        route_bounces=False,
        transport={"downstream.example": f"smtp:[127.0.0.1]:{sink.port('mda')}"},
        main={
            "message_size_limit": str(BOUNCE_LIMIT + MARGIN),
            "bounce_size_limit": str(BOUNCE_LIMIT),
        },
    )
    fm.serve(border)
    border.start()
    yield fm, border
    fm.stop()


def test_the_rule_leaves_a_megabyte() -> None:
    assert MARGIN == 1048576


def test_a_message_under_the_bounce_limit_is_held_whole_and_requeued(
    forwarder: tuple[FwdMilter, PostfixInstance], mail: MailWorld, sink: Sink
) -> None:
    fm, border = forwarder
    target, _ = _send_and_hold(fm, border, sink, BOUNCE_LIMIT - 10_000)
    done = fm.fwdctl("held", "requeue", "--target", target)
    assert "submitted to" in done.stdout
    got = mail.wait_for(target)
    assert len(got.data) > BOUNCE_LIMIT - 10_000


def test_a_larger_message_bounces_with_its_headers_only_and_stays_held(
    forwarder: tuple[FwdMilter, PostfixInstance], sink: Sink
) -> None:
    fm, border = forwarder
    target, entry = _send_and_hold(fm, border, sink, BOUNCE_LIMIT + 100_000)
    out = fm.fwdctl("held", "requeue", "--target", target, check=False)
    assert out.returncode == 1
    assert "carries only the message's headers" in out.stderr
    assert [(e["state"], e["queue_id"]) for e in _held(fm, target)] == [("H", entry["queue_id"])]


def test_a_bounce_limit_equal_to_the_message_limit_fails_near_the_limit(
    forwarder: tuple[FwdMilter, PostfixInstance], sink: Sink
) -> None:
    fm, border = forwarder
    border.set_main(message_size_limit=str(BOUNCE_LIMIT), bounce_size_limit=str(BOUNCE_LIMIT))
    try:
        tok = unique()
        rcpt, target = f"f{tok}@fwd.example", f"t{tok}@downstream.example"
        fm.fwdctl("forward", "set", rcpt, target)
        sender = f"s{tok}@softfail.example"
        with sink.refusing(target):
            t = send(
                border.port,
                sender,
                [rcpt],
                make_message(sender, rcpt, subject=f"near {tok}", body=_body(BOUNCE_LIMIT - 4500)),
                source_ip="127.0.0.2",
                helo="helo.softfail.example",
            )
            assert t.accepted, t
            border.wait_log(rf"{t.queue_id}: status=deferred \(bounce failed\)")
        assert "Message file too big" in border.log() or "close error" in border.log()
        assert _held(fm, target) == []
        # Clean up: the original would be retried at every queue run.
        border.postsuper("-d", str(t.queue_id))
        assert not [q for q in border.queue() if q.queue_id == t.queue_id]
    finally:
        border.set_main(
            message_size_limit=str(BOUNCE_LIMIT + MARGIN), bounce_size_limit=str(BOUNCE_LIMIT)
        )
