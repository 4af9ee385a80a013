"""The sandbox the docs' commands run in, and what happens there between them.

The sandbox is one BORDER Postfix (its main.cf from the ``main.cf`` blocks
of docs/postfix.md), the real fwdmilter daemon (its configuration
docs/fwdmilter.example.toml with the sandbox's socket, DNS, store and
ports), two private Redis servers (one to migrate to, as
docs/operations.md does; one holding the state docs/redis.md shows), and
the harness's DNS server and SMTP sink. The downstream ``example.com`` of the
docs is the sink's listener "mda", which refuses chosen recipients and
speaks no DSN (so Postfix answers NOTIFY=SUCCESS with a "relayed" notice).

A doc moves the sandbox along with block attributes (tests/docs/markdown.py):
``event=NAME`` runs :data:`EVENTS` [NAME] before the block's commands (for a
``sh-host`` block: in its place, as the sandbox's stand-in for systemctl);
``check=NAME`` compares a non-command block with what the sandbox produced
(:data:`CHECKS`).
"""

from __future__ import annotations

import os
import re
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fwdmilter import replies
from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import Forward, HeldEntry, MessageRecord
from srs import SRS
from tests.docs.markdown import REPO, Block, blocks
from tests.docs.sandbox import Mismatch, Sandbox, Substitutions, match_output
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import MILTER_UNAVAILABLE, PostfixInstance, RuntimeDir
from tests.harness.proc import free_port, wait_until
from tests.harness.redis import RedisServer
from tests.harness.sink import Sink
from tests.harness.smtp import Client, make_message, said, send

__all__ = ["World", "build", "stop", "EVENTS", "CHECKS", "main_cf"]

#: The docs' names, and the sandbox's.
DOC_DOMAIN: Final = "fwd.example.net"
DOC_HOST: Final = "mx1.fwd.example.net"
DOMAIN: Final = "fwd.example"
HOST: Final = "border.fwd.example"
#: The downstream of the docs' examples (sink listener "mda").
DOWNSTREAM: Final = "example.com"
OUTSIDE: Final = "127.0.0.2"  # a client that is not trusted: SPF is checked
#: The docs' ports and paths of things the sandbox has its own of.
DOC_REDIS: Final = "127.0.0.1:6379"
DOC_METRICS: Final = "127.0.0.1:9426"
REDIS_MD_PORT: Final = "58991"  # docs/redis.md's session


@dataclass
class World:
    sandbox: Sandbox
    fm: FwdMilter
    border: PostfixInstance
    mail: MailWorld
    sink: Sink
    redis: RedisServer  # docs/operations.md migrates to it
    redis_md: RedisServer  # holds what docs/redis.md shows
    notes: dict[str, Any] = field(default_factory=dict)

    def held(self) -> list[dict[str, Any]]:
        return self.fm.held()

    def send(self, sender: str, rcpt: str, subject: str) -> Any:
        domain = sender.rpartition("@")[2] or "pass.example"
        return send(
            self.border.port,
            sender,
            [rcpt],
            make_message(sender or f"MAILER-DAEMON@{domain}", rcpt, subject=subject),
            source_ip=OUTSIDE,
            helo=f"helo.{domain}",
        )


def main_cf() -> dict[str, str]:
    """The settings of the ``main.cf`` blocks of docs/postfix.md, in order."""
    settings: dict[str, str] = {}
    for block in blocks(REPO / "docs" / "postfix.md"):
        if block.tag != "main.cf":
            continue
        for raw in block.text.split("\n"):
            line = raw.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            if line[0].isspace():  # a continuation line
                last = next(reversed(settings))
                settings[last] += " " + line.strip()
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{block.where}: {raw!r} is not NAME = VALUE")
            settings[key.strip()] = value.strip()
    return settings


def _example_config() -> dict[str, dict[str, Any]]:
    text = (REPO / "docs" / "fwdmilter.example.toml").read_text()
    return tomllib.loads(text.replace("@HOSTNAME@", DOMAIN))


def _fill_redis_md(server: RedisServer) -> None:
    """The state docs/redis.md shows, made through the store itself: two held
    bounces for alice@dest.example, one requeued, and a message record."""
    store = open_store(StoreSettings(url=server.url), instance="mx1.fwd.example")
    try:
        store.put_forward(
            Forward(
                "alice@fwd.example",
                ("alice@dest.example",),
                contact="alice@other.example",
                created=1761313200.0,
                updated=1761313200.0,
            )
        )
        srs_addr = "srs0=hh3x=7t=sender.example=bob@fwd.example"
        for qid in ("4AbC9D1", "5DeF2G3"):
            store.hold(
                HeldEntry(
                    target="alice@dest.example",
                    entry_id=f"mx1.fwd.example/{qid}",
                    state="H",
                    sender="",
                    rcpt="alice@fwd.example",
                    queue_id=qid,
                    host="mx1.fwd.example",
                    reason="550 5.1.1 <alice@dest.example>: user unknown",
                    held_at=1763903400.0,
                    srs=srs_addr,
                    msg_id="01JD8ZK3Q2@mx1.fwd.example",
                    contact="alice@other.example",
                )
            )
        store.mark_alerted("alice@dest.example", "mx1.fwd.example/4AbC9D1")
        store.mark_requeued("alice@dest.example", "mx1.fwd.example/5DeF2G3", 1763907000.0)
        store.record_messages(
            [
                MessageRecord(
                    srs=srs_addr,
                    record_id="01JD8ZK3Q2",
                    msg_id="01JD8ZK3Q2",
                    state="U",
                    sender="bob@sender.example",
                    rcpt="alice@fwd.example",
                    target="alice@dest.example",
                    created=time.time(),
                    instance="mx1.fwd.example",
                )
            ],
            21 * 86400,
        )
    finally:
        store.close()


def build(
    mail: MailWorld,
    sink: Sink,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    workdir: Path,
) -> World:
    """Start the sandbox: Redis servers, the milter, BORDER."""
    redis = RedisServer(workdir / "redis")
    redis_md = RedisServer(workdir / "redis-md")
    _fill_redis_md(redis_md)
    milter_dir = workdir / "milter"
    metrics_port = free_port()
    settings = _example_config()
    overrides: dict[str, dict[str, Any]] = {
        "milter": {
            "socket": f"unix:{runtime.socket('docs')}",
            "socket_mode": "0666",
            "hostname": HOST,
            "shutdown_timeout": 10.0,
        },
        "srs": {"domain": DOMAIN, "secrets_file": str(milter_dir / "srs-secrets")},
        "forwarding": {"domains": [DOMAIN]},
        "dns": {"nameservers": ["127.0.0.1"], "port": mail.dns.port, "timeout": 1.5},
        "store": {"url": f"sqlite://{milter_dir}/state.db"},
        # Test clients come from 127.0.0.2: only 127.0.0.1 (fwdctl) is trusted.
        "trusted": {"networks": ["127.0.0.1/32"]},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
    }
    for section, values in overrides.items():
        settings.setdefault(section, {}).update(values)
    fm = FwdMilter(
        runtime.socket("docs"),
        milter_dir,
        dns_port=mail.dns.port,
        hostname=HOST,
        settings=settings,
    )
    table = [
        ("/etc/fwdmilter/fwdmilter.toml", str(fm.config_path)),
        ("/etc/fwdmilter/srs-secrets", str(fm.secrets_file)),
        ("/var/lib/fwdmilter/state.db", str(milter_dir / "state.db")),
        ("unix:/var/spool/postfix/fwdmilter/milter.sock", fm.spec),
        ("unix:/fwdmilter/milter.sock", fm.spec),
        ("/opt/fwdmilter/bin/python", sys.executable),
        (DOC_REDIS, f"127.0.0.1:{redis.port}"),
        ("-p 6379", f"-p {redis.port}"),
        (f"-p {REDIS_MD_PORT}", f"-p {redis_md.port}"),
        (DOC_METRICS, f"127.0.0.1:{metrics_port}"),
        (DOC_HOST, HOST),
        (DOC_DOMAIN, DOMAIN),
        # The docs show the example's trusted.networks; the sandbox trusts 127.0.0.1 only.
        ("127.0.0.0/8, ::1/128", "127.0.0.1/32"),
    ]
    subs = Substitutions(table)
    main: dict[str, str | None] = {key: subs.apply(value) for key, value in main_cf().items()}
    # The harness sets a parameter Postfix does not know, about which
    # postconf warns on every run; not in the docs' main.cf, not here.
    main["transport_destination_rate_delay"] = None
    border = border_factory(
        milter=fm.spec,
        name="border-docs",
        hostname=HOST,
        start=False,
        main=main,
        transport={DOWNSTREAM: f"smtp:[127.0.0.1]:{sink.port('mda')}"},
        route_bounces=False,
    )
    fm.serve(border)
    border.start()
    for doc, real in (
        ("/etc/postfix", str(border.config_dir)),
        ("/var/log/mail.log", str(border.log_path)),
    ):
        subs.table.append((doc, real))
    subs.table.sort(key=lambda kv: -len(kv[0]))
    venv = Path(sys.executable).parent
    sandbox = Sandbox(
        substitutions=subs,
        env={
            "PATH": f"{venv}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "NO_COLOR": "1",
            "FWDMILTER_CONFIG": str(fm.config_path),
            # A checkout other than the installed one (a git worktree) runs
            # its own code in the docs' commands too.
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
        },
        cwd=workdir,
        allowed_paths=[workdir, border.base, venv.parent, Path(sys.prefix)],
        postfix_config=border.config_dir,
        redis_ports=[redis.port, redis_md.port],
        http_ports=[metrics_port],
    )
    world = World(sandbox, fm, border, mail, sink, redis, redis_md)
    world.notes["old_srs"] = SRS([fm.secret], DOMAIN).forward("old-key@pass.example")
    return world


def stop(world: World) -> None:
    world.sink.accept(f"bob@{DOWNSTREAM}")
    world.fm.stop()
    world.redis.stop()
    world.redis_md.stop()


# -- events ---------------------------------------------------------------------------


def _wait_held(w: World, state: str, timeout: float = 20.0) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        nonlocal found
        found = [e for e in w.held() if e["state"] == state]
        return bool(found)

    try:
        wait_until(ready, timeout, f"a held entry in state {state}", interval=0.3)
    except TimeoutError:
        raise AssertionError(
            f"no {state} entry: {w.held()}\n{w.fm.log()[-3000:]}\n{w.border.explain()}"
        ) from None
    return found[0]


def bounce_held(w: World) -> None:
    """bob@example.com's mailbox is full; a message from a sender whose SPF
    soft-fails (U) comes for bob@fwd.example.net: its bounce is held."""
    target = f"bob@{DOWNSTREAM}"
    w.sink.refuse(target, f"552 5.2.2 <{target}>: mailbox full")
    t = w.send("news@softfail.example", f"bob@{DOMAIN}", "Your weekly news")
    assert t.accepted, t
    entry = _wait_held(w, "H")
    w.notes["held"] = entry
    # The admin (postmaster@, forwarded to alice@example.com) and Bob's
    # alternate contact hear of it; the unverified sender hears nothing.
    w.notes["alert"] = w.mail.wait_for(
        f"alice@{DOWNSTREAM}", match=lambda m: target in str(m.email["Subject"])
    )
    w.mail.wait_for("bob@mobile.example", match=lambda m: target in str(m.email["Subject"]))
    w.mail.assert_nothing_for("news@softfail.example")
    # What docs/operations.md says happens meanwhile: U mail for the target
    # is deferred, B mail still goes through (and is refused downstream).
    t = w.send("someone@neutral.example", f"bob@{DOMAIN}", "deferred")
    assert t.rcpt(f"bob@{DOMAIN}").said(replies.TARGET_HELD), t
    t = w.send("friend@pass.example", f"bob@{DOMAIN}", "verified")
    assert t.accepted, t
    w.mail.wait_for("friend@pass.example")  # its bounce goes to its verified sender
    assert [e["state"] for e in w.held()] == ["H"]


def downstream_fixed(w: World) -> None:
    """bob@example.com accepts mail again. (The sandbox's Postfix holds its
    deliveries back for a moment, so that the doc can show the requeued
    entry before its delivery notice releases it, which here takes well
    under a second.)"""
    w.sink.accept(f"bob@{DOWNSTREAM}")
    w.border.set_main(defer_transports="smtp")


def delivery_notice(w: World) -> None:
    """The requeued message was delivered; Postfix's "relayed" notice came
    back and released the target."""
    w.border.set_main(defer_transports=None)
    # A flush that reaches a queue manager still running with the old
    # setting defers the message again, until the next flush: flush until
    # it is delivered.
    deadline = time.monotonic() + 30
    while True:
        w.border.flush()
        try:
            w.sink.wait_for(
                f"bob@{DOWNSTREAM}",
                match=lambda m: "weekly news" in str(m.email["Subject"]),
                timeout=1.0,
            )
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    "the requeued message never came\n" + w.border.explain()
                ) from None
    wait_until(lambda: w.held() == [], 20, "the held entry is released", interval=0.3)
    t = w.send("someone@neutral.example", f"bob@{DOMAIN}", "no longer deferred")
    assert t.accepted, t


def _rcpt_reply(w: World, address: str) -> str:
    """The reply to RCPT TO:<address> of a bounce; no message is sent."""
    with Client(w.border.port, source_ip=OUTSIDE, helo="helo.pass.example") as c:
        assert c.command("MAIL", "FROM:<>").code == 250
        reply = str(c.command("RCPT", f"TO:<{address}>"))
        c.command("RSET")
    return reply


def reload_after_rotation(w: World) -> None:
    """systemctl reload fwdmilter: SIGHUP. New addresses are signed with the
    new secret; bounces to addresses signed with the old one still pass."""
    secrets = w.fm.secrets_file.read_text().split()
    assert len(secrets) == 2 and secrets[1] == w.fm.secret, secrets
    assert w.fm.secrets_file.stat().st_mode & 0o777 == 0o600  # sed -i kept the mode
    w.fm.reload()
    assert _rcpt_reply(w, w.notes["old_srs"]).startswith("250"), w.fm.log()[-2000:]
    new_srs = SRS([secrets[0]], DOMAIN).forward("new-key@pass.example")
    assert _rcpt_reply(w, new_srs).startswith("250")
    w.notes["new_secret"] = secrets[0]


def reload_after_drop(w: World) -> None:
    """The old secret is gone: bounces to its addresses are refused."""
    assert w.fm.secrets_file.read_text().split() == [w.notes["new_secret"]]
    w.fm.reload()
    assert said(_rcpt_reply(w, w.notes["old_srs"]), replies.SRS_FORGED)


def milter_stopped(w: World) -> None:
    w.fm.stop()
    # Meanwhile Postfix answers 4xx (milter_default_action = tempfail).
    t = w.send("friend@pass.example", f"bob@{DOMAIN}", "while stopped")
    reply = str(t.mail or t.helo or t.greeting)
    assert reply == MILTER_UNAVAILABLE, t


def milter_started(w: World) -> None:
    """Start the daemon on the configuration file as the doc left it."""
    w.fm.settings = tomllib.loads(w.fm.config_path.read_text())
    # The log is appended to: wait for this start's "listening on" line.
    before = w.fm.log().count("listening on")
    w.fm.serve(w.border, wait=False)
    wait_until(lambda: w.fm.log().count("listening on") > before, 20, "fwdmilter listens")
    t = w.send("friend@pass.example", f"bob@{DOMAIN}", "on redis")
    assert t.accepted, t
    w.mail.wait_for(f"bob@{DOWNSTREAM}", match=lambda m: "on redis" in str(m.email["Subject"]))
    assert w.redis.cli("HGET", f"fwdmilter:forward:{{bob@{DOMAIN}}}", "target").strip() == (
        f"bob@{DOWNSTREAM}"
    )


EVENTS: Final[dict[str, Callable[[World], None]]] = {
    "bounce-held": bounce_held,
    "downstream-fixed": downstream_fixed,
    "delivery-notice": delivery_notice,
    "reload-after-rotation": reload_after_rotation,
    "reload-after-drop": reload_after_drop,
    "milter-stopped": milter_stopped,
    "milter-started": milter_started,
}


# -- checks of what the docs show ---------------------------------------------------


def _fail(block: Block, result: Mismatch) -> None:
    raise AssertionError(f"{block.where}: the {block.attrs['check']} differs:\n{result}")


def check_alert(w: World, block: Block) -> None:
    """The alert the admin got, as docs/operations.md shows it."""
    msg = w.notes["alert"].email
    text = "".join(f"{h}: {msg[h]}\n" for h in ("From", "To", "Subject"))
    text += "\n" + msg.get_content()
    expected = [w.sandbox.substitutions.apply(line) for line in block.text.split("\n")]
    result = match_output(expected, text)
    if isinstance(result, Mismatch):
        _fail(block, result)
    else:
        w.sandbox.substitutions.learn(result)


_JOURNAL_PREFIX: Final = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ \S+?(\[\d+\])?: ")


def _log_lines_shown(w: World, block: Block, log: str) -> None:
    """Every line of the block (a journal or syslog line) is one of ``log``'s."""
    have = [_JOURNAL_PREFIX.sub("", line) for line in log.splitlines()]
    for raw in block.text.split("\n"):
        if not raw.strip():
            continue
        program = _JOURNAL_PREFIX.match(raw)
        want = w.sandbox.substitutions.apply(_JOURNAL_PREFIX.sub("", raw))
        if program is None:
            raise AssertionError(f"{block.where}: {raw!r} is not a log line")
        if not any(not isinstance(match_output([want], line), Mismatch) for line in have):
            raise AssertionError(
                f"{block.where}: no such line in the sandbox's log:\n    {want}\n"
                + "\n".join("    " + x for x in have[-40:])
            )


def check_fwdmilter_log(w: World, block: Block) -> None:
    _log_lines_shown(w, block, w.fm.log())


def check_postfix_log(w: World, block: Block) -> None:
    _log_lines_shown(w, block, w.border.log())


CHECKS: Final[dict[str, Callable[[World, Block], None]]] = {
    "alert": check_alert,
    "fwdmilter-log": check_fwdmilter_log,
    "postfix-log": check_postfix_log,
}
