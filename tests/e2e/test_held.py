"""Message states end to end: B bounces, U is held, requeue, release, expiry.

Two downstreams can refuse, each through one bounce path:

* ``downstream.example`` is reached by BORDER itself (sink listener "mda",
  which can refuse chosen recipients): BORDER's bounce daemon makes the
  bounce, and it reaches the milter through ``non_smtpd_milters``.
* ``final+TOKEN@inner.example`` lives behind INNER on the same listener:
  INNER makes the bounce and sends it back to BORDER over SMTP.

"mda" speaks no DSN, so the MTA before it answers NOTIFY=SUCCESS with a
"relayed" notice: that notice is what releases a requeued message.

The module runs once per store backend: the embedded SQLite file and a
private Redis server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fwdmilter import replies
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.redis import RedisServer
from tests.harness.sink import Sink
from tests.harness.smtp import unique

pytestmark = pytest.mark.e2e
ADMIN = "postmaster@admin.example"


@dataclass
class World:
    fm: FwdMilter
    border: PostfixInstance
    mail: MailWorld
    sink: Sink

    def held(self, *args: str) -> list[dict[str, Any]]:
        return self.fm.held(*args)

    def send(self, sender: str, rcpt: str, subject: str, body: str = "Hello.\n") -> Any:
        return self.mail.send_from_outside(self.border, sender, [rcpt], subject, body=body)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def world(
    request: pytest.FixtureRequest,
    mail: MailWorld,
    sink: Sink,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp(f"held-{request.param}")
    redis: RedisServer | None = None
    store_url = None
    if request.param == "redis":
        redis = RedisServer(workdir / "redis")
        store_url = redis.url
    fm = FwdMilter(
        runtime.socket(f"fwd-held-{request.param}"),
        workdir / "milter",
        dns_port=mail.dns.port,
        store_url=store_url,
        settings={"held": {"alert_to": [ADMIN], "retention_days": 30}},
    )
    border = border_factory(
        milter=fm.spec,
        start=False,
        transport={"downstream.example": f"smtp:[127.0.0.1]:{sink.port('mda')}"},
        # Small, so that one test can show a bounce that returns headers only.
        main={"bounce_size_limit": "20000"},
    )
    fm.serve(border)
    border.start()
    yield World(fm, border, mail, sink)
    fm.stop()
    if redis is not None:
        redis.stop()


def forwarding(w: World, target: str | None = None, contact: bool = True) -> tuple[str, str, str]:
    tok = unique()
    rcpt = f"f{tok}@fwd.example"
    target = target or f"t{tok}@downstream.example"
    opts = ["--contact", f"c{tok}@mobile.example"] if contact else []
    w.fm.fwdctl("forward", "set", rcpt, target, *opts)
    return rcpt, target, tok


def wait_held(
    w: World, target: str, count: int = 1, state: str = "H", timeout: float = 20.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        entries = [e for e in w.held("--target", target) if e["state"] == state]
        if len(entries) >= count:
            return entries
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{count} {state} entries for {target} not seen: {w.held()}\n{w.fm.log()[-3000:]}\n"
                + w.mail.explain()
            )
        time.sleep(0.2)


def test_unbouncable_mail_is_held_never_bounced_and_the_admin_is_told(world: World) -> None:
    w = world
    rcpt, target, tok = forwarding(w)
    sender = f"s{tok}@softfail.example"
    with w.sink.refusing(target, "550 5.1.1 mailbox unknown"):
        t = w.send(sender, rcpt, f"held {tok}")
        assert t.accepted, t
        (entry,) = wait_held(w, target)
    assert entry["sender"] == sender
    assert entry["target"] == target
    assert entry["held_at"] > 0 and entry["queue_id"]
    assert "5.1.1" in entry["reason"]
    held_queue = w.border.queue("hold")
    assert [q.queue_id for q in held_queue if q.queue_id == entry["queue_id"]]
    # The admin and the recipient's alternate contact hear of it ...
    alert = w.mail.wait_for(ADMIN, match=lambda m: target in str(m.email["Subject"]))
    assert alert.mail_from == ""
    assert f"c{tok}@mobile.example" in alert.rcpt_addresses
    assert f"fwdctl held requeue --target {target}" in alert.email.get_content()
    # ... and the unverified sender hears nothing.
    w.mail.assert_nothing_for(sender)
    # U mail for the held target is deferred; B mail still flows.
    t = w.send(f"u{tok}@neutral.example", rcpt, f"deferred {tok}")
    assert t.rcpt(rcpt).startswith(str(replies.TARGET_HELD)), t
    t = w.send(f"b{tok}@pass.example", rcpt, f"flows {tok}")
    assert t.accepted, t
    w.mail.wait_for(
        target, mail_from=None, match=lambda m: f"flows {tok}" in str(m.email["Subject"])
    )


def test_requeue_after_the_fix_delivers_and_releases_the_target(world: World) -> None:
    w = world
    rcpt, target, tok = forwarding(w)
    sender = f"s{tok}@softfail.example"
    with w.sink.refusing(target):
        assert w.send(sender, rcpt, f"first {tok}").accepted
        (entry,) = wait_held(w, target)
    # The downstream is fixed (no longer refusing): the admin requeues.
    done = w.fm.fwdctl("held", "requeue", "--target", target)
    assert "submitted to" in done.stdout
    msg = w.mail.wait_for(target, match=lambda m: f"first {tok}" in str(m.email["Subject"]))
    assert msg.mail_from.startswith("SRS0=") and msg.mail_from.endswith("@fwd.example")
    assert not [q for q in w.border.queue("hold") if q.queue_id == entry["queue_id"]]
    # The "relayed" notice comes back and releases the target.
    deadline = time.monotonic() + 20
    while w.held("--target", target) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert w.held("--target", target) == [], w.fm.log()[-2000:]
    w.mail.assert_nothing_for(sender)
    t = w.send(f"u{tok}@neutral.example", rcpt, f"again {tok}")
    assert t.accepted, t


def test_requeued_mail_that_fails_again_is_held_again(world: World) -> None:
    w = world
    rcpt, target, tok = forwarding(w)
    sender = f"s{tok}@softfail.example"
    with w.sink.refusing(target):
        assert w.send(sender, rcpt, f"twice {tok}").accepted
        (first,) = wait_held(w, target)
        w.fm.fwdctl("held", "requeue", "--target", target)
        deadline = time.monotonic() + 20
        while True:
            (entry,) = w.held("--target", target)
            if entry["state"] == "H" and entry["queue_id"] != first["queue_id"]:
                break
            assert time.monotonic() < deadline, (entry, w.fm.log()[-2000:])
            time.sleep(0.2)
    hold_ids = {q.queue_id for q in w.border.queue("hold")}
    assert entry["queue_id"] in hold_ids and first["queue_id"] not in hold_ids
    w.mail.assert_nothing_for(sender)
    # Release it for good, so that the module's later tests see a clean target.
    w.fm.fwdctl("held", "requeue", "--target", target)
    w.mail.wait_for(target, match=lambda m: f"twice {tok}" in str(m.email["Subject"]))


def test_bounce_for_bouncable_message_reaches_its_sender(world: World) -> None:
    w = world
    rcpt, target, tok = forwarding(w)
    sender = f"s{tok}@pass.example"
    with w.sink.refusing(target):
        assert w.send(sender, rcpt, f"bouncable {tok}").accepted
        bounce = w.mail.wait_for(sender)
    assert bounce.mail_from == ""
    assert w.held("--target", target) == []


def test_inner_bounce_over_smtp_is_held_and_requeued(world: World) -> None:
    w = world
    tok = unique()
    target = f"final+{tok}@inner.example"
    rcpt, _, _ = forwarding(w, target=target)
    sender = f"s{tok}@softfail.example"
    with w.sink.refusing(target):
        assert w.send(sender, rcpt, f"inner {tok}").accepted
        (entry,) = wait_held(w, target)
    assert entry["sender"] == sender
    w.fm.fwdctl("held", "requeue", "--target", target)
    w.mail.wait_for(target, match=lambda m: f"inner {tok}" in str(m.email["Subject"]))
    deadline = time.monotonic() + 20
    while w.held("--target", target) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert w.held("--target", target) == []
    w.mail.assert_nothing_for(sender)


def test_a_bounce_with_headers_only_stays_held_on_requeue(world: World) -> None:
    w = world
    rcpt, target, tok = forwarding(w)
    sender = f"s{tok}@softfail.example"
    with w.sink.refusing(target):
        assert w.send(
            sender, rcpt, f"big {tok}", body="x" * 100 + "\n" * 300 + "y" * 30000 + "\n"
        ).accepted
        (entry,) = wait_held(w, target)
    out = w.fm.fwdctl("held", "requeue", "--target", target, check=False)
    assert out.returncode == 1
    assert "only the message's headers" in out.stderr
    (still,) = w.held("--target", target)
    assert (still["state"], still["queue_id"]) == ("H", entry["queue_id"])
    # Expiry after the retention period clears it (time injected).
    later = str(time.time() + 31 * 86400)
    expired = w.fm.fwdctl("held", "expire", "--now", later)
    assert "discarded" in expired.stdout
    assert w.held("--target", target) == []
    assert entry["queue_id"] not in {q.queue_id for q in w.border.queue("hold")}
    notice = w.mail.wait_for(
        f"c{tok}@mobile.example", match=lambda m: "discarded" in str(m.email["Subject"])
    )
    assert notice.mail_from == ""


def test_null_sender_held_by_policy_does_not_defer_the_target(world: World) -> None:
    w = world
    tok = unique()
    rcpt = f"f{tok}@fwd.example"
    target = f"t{tok}@downstream.example"
    w.fm.fwdctl("forward", "set", rcpt, target, "--null-sender", "hold")
    t = w.send("", rcpt, f"bounce for you {tok}")
    assert t.accepted, t
    (entry,) = wait_held(w, target, state="N")
    assert entry["sender"] == ""
    w.mail.assert_nothing_for(target)
    assert w.send(f"u{tok}@neutral.example", rcpt, f"u {tok}").accepted
    w.fm.fwdctl("held", "requeue", "--target", target)
    got = w.mail.wait_for(
        target, match=lambda m: f"bounce for you {tok}" in str(m.email["Subject"])
    )
    assert got.mail_from == ""
    assert w.held("--target", target) == []


def test_stats_count_per_state_and_target(world: World) -> None:
    w = world
    rcpt, target, tok = forwarding(w)
    with w.sink.refusing(target):
        assert w.send(f"s{tok}@softfail.example", rcpt, f"stats {tok}").accepted
        wait_held(w, target)
    stats = json.loads(w.fm.fwdctl("stats", "--json").stdout)
    assert stats["held_by_target"][target] == {"H": 1, "R": 0}
    assert stats["held"]["H"] >= 1
    assert stats["messages"]["H"] >= 1
    text = w.fm.fwdctl("stats").stdout
    assert f"{target}: H=1 R=0" in text
    w.fm.fwdctl("held", "requeue", "--target", target)


def test_drop_discards_an_entry_and_its_held_bounce_at_once(world: World) -> None:
    w = world
    rcpt, target, tok = forwarding(w)
    with w.sink.refusing(target):
        assert w.send(f"s{tok}@softfail.example", rcpt, f"drop {tok}").accepted
        (entry,) = wait_held(w, target)
    other = w.fm.fwdctl("held", "drop", "--target", target, "--id", "nobody/none")
    assert "nothing is held for that" in other.stdout
    assert len(w.held("--target", target)) == 1
    done = w.fm.fwdctl("held", "drop", "--target", target, "--id", entry["entry_id"])
    assert "dropped with its held message" in done.stdout
    assert w.held("--target", target) == []
    assert entry["queue_id"] not in {q.queue_id for q in w.border.queue("hold")}
    assert w.send(f"u{tok}@neutral.example", rcpt, f"flows {tok}").accepted


def test_two_targets_one_refusing_hold_and_requeue_that_target_alone(world: World) -> None:
    w = world
    tok = unique()
    rcpt, contact = f"f{tok}@fwd.example", f"c{tok}@mobile.example"
    good, bad = f"g{tok}@downstream.example", f"b{tok}@downstream.example"
    w.fm.fwdctl("forward", "set", rcpt, good, bad, "--contact", contact)
    sender = f"s{tok}@softfail.example"

    def titled(text: str) -> Any:
        return lambda m: str(m.email["Subject"]) == text

    with w.sink.refusing(bad, "550 5.1.1 mailbox unknown"):
        assert w.send(sender, rcpt, f"two {tok}").accepted
        (entry,) = wait_held(w, bad)
        w.mail.wait_for(good, match=titled(f"two {tok}"))
    # Held for the refusing target only; the other one got its copy.
    assert (entry["rcpt"], entry["sender"]) == (rcpt, sender)
    assert w.held("--target", good) == []
    # The admins and the contact hear which target failed.
    alert = w.mail.wait_for(ADMIN, match=lambda m: bad in str(m.email["Subject"]))
    assert contact in alert.rcpt_addresses
    assert good not in alert.email.get_content()
    # U mail for the address waits, for both targets; B mail goes to both.
    t = w.send(f"u{tok}@neutral.example", rcpt, f"deferred {tok}")
    assert t.rcpt(rcpt).startswith(str(replies.TARGET_HELD)), t
    assert w.send(f"v{tok}@pass.example", rcpt, f"verified {tok}").accepted
    for target in (good, bad):
        w.mail.wait_for(target, match=titled(f"verified {tok}"))
    # The downstream is fixed: the requeue goes to the failed target alone ...
    done = w.fm.fwdctl("held", "requeue", "--target", bad)
    assert f"submitted to {bad}" in done.stdout
    again = w.mail.wait_for(bad, match=titled(f"two {tok}"))
    assert again.rcpt_addresses == [bad]
    # ... and its delivery notice releases it.
    deadline = time.monotonic() + 20
    while w.held("--target", bad) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert w.held("--target", bad) == [], w.fm.log()[-2000:]
    w.mail.wait_idle()
    assert len(w.sink.messages(good, match=titled(f"two {tok}"))) == 1  # never twice
    # U mail flows again, to both targets.
    assert w.send(f"u{tok}@neutral.example", rcpt, f"again {tok}").accepted
    for target in (good, bad):
        w.mail.wait_for(target, match=titled(f"again {tok}"))
    w.mail.assert_nothing_for(sender)


def test_null_sender_kept_for_two_targets_is_requeued_target_by_target(world: World) -> None:
    w = world
    tok = unique()
    rcpt = f"f{tok}@fwd.example"
    one, two = f"n1{tok}@downstream.example", f"n2{tok}@downstream.example"
    w.fm.fwdctl("forward", "set", rcpt, one, two, "--null-sender", "hold")
    t = w.send("", rcpt, f"kept {tok}")
    assert t.accepted, t
    (first,) = wait_held(w, one, state="N")
    (second,) = wait_held(w, two, state="N")
    assert first["queue_id"] == second["queue_id"]  # one held message, an entry each
    w.mail.assert_nothing_for(one)
    w.mail.assert_nothing_for(two)
    # The first target's requeue forwards it there alone; the held message
    # stays for the second.
    done = w.fm.fwdctl("held", "requeue", "--target", one)
    assert "its held message stays" in done.stdout, done.stdout
    got = w.mail.wait_for(one, match=lambda m: f"kept {tok}" in str(m.email["Subject"]))
    assert (got.mail_from, got.rcpt_addresses) == ("", [one])
    assert first["queue_id"] in {q.queue_id for q in w.border.queue("hold")}
    w.mail.assert_nothing_for(two)
    done = w.fm.fwdctl("held", "requeue", "--target", two)
    assert "with its held message" in done.stdout, done.stdout
    got = w.mail.wait_for(two, match=lambda m: f"kept {tok}" in str(m.email["Subject"]))
    assert got.rcpt_addresses == [two]
    assert first["queue_id"] not in {q.queue_id for q in w.border.queue("hold")}
    assert w.held("--target", one) == w.held("--target", two) == []
    assert len(w.sink.messages(one, match=lambda m: f"kept {tok}" in str(m.email["Subject"]))) == 1
