"""pytest fixtures for end-to-end mail tests: DNS, sink, INNER and BORDER (Postfix or Sendmail).

The topology (every server on 127.0.0.1, free ports, temp folders)::

    test client --SMTP--> BORDER (smtpd; the milter under test on smtpd_milters
                          and non_smtpd_milters, internal_mail_filter_classes = bounce)
      inner.example  -> INNER
      fwd.example    -> sink listener "unrewritten" (an SRS or forwarding address
                        the milter left alone must never leave silently)
      anything else  -> sink listener "internet" (the original senders' domains)
    INNER: accepts INNER_USERS at inner.example (user+anything too), refuses
           others at RCPT (550 5.1.1); delivers to sink listener "inbox", except
           broken@inner.example, whose next hop (listener "refuse") refuses every
           RCPT so INNER bounces it; fwd.example -> the BORDER last routed to
           (``mail.route_bounces_to``); anything else -> sink listener "inner-out".
    DNS: dnsmasq with tests.harness.dns.ZONES (the milter's resolver: ``mail.dns.port``).

A Sendmail BORDER (``sendmail_factory``) routes as the Postfix one does, but
for fwd.example: that goes back into the same Sendmail through its second,
loop-back daemon, which runs the milter too. Sendmail runs milters on SMTP
input only, and this is how a bounce it generates itself for a forwarded
message (sent to the SRS sender, at fwd.example) reaches the milter.

Fixtures::

    runtime         session  root-owned 0755 folder for milter sockets and data dirs
    dns             session  DnsServer
    sink            session  Sink with the listeners above
    inner           session  PostfixInstance INNER
    mail            session  MailWorld: the above plus helpers (send, wait_for, idle...)
    border_factory  module   make BORDERs: border_factory(milter="unix:/run/...sock")
    sendmail_factory module  make Sendmail BORDERs: sendmail_factory(milter="unix:/run/...sock")
    probe_milter    session  the test-only milter of tests.harness.probe_milter

A test::

    def test_forward(mail, border_factory, my_milter):
        border = border_factory(milter=my_milter.spec)         # INNER bounces come here
        t = mail.send(border, "alice@pass.example", ["bob@fwd.example"])
        assert t.rcpt("bob@fwd.example").startswith("250")
        got = mail.wait_for("alice+x@inner.example")             # logs in the error
        mail.wait_idle(); mail.assert_nothing_for("alice@pass.example")
        assert border.queue("hold") == []

BORDER's ``mynetworks`` is 127.0.0.1 alone: a client at another 127.0.0.0/8
address is "the internet" and may not relay to third domains. Postfix does
no reverse lookups (``smtpd_peername_lookup = no``): every client is
``unknown[127.0.0.x]`` to it and to its milters.

A milter under test: put its socket at ``runtime.socket("name")`` (Postfix
connects as user ``postfix``, which cannot enter pytest's private temp
folder) and make the socket writable by that user (umask 0, or chmod); give
it ``mail.dns.port`` as its resolver. In a test module the fixture ``dns``
shadows the dnspython package: import its names (``from dns.resolver import
NXDOMAIN``) instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.dns import DnsServer
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.probe_milter import ProbeMilter
from tests.harness.sendmail import SendmailInstance
from tests.harness.sink import Message, Sink
from tests.harness.smtp import Recipient, Transcript, make_message, send

__all__ = [
    "INNER_DOMAIN",
    "INNER_USERS",
    "FWD_DOMAIN",
    "SINK_LISTENERS",
    "BorderFactory",
    "MailWorld",
    "SendmailFactory",
]

INNER_DOMAIN = "inner.example"
#: A client outside BORDER's networks: the milter checks its SPF.
OUTSIDE = "127.0.0.2"
FWD_DOMAIN = "fwd.example"
# Mailboxes at INNER; "broken" is accepted and then fails downstream.
# "final" lives on a mailbox server that speaks no DSN (sink listener "mda"),
# so INNER itself answers NOTIFY=SUCCESS with a "relayed" notice.
INNER_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "broken", "final")
SINK_LISTENERS = ("inbox", "internet", "unrewritten", "inner-out")


class MailWorld:
    """The session's DNS, sink and INNER, the BORDERs alive now, and helpers."""

    def __init__(
        self, dns: DnsServer, sink: Sink, inner: PostfixInstance, session_dir: Path
    ) -> None:
        self.dns = dns
        self.sink = sink
        self.inner = inner
        self.session_dir = session_dir
        self.borders: list[PostfixInstance] = []
        self.sendmails: list[SendmailInstance] = []
        self.bounce_route: PostfixInstance | SendmailInstance | None = None

    @property
    def instances(self) -> list[PostfixInstance]:
        return [*self.borders, self.inner]

    def route_bounces_to(self, border: PostfixInstance | SendmailInstance) -> None:
        """Make INNER send mail for fwd.example (bounces to SRS senders) to ``border``."""
        _write_inner_transport(self.inner, self.sink, border.port)
        if self.inner.running:
            self.inner.reload()
        self.bounce_route = border

    def send(
        self,
        border: PostfixInstance | SendmailInstance,
        mail_from: str,
        rcpts: Sequence[Recipient],
        message: bytes | str | None = None,
        **options: Any,
    ) -> Transcript:
        """``tests.harness.smtp.send`` to ``border``'s main listener."""
        return send(border.port, mail_from, rcpts, message, **options)

    def send_from_outside(
        self,
        border: PostfixInstance | SendmailInstance,
        sender: str,
        rcpts: Sequence[Recipient],
        subject: str,
        *,
        body: str = "Hello.\n",
        **options: Any,
    ) -> Transcript:
        """A message from a client outside BORDER's networks (127.0.0.2, so the
        milter checks SPF), saying HELO ``helo.<the sender's domain>`` and
        carrying ``subject``."""
        domain = sender.rpartition("@")[2] if sender else "pass.example"
        rcpt = rcpts[0] if isinstance(rcpts[0], str) else rcpts[0][0]
        message = make_message(
            sender or "MAILER-DAEMON@pass.example", rcpt, subject=subject, body=body
        )
        options = {"source_ip": OUTSIDE, "helo": f"helo.{domain}", **options}
        return self.send(border, sender, rcpts, message, **options)

    def explain(self) -> str:
        """The tails of every MTA's log, for failure messages."""
        return "\n".join(
            [*(pf.explain() for pf in self.instances), *(sm.explain() for sm in self.sendmails)]
        )

    def wait_for(
        self,
        rcpt: str | None = None,
        *,
        listener: str | None = None,
        mail_from: str | None = None,
        match: Callable[[Message], bool] | None = None,
        timeout: float = 20.0,
    ) -> Message:
        """The first sink message that fits; on timeout the error shows every log."""
        return self.sink.wait_for(
            rcpt,
            listener=listener,
            mail_from=mail_from,
            match=match,
            timeout=timeout,
            explain=self.explain,
        )

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Wait until no MTA has a message in flight (deferred and held mail aside).

        Checked twice in a row, so that a message passed from one instance to
        the next between two looks is not missed.
        """
        deadline = time.monotonic() + timeout
        calm = 0
        while calm < 2:
            busy = [(pf.name, e.queue_id) for pf in self.instances for e in pf.in_flight()]
            busy += [(sm.name, qid) for sm in self.sendmails for qid in sm.in_flight()]
            calm = 0 if busy else calm + 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"still in flight after {timeout}s: {busy}\n{self.explain()}")
            time.sleep(0.1)

    def assert_nothing_for(
        self,
        rcpt: str | None = None,
        *,
        listener: str | None = None,
        mail_from: str | None = None,
        match: Callable[[Message], bool] | None = None,
    ) -> None:
        """Wait until the MTAs are idle, then fail if a fitting message reached the sink."""
        self.wait_idle()
        self.sink.assert_nothing_for(
            rcpt, listener=listener, mail_from=mail_from, match=match, explain=self.explain
        )


def _write_inner_transport(inner: PostfixInstance, sink: Sink, border_port: int | None) -> None:
    entries = {
        f"broken@{INNER_DOMAIN}": f"smtp:[127.0.0.1]:{sink.port('refuse')}",
        f"final@{INNER_DOMAIN}": f"smtp:[127.0.0.1]:{sink.port('mda')}",
        INNER_DOMAIN: f"smtp:[127.0.0.1]:{sink.port('inbox')}",
        FWD_DOMAIN: (
            f"smtp:[127.0.0.1]:{border_port}" if border_port else "error:5.4.4 no BORDER yet"
        ),
        "*": f"smtp:[127.0.0.1]:{sink.port('inner-out')}",
    }
    inner.write_map("transport", entries)


class BorderFactory:
    """Makes BORDER instances; each one is stopped when the factory's scope ends."""

    def __init__(self, world: MailWorld, runtime: RuntimeDir, workdir: Path) -> None:
        self.world = world
        self.runtime = runtime
        self.workdir = workdir
        self.made: list[PostfixInstance] = []

    def __call__(
        self,
        milter: str | Path | None = None,
        *,
        name: str | None = None,
        hostname: str | None = None,
        non_smtpd_milters: str | None = None,
        main: Mapping[str, str | None] | None = None,
        listeners: Mapping[str, Mapping[str, str]] | None = None,
        master_extra: Sequence[str] = (),
        transport: Mapping[str, str] | None = None,
        route_bounces: bool = True,
        start: bool = True,
    ) -> PostfixInstance:
        """A started BORDER.

        ``milter``: the socket under test ("unix:/path", "inet:127.0.0.1:port"
        or a Path) for smtpd_milters and non_smtpd_milters, or None for a BORDER
        without any milter. ``non_smtpd_milters`` overrides the latter alone.
        ``main``: extra main.cf settings (None removes one). ``listeners``: more
        smtpd ports, label -> ``-o`` options (their ports: ``border.listener_ports``).
        ``transport``: extra transport_maps entries, before the defaults.
        ``route_bounces``: INNER's mail for fwd.example goes to this BORDER.
        """
        index = len(self.world.borders) + 1
        name = name or ("border" if index == 1 else f"border{index}")
        name = _unique_name(self.workdir, name)
        spec = f"unix:{milter}" if isinstance(milter, Path) else milter
        settings: dict[str, str | None] = {
            "relay_domains": f"{FWD_DOMAIN}, {INNER_DOMAIN}",
            "internal_mail_filter_classes": "bounce",
            "milter_default_action": "tempfail",
            "smtpd_milters": spec or "",
            "non_smtpd_milters": non_smtpd_milters if non_smtpd_milters is not None else spec or "",
        }
        settings.update(main or {})
        pf = PostfixInstance(
            name,
            base=self.workdir / name,
            runtime=self.runtime,
            hostname=hostname or f"{name}.{FWD_DOMAIN}",
            main=settings,
            master_extra=master_extra,
        )
        sink = self.world.sink
        routes = {
            **(transport or {}),
            INNER_DOMAIN: f"smtp:[127.0.0.1]:{self.world.inner.port}",
            FWD_DOMAIN: f"smtp:[127.0.0.1]:{sink.port('unrewritten')}",
            "*": f"smtp:[127.0.0.1]:{sink.port('internet')}",
        }
        pf.update_main({"transport_maps": pf.write_map("transport", routes)})
        for label, opts in (listeners or {}).items():
            pf.add_smtpd(label, opts)
        self.made.append(pf)
        self.world.borders.append(pf)
        if start:
            pf.start()
        if route_bounces:
            self.world.route_bounces_to(pf)
        return pf

    def close(self) -> None:
        for pf in self.made:
            pf.stop()
            if pf in self.world.borders:
                self.world.borders.remove(pf)
        if self.world.bounce_route in self.made:
            self.world.bounce_route = None
            _write_inner_transport(self.world.inner, self.world.sink, None)
            if self.world.inner.running:
                self.world.inner.reload()
        self.made.clear()


class SendmailFactory:
    """Makes Sendmail instances in BORDER's place; each is stopped when the
    factory's scope ends.

    Routing mirrors BORDER's: inner.example -> INNER, anything else -> the
    sink's "internet" listener; fwd.example, though, goes back into the
    instance itself through its loop-back daemon, so that the bounces
    Sendmail generates for forwarded mail pass the milter (docs/sendmail.md).
    """

    def __init__(self, world: MailWorld, runtime: RuntimeDir, workdir: Path) -> None:
        self.world = world
        self.runtime = runtime
        self.workdir = workdir
        self.made: list[SendmailInstance] = []
        self._previous_route: PostfixInstance | SendmailInstance | None = None

    def __call__(
        self,
        milter: str | Path | None = None,
        *,
        name: str | None = None,
        hostname: str | None = None,
        routes: Mapping[str, int] | None = None,
        route_bounces: bool = True,
        start: bool = True,
        **options: Any,
    ) -> SendmailInstance:
        """A Sendmail instance, started unless ``start=False``.

        ``milter``: the socket under test ("unix:/path" or a Path), or None.
        ``routes``: extra mailertable entries (domain -> loopback port), before
        the defaults. ``route_bounces``: INNER's mail for fwd.example goes to
        this instance. Other keywords go to ``SendmailInstance``.
        """
        index = len(self.made) + 1
        name = _unique_name(
            self.workdir, name or ("sendmail" if index == 1 else f"sendmail{index}")
        )
        spec = f"unix:{milter}" if isinstance(milter, Path) else milter
        sink = self.world.sink
        sm = SendmailInstance(
            name,
            base=self.workdir / name,
            runtime=self.runtime,
            hostname=hostname or f"{name}.{FWD_DOMAIN}",
            routes={
                **(routes or {}),
                INNER_DOMAIN: self.world.inner.port,
                ".": sink.port("internet"),
            },
            loop_domains=[FWD_DOMAIN],
            relay_domains=[FWD_DOMAIN, INNER_DOMAIN],
            milter=spec,
            **options,
        )
        self.made.append(sm)
        self.world.sendmails.append(sm)
        if start:
            sm.start()
        if route_bounces:
            if self.world.bounce_route not in self.made:
                self._previous_route = self.world.bounce_route
            self.world.route_bounces_to(sm)
        return sm

    def close(self) -> None:
        for sm in self.made:
            sm.stop()
            if sm in self.world.sendmails:
                self.world.sendmails.remove(sm)
        if self.world.bounce_route in self.made:
            previous = self._previous_route
            alive = previous is not None and previous.running
            self.world.bounce_route = previous if alive else None
            _write_inner_transport(
                self.world.inner, self.world.sink, previous.port if alive and previous else None
            )
            if self.world.inner.running:
                self.world.inner.reload()
        self.made.clear()


def _unique_name(workdir: Path, name: str) -> str:
    candidate, n = name, 1
    while (workdir / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def make_inner(sink: Sink, runtime: RuntimeDir, workdir: Path) -> PostfixInstance:
    """INNER, not started: refuses unknown users, bounces for ``broken``."""
    inner = PostfixInstance(
        "inner",
        base=workdir / "inner",
        runtime=runtime,
        hostname=f"mx.{INNER_DOMAIN}",
        main={"relay_domains": INNER_DOMAIN, "recipient_delimiter": "+"},
    )
    users = inner.write_map("users", {f"{u}@{INNER_DOMAIN}": "OK" for u in INNER_USERS})
    _write_inner_transport(inner, sink, None)
    inner.update_main(
        {
            "relay_recipient_maps": users,
            "transport_maps": f"hash:{inner.config_dir / 'transport'}",
        }
    )
    return inner


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="session")
def runtime() -> Iterator[RuntimeDir]:
    rt = RuntimeDir()
    yield rt
    rt.remove()


@pytest.fixture(scope="session")
def dns(session_dir: Path) -> Iterator[DnsServer]:
    server = DnsServer(session_dir / "dns")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sink() -> Iterator[Sink]:
    s = Sink()
    try:
        for name in SINK_LISTENERS:
            s.add_listener(name)
        s.add_listener("refuse", refuse_all="550 5.1.1 <broken>: Recipient address rejected")
        s.add_listener("mda", dsn=False)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def inner(sink: Sink, runtime: RuntimeDir, session_dir: Path) -> Iterator[PostfixInstance]:
    pf = make_inner(sink, runtime, session_dir / "postfix")
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


@pytest.fixture(scope="session")
def mail(dns: DnsServer, sink: Sink, inner: PostfixInstance, session_dir: Path) -> MailWorld:
    return MailWorld(dns, sink, inner, session_dir)


@pytest.fixture(scope="module")
def border_factory(mail: MailWorld, runtime: RuntimeDir) -> Iterator[BorderFactory]:
    factory = BorderFactory(mail, runtime, mail.session_dir / "postfix")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def sendmail_factory(mail: MailWorld, runtime: RuntimeDir) -> Iterator[SendmailFactory]:
    factory = SendmailFactory(mail, runtime, mail.session_dir / "sendmail")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def probe_milter(runtime: RuntimeDir, session_dir: Path) -> Iterator[ProbeMilter]:
    probe = ProbeMilter(runtime.socket("probe"), session_dir / "probe")
    try:
        yield probe
    finally:
        probe.stop()
