"""Held-mail scenarios as data, each run through a real Postfix and a real Sendmail.

One file per case in ``tests/scenarios/``: the mail sent (envelope, and a
message from ``tests/data/bounces`` or a plain one), the replies expected at
each RCPT and at the end of data, and what the store and the sink hold
afterwards. Placeholders in the files:

``{tok}``           a token unique to the run of a case
``{rcpt}``          a forwarding address made for the case ...
``{target}``        ... and its target, a mailbox behind INNER
``{other_rcpt}``    a second forwarding address, and
``{other_target}``  its target
``{failing_target}`` a mailbox INNER refuses at RCPT (550 5.1.1): the BORDER
                    itself bounces what it forwards there
``{srs}``           the SRS sender the forwarded message reached the sink with
                    (set by the first step that has ``delivered``)

``[forward]`` may give ``target``: the case's target as the admin types it;
or ``targets``, a list: several targets for ``{rcpt}`` (``fwdctl forward set
RCPT TARGET TARGET``); and the recipient's own policy: ``spf_actions`` (a
table, SPF result to action), ``rewrite`` ("srs", "when-needed", "none")
and ``trusted`` (a list of networks and domains), set with ``fwdctl forward
policy`` and ``fwdctl forward trust`` as an admin would.

A step may say ``delivered`` (an address, or a list: each gets this step's
message), ``bounced = true`` (the step's sender gets a bounce from the null
sender: a normal bounce of verified mail) and ``held`` (wait until the
case's targets have that many H or R entries before the next step). It may
check each message the sink got (``delivered``): ``sender_kept`` (true: its
envelope sender is the step's ``from``; false: an SRS address) and
``headers`` (a table: a text each header named must contain).
``[result]`` may say: ``held`` (entries for the case's targets, all for
``held_for``, by default ``{target}``), ``log`` (a regular expression a
decision line with the token matches), ``delivered`` / ``not_delivered``
(an address the sink did / did not get mail for), and ``srs_local_max``
(octets the SRS sender's local part may have).

An expected reply is a code (``"250"``) or the name of one of the milter's
replies in ``fwdmilter.replies``, whose code, status and text must all be
there: a 451 from the MTA itself (milter down or timed out) matches none.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fwdmilter import replies
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import OUTSIDE, BorderFactory, MailWorld, SendmailFactory
from tests.harness.postfix import RuntimeDir
from tests.harness.sendmail import SendmailInstance
from tests.harness.sink import Message
from tests.harness.smtp import Reply, Transcript, make_message, unique

pytestmark = pytest.mark.e2e

CASES = sorted((Path(__file__).parents[1] / "scenarios").glob("*.toml"))
BOUNCES = Path(__file__).parents[1] / "data" / "bounces"


@dataclass
class Site:
    """One MTA with the milter, as the cases see it."""

    mta: Any  # PostfixInstance | SendmailInstance
    fm: FwdMilter
    mail: MailWorld
    names: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def postfix_site(
    mail: MailWorld,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    fm = FwdMilter(
        runtime.socket("fwd-scenarios"),
        tmp_path_factory.mktemp("scenarios-postfix"),
        dns_port=mail.dns.port,
    )
    border = border_factory(milter=fm.spec, start=False)
    fm.serve(border)
    border.start()
    yield Site(border, fm, mail)
    fm.stop()


@pytest.fixture(scope="module")
def sendmail_site(
    mail: MailWorld,
    runtime: RuntimeDir,
    sendmail_factory: SendmailFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    socket_path = runtime.socket("fwd-scenarios-sm")
    sm: SendmailInstance = sendmail_factory(milter=socket_path, start=False)
    fm = FwdMilter(
        socket_path,
        tmp_path_factory.mktemp("scenarios-sendmail"),
        dns_port=mail.dns.port,
        hostname=sm.hostname,
        settings=sm.milter_settings(),
    )
    fm.serve()
    try:
        sm.start()
        yield Site(sm, fm, mail)
    finally:
        fm.stop()


def _fill(text: str, names: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            raise KeyError(f"placeholder {{{m.group(1)}}} is not set yet")
        return names[m.group(1)]

    return re.sub(r"\{([a-z_]+)\}", one, text)


def _matches(reply: Reply, expected: str) -> bool:
    if expected.isdigit():
        return reply.code == int(expected)
    named = getattr(replies, expected)
    # Its start (an SPF refusal adds the domain's explanation); Sendmail may
    # put the address before the text at RCPT.
    return reply.said(named, completed=True)


def _check_replies(t: Transcript, expect: list[str], where: str) -> None:
    for (address, reply), want in zip(t.rcpts, expect, strict=False):
        assert _matches(reply, want), f"{where}: RCPT <{address}>: {reply}, expected {want}\n{t}"
    rest = expect[len(t.rcpts) :]
    if rest:
        assert t.data is not None, f"{where}: no data stage, expected {rest[0]}\n{t}"
        assert _matches(t.data, rest[0]), f"{where}: data: {t.data}, expected {rest[0]}\n{t}"
    elif any(r.ok for _, r in t.rcpts):
        assert t.accepted, f"{where}: the data was not accepted\n{t}"


def _counted(site: Site, targets: set[str]) -> list[dict[str, Any]]:
    return [e for e in site.fm.held() if e["target"] in targets and e["state"] in ("H", "R")]


def _wait_held(site: Site, targets: set[str], count: int, where: str) -> None:
    deadline = time.monotonic() + 30
    while len(_counted(site, targets)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{where}: {count} held entries for {sorted(targets)} not seen: "
                f"{site.fm.held()}\n{site.fm.log()[-3000:]}\n{site.mail.explain()}"
            )
        time.sleep(0.2)


def _any(m: Message) -> bool:
    return True


def _subject_is(subject: str) -> Callable[[Message], bool]:
    return lambda m: str(m.email["Subject"]) == subject


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _set_policy(site: Site, rcpt: str, given: dict[str, Any]) -> None:
    """The recipient's own policy, set as the admin sets it."""
    args = [f"--spf-{result}={action}" for result, action in given.get("spf_actions", {}).items()]
    if "rewrite" in given:
        args.append(f"--rewrite={given['rewrite']}")
    if args:
        site.fm.fwdctl("forward", "policy", rcpt, *args)
    for forwarder in given.get("trusted", ()):
        site.fm.fwdctl("forward", "trust", rcpt, forwarder)


def _run(site: Site, case: dict[str, Any]) -> None:
    tok = unique()
    names = {
        "tok": tok,
        "rcpt": f"r{tok}@fwd.example",
        "target": f"alice+{tok}@inner.example",
        "other_rcpt": f"o{tok}@fwd.example",
        "other_target": f"alice+o{tok}@inner.example",
        "failing_target": f"nobody+{tok}@inner.example",
    }
    forward = case.get("forward", {})
    # A case may type the target otherwise (case, say): the store keeps one
    # normal form, which is what the sink and the entries show.
    typed_targets = [
        _fill(t, names) for t in forward.get("targets", [forward.get("target", names["target"])])
    ]
    site.fm.fwdctl("forward", "set", names["rcpt"], *typed_targets)
    site.fm.fwdctl("forward", "set", names["other_rcpt"], names["other_target"])
    targets = {names["target"], names["other_target"], *(t.lower() for t in typed_targets)}
    if any(k in forward for k in ("spf_actions", "rewrite", "trusted")):
        _set_policy(site, names["rcpt"], forward)
    for n, step in enumerate(case["step"], 1):
        where = f"step {n}"
        sender = _fill(step["from"], names)
        to = [_fill(a, names) for a in step["to"]]
        subject = f"{tok} step {n}"
        if "message" in step:
            message: bytes = _fill((BOUNCES / step["message"]).read_text(), names).encode()
        else:
            message = make_message(sender or "MAILER-DAEMON@pass.example", to[0], subject=subject)
        domain = sender.rpartition("@")[2] if sender else "inner.example"
        t = site.mail.send(site.mta, sender, to, message, source_ip=OUTSIDE, helo=f"helo.{domain}")
        _check_replies(t, [_fill(e, names) for e in step["expect"]], where)
        # This step's own message, where the step made it.
        mine = _any if "message" in step else _subject_is(subject)
        for address in _listed(step.get("delivered", [])):
            got = site.mail.wait_for(_fill(address, names), match=mine)
            names.setdefault("srs", got.mail_from)
            if "sender_kept" in step:
                kept = got.mail_from == sender
                assert kept is step["sender_kept"], f"{where}: sent with <{got.mail_from}>"
                assert kept or got.mail_from.startswith("SRS0="), f"{where}: <{got.mail_from}>"
            for header, text in step.get("headers", {}).items():
                value = str(got.email[header])
                assert _fill(text, names) in value, f"{where}: {header}: {value}"
        if step.get("bounced"):
            site.mail.wait_for(sender, mail_from="", listener="internet")
        if "held" in step:
            _wait_held(site, targets, step["held"], where)
    result = case.get("result", {})
    if "srs_local_max" in result:
        local = names["srs"].rpartition("@")[0]
        assert len(local.encode()) <= result["srs_local_max"], names["srs"]
    if "delivered" in result:
        site.mail.wait_for(_fill(result["delivered"], names), match=lambda m: True)
    if "log" in result:
        site.fm.wait_log(re.escape(tok) + r".*" + result["log"])
    if "held" in result:
        entries = site.fm.held()
        mine = [e for e in entries if e["target"] in targets]
        assert len(mine) == result["held"], mine
        held_for = _fill(result.get("held_for", "{target}"), names)
        assert all(e["target"] == held_for for e in mine), mine
    if "not_delivered" in result:
        site.mail.assert_nothing_for(_fill(result["not_delivered"], names))


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_scenario_through_postfix(postfix_site: Site, case_file: Path) -> None:
    _run(postfix_site, tomllib.loads(case_file.read_text()))


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_scenario_through_sendmail(sendmail_site: Site, case_file: Path) -> None:
    _run(sendmail_site, tomllib.loads(case_file.read_text()))
