"""fwdctl explain: the milter's answers stage by stage, from a real DNS and store.

Nothing is sent: the command runs the milter's own decisions on an SPF
check against the harness's DNS server and on the forwarding table and held
counts of the store, and says why at each stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fwdmilter import replies
from fwdmilter.config import StoreSettings
from fwdmilter.states import Forward, HeldEntry
from fwdmilter.store import open_store
from tests.harness.dns import DnsServer
from tests.harness.fwdmilter_proc import FwdMilter

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fm(dns: DnsServer, tmp_path_factory: pytest.TempPathFactory) -> FwdMilter:
    workdir = tmp_path_factory.mktemp("explain")
    f = FwdMilter(workdir / "unused.sock", workdir, dns_port=dns.port)
    f.write_config()
    f.fwdctl("forward", "set", "bob@fwd.example", "bob@inner.example")
    f.fwdctl("forward", "set", "held@fwd.example", "broken@inner.example")
    f.fwdctl("forward", "set", "old@fwd.example", "old@inner.example")
    f.fwdctl("forward", "delete", "old@fwd.example", "--moved-to", "new@else.example")
    return f


def stages(fm: FwdMilter, *args: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(fm.fwdctl("explain", "--json", *args).stdout)
    return out


def test_a_verified_sender_is_forwarded_with_srs(fm: FwdMilter) -> None:
    mail, rcpt, eom = stages(
        fm,
        "--client",
        "192.0.2.7",
        "--helo",
        "mx.pass.example",
        "--from",
        "a@pass.example",
        "bob@fwd.example",
    )
    assert mail["reply"].startswith("250") and "SPF pass" in mail["why"][0]
    assert "message state B (verified sender)" in mail["why"]
    assert any(
        w.startswith("the envelope sender becomes the SRS address SRS0=") for w in mail["why"]
    )
    assert rcpt["why"][0] == "forwarded to bob@inner.example"
    assert "recipient becomes <bob@inner.example>" in eom["why"]


def test_spf_fail_is_refused_at_rcpt(fm: FwdMilter) -> None:
    mail, rcpt = stages(
        fm, "--client", "192.0.2.99", "--helo", "x", "--from", "m@fail.example", "bob@fwd.example"
    )
    assert mail["reply"].startswith("250")
    assert (
        "SPF fail: the global action is reject (spf.fail);"
        " each RCPT TO applies it, or the recipient's own"
    ) in mail["why"]
    assert rcpt["reply"].startswith(str(replies.SPF_FAIL))
    assert rcpt["why"][0] == "forwarded to bob@inner.example"
    assert "SPF fail: reject (the global spf.fail)" in rcpt["why"]


def put_policy(fm: FwdMilter, forward: Forward) -> None:
    store = open_store(StoreSettings(url=fm.settings["store"]["url"]), instance="x")
    try:
        store.put_forward(forward)
    finally:
        store.close()


def test_the_recipients_own_policy_and_where_each_value_comes_from(fm: FwdMilter) -> None:
    put_policy(
        fm,
        Forward(
            "alum@fwd.example",
            ("alum@inner.example",),
            spf_actions=(("softfail", "reject"),),
            rewrite="none",
            trusted=("alumni.example",),
        ),
    )
    # 127.0.0.2 is in alumni.example's SPF record, not in fail.example's.
    _mail, alum, bob, eom = stages(
        fm,
        "--client",
        "127.0.0.2",
        "--helo",
        "mx.other.example",
        "--from",
        "m@fail.example",
        "alum@fwd.example",
        "bob@fwd.example",
    )
    assert alum["reply"].startswith("250")
    assert alum["why"][:3] == [
        "forwarded to alum@inner.example",
        "its target has 0 held or requeued message(s)",
        "SPF fail: reject (the global spf.fail)",
    ]
    assert (
        "the client is its trusted forwarder alumni.example: the verdict is not applied"
        in alum["why"]
    )
    assert (
        "sender rewrite none (the recipient's own): its copy goes out with the SRS sender"
        " (unverified mail is always rewritten)"
    ) in alum["why"]
    assert bob["reply"].startswith(str(replies.SPF_FAIL))
    assert (
        "Authentication-Results: border.fwd.example; spf=fail smtp.mailfrom=m@fail.example"
        " (not enforced: trusted forwarder alumni.example of a recipient)"
    ) in eom["why"]
    # Its own softfail action (from a client no forwarder lists); a verified
    # sender is kept.
    _, soft = stages(
        fm,
        "--client",
        "198.51.100.9",
        "--helo",
        "x",
        "--from",
        "m@softfail.example",
        "alum@fwd.example",
    )
    assert soft["reply"].startswith(str(replies.SPF_SOFTFAIL))
    assert "SPF softfail: reject (the recipient's own)" in soft["why"]
    _, kept, eom = stages(
        fm, "--client", "192.0.2.7", "--helo", "x", "--from", "m@pass.example", "alum@fwd.example"
    )
    assert (
        "sender rewrite none (the recipient's own): its copy keeps the envelope sender"
        in (kept["why"])
    )
    assert not any(w.startswith("envelope sender") for w in eom["why"])


def test_each_recipient_gets_its_own_answer_and_reason(fm: FwdMilter, tmp_path: Path) -> None:
    store = open_store(StoreSettings(url=fm.settings["store"]["url"]), instance="x")
    try:
        store.hold(
            HeldEntry(
                "broken@inner.example",
                "x/Q1",
                "H",
                "s@softfail.example",
                "held@fwd.example",
                "Q1",
                "x",
                "550 5.1.1 gone",
                1.0,
            )
        )
    finally:
        store.close()
    mail, *rcpts, eom = stages(
        fm,
        "--client",
        "192.0.2.99",
        "--helo",
        "x",
        "--from",
        "u@softfail.example",
        "bob@fwd.example",
        "nobody@fwd.example",
        "held@fwd.example",
        "x@other.example",
    )
    assert "message state U" in mail["why"]
    bob, nobody, held, other = rcpts
    assert bob["reply"].startswith("250")
    assert nobody["reply"] == str(replies.UNKNOWN_RECIPIENT)
    assert held["reply"] == str(replies.TARGET_HELD)
    assert "its target has 1 held or requeued message(s)" in held["why"]
    assert other["reply"].startswith("250") and "passed untouched" in other["why"][0]
    assert eom["stage"] == "eom"


def test_a_bounce_to_an_srs_address_travels_alone(fm: FwdMilter) -> None:
    srs_addr = fm.fwdctl("srs", "forward", "a@pass.example").stdout.strip()
    _, srs, fwd, eom = stages(
        fm,
        "--client",
        "192.0.2.7",
        "--helo",
        "mx.pass.example",
        "--from",
        "",
        srs_addr,
        "bob@fwd.example",
    )
    assert srs["reply"].startswith("250") and "about a@pass.example" in srs["why"][0]
    assert fwd["reply"] == str(replies.SPLIT_TRANSACTION)
    assert "depends on what the mail is" in eom["why"][0]


def test_text_output_names_every_stage(fm: FwdMilter) -> None:
    out = fm.fwdctl(
        "explain",
        "--client",
        "192.0.2.7",
        "--helo",
        "mx.pass.example",
        "--from",
        "a@pass.example",
        "old@fwd.example",
    ).stdout
    lines = out.splitlines()
    assert lines[0] == "MAIL FROM:<a@pass.example>: 250 (accepted)"
    assert (
        "RCPT TO:<old@fwd.example>: 551 5.1.6 User not local; please try <new@else.example>"
        in lines
    )
    assert "    deleted, moved to new@else.example" in lines


def test_fwdctl_srs_writes_and_reverses_short_forms_as_the_milter(fm: FwdMilter) -> None:
    from fwdmilter.states import MessageRecord  # noqa: PLC0415

    sender = "a-very-long-local-part-of-a-newsletter-sender-for-the-test@pass.example"
    short = fm.fwdctl("srs", "forward", sender).stdout.strip()
    assert short.startswith("SRS0=") and "=1=" in short
    assert len(short.rpartition("@")[0]) <= 64
    # No message went out with it yet: nothing can say whom it stands for.
    out = fm.fwdctl("srs", "reverse", short, check=False)
    assert out.returncode == 1 and "no record of it is kept" in out.stderr
    store = open_store(StoreSettings(url=fm.settings["store"]["url"]), instance="x")
    try:
        store.record_messages(
            [
                MessageRecord(
                    short.lower(),
                    "m.0",
                    "m",
                    "B",
                    sender,
                    "bob@fwd.example",
                    "bob@inner.example",
                    1.0,
                    "x",
                )
            ],
            86400,
        )
    finally:
        store.close()
    assert fm.fwdctl("srs", "reverse", short).stdout.strip() == sender
    # Ordinary addresses reverse without the store, as before.
    plain = fm.fwdctl("srs", "forward", "a@pass.example").stdout.strip()
    assert fm.fwdctl("srs", "reverse", plain).stdout.strip() == "a@pass.example"


def test_an_address_with_several_targets_waits_while_one_of_them_is_held(fm: FwdMilter) -> None:
    fm.fwdctl("forward", "set", "pair@fwd.example", "p1@inner.example", "p2@inner.example")
    store = open_store(StoreSettings(url=fm.settings["store"]["url"]), instance="x")
    try:
        store.hold(
            HeldEntry(
                "p2@inner.example",
                "x/Q9",
                "H",
                "s@softfail.example",
                "pair@fwd.example",
                "Q9",
                "x",
                "550 5.1.1 gone",
                1.0,
            )
        )
    finally:
        store.close()
    args = ("--client", "192.0.2.99", "--helo", "x", "--from")
    _, u_rcpt = stages(fm, *args, "u@softfail.example", "pair@fwd.example")[:2]
    assert u_rcpt["reply"] == str(replies.TARGET_HELD)
    assert "forwarded to p1@inner.example, p2@inner.example" in u_rcpt["why"]
    assert (
        "its 2 targets have 1 held or requeued message(s) together"
        " (unverified mail waits while any has one)"
    ) in u_rcpt["why"]
    # A verified sender's mail goes to both targets all the same.
    _, b_rcpt, b_eom = stages(
        fm,
        "--client",
        "192.0.2.7",
        "--helo",
        "mx.pass.example",
        "--from",
        "a@pass.example",
        "pair@fwd.example",
    )
    assert b_rcpt["reply"].startswith("250")
    assert "recipient becomes <p1@inner.example>" in b_eom["why"]
    assert "recipient becomes <p2@inner.example>" in b_eom["why"]
