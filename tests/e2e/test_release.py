"""The admin's side of held mail through a real Postfix border: release on
the border's own delivery, held files counted by reference, ``held check``,
``show``/``list``/``--dry-run``/``--id``, ``--instance``, and alerts whose
recipients fail one by one.

Targets live on the sink's "internet" listener, which advertises DSN,
accepts ``NOTIFY=SUCCESS`` and never sends a notice (nor, then, does
Postfix: responsibility passed downstream): the only way such a target is
released is the border's own knowledge that it delivered the message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from fwdmilter import replies
from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import HeldEntry
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.sink import Sink
from tests.harness.smtp import unique

pytestmark = pytest.mark.e2e
ADMIN = "postmaster@admin.example"
DEFERRED = str(replies.TARGET_HELD)


@dataclass
class World:
    fm: FwdMilter
    border: PostfixInstance
    mail: MailWorld
    sink: Sink

    def held(self, *args: str) -> list[dict[str, Any]]:
        return self.fm.held(*args)

    def send(self, sender: str, rcpts: list[str], subject: str) -> Any:
        return self.mail.send_from_outside(self.border, sender, rcpts, subject)

    def store_entries(self, target: str) -> list[HeldEntry]:
        store = open_store(StoreSettings(url=self.fm.settings["store"]["url"]))
        try:
            return store.held(target)
        finally:
            store.close()

    def hold_queue(self) -> set[str]:
        return {q.queue_id for q in self.border.queue("hold")}


@pytest.fixture(scope="module")
def world(
    mail: MailWorld,
    sink: Sink,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    fm = FwdMilter(
        runtime.socket("fwd-release"),
        tmp_path_factory.mktemp("release") / "milter",
        dns_port=mail.dns.port,
        settings={"held": {"alert_to": [ADMIN], "retention_days": 30}},
    )
    border = border_factory(milter=fm.spec, start=False)
    fm.serve(border)
    border.start()
    yield World(fm, border, mail, sink)
    fm.stop()


def forwarding(w: World, target: str | None = None, contact: str = "") -> tuple[str, str, str]:
    tok = unique()
    rcpt = f"f{tok}@fwd.example"
    target = target or f"t{tok}@target.example"
    opts = ["--contact", contact] if contact else []
    w.fm.fwdctl("forward", "set", rcpt, target, *opts)
    return rcpt, target.lower(), tok


def wait_state(w: World, target: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        entries = w.held("--target", target)
        if len(entries) == 1 and entries[0]["state"] == state:
            return entries[0]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no single {state} entry for {target}: {entries}\n{w.fm.log()[-3000:]}\n"
                + w.mail.explain()
            )
        time.sleep(0.2)


def hold_one(
    w: World, target: str | None = None, contact: str = ""
) -> tuple[str, str, str, dict[str, Any]]:
    """A U message forwarded to a refusing target, its bounce held."""
    rcpt, target, tok = forwarding(w, target, contact)
    with w.sink.refusing(target, "550 5.1.1 mailbox unknown"):
        t = w.send(f"s{tok}@softfail.example", [rcpt], f"held {tok}")
        assert t.accepted, t
        entry = wait_state(w, target, "H")
    return rcpt, target, tok, entry


def test_requeued_mail_is_released_once_the_border_delivered_it(world: World) -> None:
    w = world
    # Typed in capitals: the deferral and the entries must still agree.
    tok0 = unique()
    rcpt, target, tok, entry = hold_one(w, f"Nobody{tok0}@Target.Example")
    assert entry["target"] == target == f"nobody{tok0}@target.example"
    t = w.send(f"u{tok}@neutral.example", [rcpt], f"deferred {tok}")
    assert t.rcpt(rcpt).startswith(DEFERRED), t
    # The downstream is fixed, but Postfix holds the requeued mail a while
    # (defer_transports): while it is queued, release leaves the entry R.
    w.border.set_main(defer_transports="smtp")
    try:
        out = w.fm.fwdctl("held", "requeue", "--target", target)
        assert f"submitted to {target}" in out.stdout
        requeued = wait_state(w, target, "R")
        assert requeued["requeue_id"] and requeued["requeue_id"] in out.stdout
        assert requeued["requeue_id"] in {q.queue_id for q in w.border.queue()}
        assert entry["queue_id"] not in w.hold_queue()  # nobody else needed it
        out = w.fm.fwdctl("held", "release")
        assert out.stdout == ""
        assert wait_state(w, target, "R")["requeue_id"] == requeued["requeue_id"]
        t = w.send(f"u{tok}@neutral.example", [rcpt], f"still deferred {tok}")
        assert t.rcpt(rcpt).startswith(DEFERRED), t
    finally:
        w.border.set_main(defer_transports=None)
    deadline = time.monotonic() + 30
    while requeued["requeue_id"] in {q.queue_id for q in w.border.queue()}:
        assert time.monotonic() < deadline, w.border.explain()
        w.border.flush()
        time.sleep(0.5)
    got = w.mail.wait_for(target, match=lambda m: f"held {tok}" in str(m.email["Subject"]))
    assert got.rcpt(target).params.get("NOTIFY") == "SUCCESS,FAILURE"
    # No notice comes from downstream; the border knows it delivered.
    out = w.fm.fwdctl("--verbose", "held", "release")
    assert f"released: {requeued['requeue_id']} was delivered by the MTA" in out.stdout
    assert "held=released" in out.stderr and f"target={target}" in out.stderr
    assert w.held("--target", target) == []
    t = w.send(f"u{tok}@neutral.example", [rcpt], f"accepted {tok}")
    assert t.accepted, t
    w.mail.assert_nothing_for(f"s{tok}@softfail.example")


def test_requeued_mail_that_fails_again_is_held_again_not_released(world: World) -> None:
    w = world
    rcpt, target, tok, first = hold_one(w)
    with w.sink.refusing(target, "550 5.1.1 still unknown"):
        w.fm.fwdctl("held", "requeue", "--target", target)
        deadline = time.monotonic() + 20
        while True:
            (entry,) = w.held("--target", target)
            if entry["state"] == "H" and entry["queue_id"] != first["queue_id"]:
                break
            assert time.monotonic() < deadline, (entry, w.fm.log()[-2000:])
            time.sleep(0.2)
        assert entry["requeue_id"] == "" and "still unknown" in entry["reason"]
        assert w.fm.fwdctl("held", "release").stdout == ""
        assert w.held("--target", target)[0]["state"] == "H"
        t = w.send(f"u{tok}@neutral.example", [rcpt], f"deferred {tok}")
        assert t.rcpt(rcpt).startswith(DEFERRED), t
    w.fm.fwdctl("held", "requeue", "--target", target)
    w.mail.wait_for(target, match=lambda m: f"held {tok}" in str(m.email["Subject"]))


def test_a_held_file_shared_by_two_targets_goes_with_the_last(world: World) -> None:
    w = world
    rcpt_a, target_a, tok = forwarding(w)
    rcpt_b, target_b, _ = forwarding(w)
    with w.sink.refusing(target_a), w.sink.refusing(target_b):
        t = w.send(f"s{tok}@softfail.example", [rcpt_a, rcpt_b], f"shared {tok}")
        assert t.accepted, t
        a = wait_state(w, target_a, "H")
        b = wait_state(w, target_b, "H")
    assert a["queue_id"] == b["queue_id"]  # one bounce names both targets
    qid = a["queue_id"]
    dry = w.fm.fwdctl("held", "drop", "--target", target_a, "--dry-run")
    assert "dry run:" in dry.stdout and "would be dropped" in dry.stdout
    assert len(w.held("--target", target_a)) == 1
    out = w.fm.fwdctl("held", "drop", "--target", target_a)
    assert "its held message stays: another entry needs it" in out.stdout
    assert qid in w.hold_queue()
    assert w.held("--target", target_a) == []
    out = w.fm.fwdctl("held", "requeue", "--id", b["entry_id"])
    assert f"submitted to {target_b}" in out.stdout and "with its held message" in out.stdout
    assert qid not in w.hold_queue()
    w.mail.wait_for(target_b, match=lambda m: f"shared {tok}" in str(m.email["Subject"]))
    w.mail.assert_nothing_for(target_a, match=lambda m: f"shared {tok}" in str(m.email["Subject"]))


def test_show_list_and_dry_run_change_nothing(world: World) -> None:
    w = world
    _, target, tok, entry = hold_one(w)
    shown = w.fm.fwdctl("held", "show", entry["entry_id"])
    assert shown.stdout.startswith(f"{entry['entry_id']}  H  {target}")
    assert f"<s{tok}@softfail.example>" in shown.stdout and "mailbox unknown" in shown.stdout
    listed = w.fm.fwdctl("held", "list", "--state", "H", "--target", target).stdout
    assert f"id {entry['entry_id']}" in listed
    assert w.held("--state", "R", "--target", target) == []
    dry = w.fm.fwdctl("held", "requeue", "--id", entry["entry_id"], "--dry-run")
    assert f"dry run: {target} {entry['entry_id']}: would submit to {target}" in dry.stdout
    assert wait_state(w, target, "H")["queue_id"] == entry["queue_id"]
    assert entry["queue_id"] in w.hold_queue()
    w.mail.assert_nothing_for(target, match=lambda m: f"held {tok}" in str(m.email["Subject"]))
    later = str(time.time() + 31 * 86400)
    dry = w.fm.fwdctl("held", "expire", "--now", later, "--dry-run")
    assert f"{entry['entry_id']}: would be discarded with its held message" in dry.stdout
    assert len(w.held("--target", target)) == 1
    # Errors: a word each, the documented status, never a traceback.
    for args, status, text in (
        (("held", "show", "nobody/none"), 1, "no such held entry"),
        (("held", "requeue"), 1, "needs --target ADDR, --domain DOMAIN or --id ID"),
        (("held", "drop"), 1, "needs --target ADDR or --id ID"),
    ):
        done = w.fm.fwdctl(*args, check=False)
        assert done.returncode == status, done
        assert text in done.stderr and "Traceback" not in done.stderr
    w.fm.fwdctl("held", "drop", "--id", entry["entry_id"])


def test_held_check_finds_and_mends_what_disagrees(world: World) -> None:
    w = world
    _, target, _, entry = hold_one(w)
    _, orphan_target, _, orphan = hold_one(w)
    w.border.postsuper("-d", entry["queue_id"], "hold")  # deleted by hand
    store = open_store(StoreSettings(url=w.fm.settings["store"]["url"]))
    try:
        assert store.drop(orphan_target, orphan["entry_id"])  # a file nobody lists
    finally:
        store.close()
    later = str(time.time() + 3600)  # past the grace for fresh entries
    done = w.fm.fwdctl("held", "check", "--json", "--now", later, check=False)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert entry["entry_id"] in report["missing"]
    assert orphan["queue_id"] in report["orphans"]
    assert len(w.held("--target", target)) == 1  # reported, not changed
    done = w.fm.fwdctl("--verbose", "held", "check", "--fix", "--now", later, check=False)
    assert f"{entry['entry_id']}: dropped: its held message is gone" in done.stdout
    assert f"held message border.fwd.example/{orphan['queue_id']} is listed by no entry" in (
        done.stderr
    )
    assert "held=dropped" in done.stderr
    assert w.held("--target", target) == []
    assert orphan["queue_id"] in w.hold_queue()  # left for the admin
    w.border.postsuper("-d", orphan["queue_id"], "hold")
    done = w.fm.fwdctl("held", "check", "--json", "--now", later, check=False)
    leftover = json.loads(done.stdout)
    assert entry["entry_id"] not in leftover["missing"]
    assert orphan["queue_id"] not in leftover["orphans"]


def test_entries_of_a_retired_instance_are_reachable_with_instance(world: World) -> None:
    w = world
    _, target, tok, entry = hold_one(w)
    # Move the entry to a host that no longer runs (as a renamed milter left it).
    store = open_store(StoreSettings(url=w.fm.settings["store"]["url"]))
    try:
        (real,) = store.held(target)
        store.drop(target, real.entry_id)
        store.hold(replace(real, host="old-mx", entry_id=f"old-mx/{real.queue_id}"))
    finally:
        store.close()
    done = w.fm.fwdctl("held", "requeue", "--target", target, check=False)
    assert done.returncode == 1
    assert "held on old-mx" in done.stderr and "--instance old-mx" in done.stderr
    listed = w.held("--instance", "old-mx", "--target", target)
    assert [e["entry_id"] for e in listed] == [f"old-mx/{entry['queue_id']}"]
    out = w.fm.fwdctl("held", "requeue", "--target", target, "--instance", "old-mx")
    assert f"submitted to {target}" in out.stdout
    w.mail.wait_for(target, match=lambda m: f"held {tok}" in str(m.email["Subject"]))
    deadline = time.monotonic() + 30
    while w.held("--target", target):
        w.fm.fwdctl("held", "release", "--instance", "old-mx")
        assert time.monotonic() < deadline, (w.held("--target", target), w.border.explain())
        time.sleep(0.5)


def test_a_refused_alert_recipient_does_not_stop_the_others(world: World) -> None:
    w = world
    tok = unique()
    bad = f"nobody{tok}@fwd.example"  # not in the forwarding table: 550 at RCPT
    _, target, _, entry = hold_one(w, contact=bad)
    alert = w.mail.wait_for(ADMIN, match=lambda m: target in str(m.email["Subject"]))
    assert alert.rcpt_addresses == [ADMIN]
    w.fm.wait_log(rf"alert=refused target={target} to={bad} reply=\"550 ")
    deadline = time.monotonic() + 10
    while not (shown := w.held("--target", target)[0])["alerted"]:
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert shown["alerted_to"] == [ADMIN, bad]  # told, and refused for good
    # Nothing left to resend: the daily run does not try the bad contact again.
    out = w.fm.fwdctl("held", "expire")
    assert target not in out.stdout
    w.fm.fwdctl("held", "drop", "--id", entry["entry_id"])


def test_expiry_of_two_entries_sharing_a_file_deletes_it_once_both_are_gone(
    world: World,
) -> None:
    w = world
    rcpt_a, target_a, tok = forwarding(w, contact=f"ca{unique()}@mobile.example")
    rcpt_b, target_b, _ = forwarding(w)
    with w.sink.refusing(target_a), w.sink.refusing(target_b):
        assert w.send(f"s{tok}@softfail.example", [rcpt_a, rcpt_b], f"both {tok}").accepted
        a = wait_state(w, target_a, "H")
        wait_state(w, target_b, "H")
    later = str(time.time() + 31 * 86400)
    out = w.fm.fwdctl("held", "expire", "--now", later).stdout
    lines = [line for line in out.splitlines() if a["entry_id"] in line]
    assert len(lines) == 2, out
    assert sum("discarded with its held message" in line for line in lines) == 1, lines
    assert a["queue_id"] not in w.hold_queue()
    assert w.held("--target", target_a) == w.held("--target", target_b) == []


def test_expiring_requeued_mail_never_says_discarded(world: World) -> None:
    w = world
    contact = f"c{unique()}@mobile.example"
    _, target, tok, _ = hold_one(w, contact=contact)
    w.border.set_main(defer_transports="smtp")
    try:
        w.fm.fwdctl("held", "requeue", "--target", target)
        requeued = wait_state(w, target, "R")
        # 31 days after the requeue, the requeued message still queued.
        later = str(time.time() + 31 * 86400)
        out = w.fm.fwdctl("held", "expire", "--now", later).stdout
        assert (
            f"{target} {requeued['entry_id']}: ended (it was sent again and is still queued as"
            f" {requeued['requeue_id']}) and told"
        ) in out, out
        assert w.held("--target", target) == []
    finally:
        w.border.set_main(defer_transports=None)
    deadline = time.monotonic() + 30
    while requeued["requeue_id"] in {q.queue_id for q in w.border.queue()}:
        assert time.monotonic() < deadline, w.border.explain()
        w.border.flush()
        time.sleep(0.5)
    w.mail.wait_for(target, match=lambda m: f"held {tok}" in str(m.email["Subject"]))
    notice = w.mail.wait_for(contact, match=lambda m: "sent again" in str(m.email["Subject"]))
    subject = " ".join(str(notice.email["Subject"]).split())
    assert subject == f"Held mail for {target} was sent again and is still on its way"
    body = " ".join(notice.email.get_content().split())
    assert "Nothing was discarded" in body and requeued["requeue_id"] in body
    w.mail.assert_nothing_for(contact, match=lambda m: "discarded" in str(m.email["Subject"]))


def test_two_targets_failing_in_one_bounce_are_requeued_and_released_one_by_one(
    world: World,
) -> None:
    # Both targets refuse: one bounce names both, so one held message has an
    # entry for each. Each is requeued and released on its own; the address
    # waits until the last is released.
    w = world
    tok = unique()
    rcpt = f"f{tok}@fwd.example"
    one, two = f"a{tok}@target.example", f"b{tok}@target.example"
    w.fm.fwdctl("forward", "set", rcpt, one, two)
    with w.sink.refusing(one, "550 5.1.1 unknown"), w.sink.refusing(two, "552 5.2.2 full"):
        assert w.send(f"s{tok}@softfail.example", [rcpt], f"both {tok}").accepted
        first, second = wait_state(w, one, "H"), wait_state(w, two, "H")
    assert first["queue_id"] == second["queue_id"]
    assert "5.1.1" in first["reason"] and "5.2.2" in second["reason"]
    out = w.fm.fwdctl("held", "requeue", "--target", one)
    assert "its held message stays: another entry needs it" in out.stdout, out.stdout
    assert first["queue_id"] in w.hold_queue()
    requeued = wait_state(w, one, "R")
    got = w.mail.wait_for(one, match=lambda m: str(m.email["Subject"]) == f"both {tok}")
    assert got.rcpt_addresses == [one]
    deadline = time.monotonic() + 20
    while w.held("--target", one) and time.monotonic() < deadline:
        w.fm.fwdctl("held", "release")
        time.sleep(0.3)
    assert w.held("--target", one) == [], requeued
    # The other target is still held: the whole address still waits.
    assert wait_state(w, two, "H")["entry_id"] == second["entry_id"]
    t = w.send(f"u{tok}@neutral.example", [rcpt], f"deferred {tok}")
    assert t.rcpt(rcpt).startswith(DEFERRED), t
    out = w.fm.fwdctl("held", "requeue", "--target", two)
    assert "with its held message" in out.stdout, out.stdout
    assert first["queue_id"] not in w.hold_queue()
    w.mail.wait_for(two, match=lambda m: str(m.email["Subject"]) == f"both {tok}")
    deadline = time.monotonic() + 20
    while w.held("--target", two) and time.monotonic() < deadline:
        w.fm.fwdctl("held", "release")
        time.sleep(0.3)
    assert w.held("--target", two) == []
    w.mail.wait_idle()
    assert len(w.sink.messages(one, match=lambda m: str(m.email["Subject"]) == f"both {tok}")) == 1
    assert w.send(f"u{tok}@neutral.example", [rcpt], f"flows {tok}").accepted
    w.mail.assert_nothing_for(f"s{tok}@softfail.example")
