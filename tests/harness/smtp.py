"""An SMTP client for tests that keeps the reply of every stage.

API::

    t = send(port, "alice@pass.example", ["bob@fwd.example"], make_message(...),
             source_ip="127.0.0.2", helo="mx.pass.example",
             mail_options=["BODY=8BITMIME"], rcpt_options=["NOTIFY=FAILURE"])
    t.mail                      # Reply(250, "2.1.0 Ok"); str(t.mail) == "250 2.1.0 Ok"
    t.mail.startswith("550 5.7.23")
    t.rcpt("bob@fwd.example").said(replies.TARGET_HELD)   # the milter's reply, text and all
    t.rcpt("bob@fwd.example")   # the reply to that RCPT
    t.data                      # the final reply to the message, None if never sent
    t.accepted, t.queue_id      # True, "4Abc123" (Postfix's "queued as ...", or Sendmail's)

``send`` opens one session per call; ``Client`` keeps a session open for
several transactions. Per-recipient parameters: pass ``(address, [params])``
instead of a bare address. The null sender is ``""`` (sent as ``<>``).
Addresses and the EHLO name may be UTF-8 (sent as is: the test decides
whether to ask for SMTPUTF8). The session stops at the first refused
stage that makes the next one pointless (MAIL, or every RCPT), as a real
client does, and the Transcript says where.
"""

from __future__ import annotations

import itertools
import os
import re
import smtplib
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate

from fwdmilter.replies import Reply as MilterReply

__all__ = [
    "Client",
    "Reply",
    "Transcript",
    "make_message",
    "raw_envelope",
    "said",
    "send",
    "unique",
    "xtext",
]

_tokens = itertools.count(1)


def unique(prefix: str = "t") -> str:
    """A token unique in this test session (and across concurrent sessions)."""
    return f"{prefix}{os.getpid() % 10000:04d}x{next(_tokens):04d}"


def xtext(text: str) -> str:
    """RFC 3461 xtext, for ORCPT and ENVID values: "+" and "=" become "+2B", "+3D"."""
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
        for c in text
    )


@dataclass(frozen=True)
class Reply:
    """One SMTP reply; ``text`` holds the enhanced status code and every line."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    def startswith(self, prefix: str) -> bool:
        """``reply.startswith("550 5.7.23")``: code and text, as on the wire."""
        return str(self).startswith(prefix)

    def said(self, expected: MilterReply, *, completed: bool = False) -> bool:
        """True if this is the milter's reply ``expected`` (one of
        :mod:`fwdmilter.replies`): code, enhanced status and text.

        A code alone proves little: Postfix answers ``451 4.7.1`` itself when
        the milter is down or times out (milter_default_action). With
        ``completed``, the milter added to the text (an SPF explanation), so
        only its start must match.
        """
        return said(str(self), expected, completed=completed)


def said(reply: str, expected: MilterReply, *, completed: bool = False) -> bool:
    """:meth:`Reply.said` for a reply as text (``"451 4.7.1 ..."``).

    Sendmail puts the address before the text of some replies at MAIL and
    RCPT (``550 5.1.1 <a@b>... No such recipient here``): that is allowed.
    """
    pattern = (
        rf"{expected.code} {re.escape(expected.status)} (?:<[^>]*>\.\.\. )?"
        + re.escape(expected.text)
        + ("" if completed else r"\Z")
    )
    return re.match(pattern, reply) is not None


# Postfix and the sink: "250 2.0.0 Ok: queued as ID"; Sendmail: "250 2.0.0 ID Message
# accepted for delivery".
_QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)|^\d\.\d\.\d ([0-9A-Za-z]+) Message accepted")

Recipient = str | tuple[str, Sequence[str]]


@dataclass(repr=False)
class Transcript:
    """The replies of one transaction, stage by stage."""

    greeting: Reply | None = None
    helo: Reply | None = None
    mail: Reply | None = None
    rcpts: list[tuple[str, Reply]] = field(default_factory=list)
    data: Reply | None = None
    disconnected: bool = False

    def rcpt(self, address: str) -> Reply:
        for addr, reply in self.rcpts:
            if addr == address:
                return reply
        raise KeyError(f"no RCPT TO:<{address}> in this transaction")

    @property
    def accepted(self) -> bool:
        """The server took responsibility for the message (250 after the data)."""
        return self.data is not None and self.data.code == 250

    @property
    def queue_id(self) -> str | None:
        if self.data is None:
            return None
        found = _QUEUED.search(self.data.text)
        return (found.group(1) or found.group(2)) if found else None

    def __str__(self) -> str:
        lines = [f"connect: {self.greeting}", f"helo: {self.helo}", f"mail: {self.mail}"]
        lines += [f"rcpt <{a}>: {r}" for a, r in self.rcpts]
        lines.append(f"data: {self.data}")
        if self.disconnected:
            lines.append("(server disconnected)")
        return "\n".join(lines)

    __repr__ = __str__


def _reply(code: int, msg: bytes | str) -> Reply:
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
    return Reply(code, text.replace("\n", " / "))


def make_message(
    sender: str = "alice@pass.example",
    to: str = "bob@fwd.example",
    subject: str = "harness test",
    body: str = "Hello.\n",
    headers: Iterable[tuple[str, str]] = (),
    message_id: str | None = None,
) -> bytes:
    """A small RFC 5322 message with CRLF line ends, UTF-8 as given."""
    mid = message_id or f"<{unique('m')}.{time.time_ns()}@harness.test>"
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: {mid}",
        *(f"{k}: {v}" for k, v in headers),
        "",
        *body.splitlines(),
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


class Client:
    """One SMTP session from ``source_ip`` to 127.0.0.1:``port``; a context manager."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        source_ip: str = "127.0.0.1",
        helo: str = "client.pass.example",
        ehlo: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self.smtp = smtplib.SMTP(
            local_hostname=helo, timeout=timeout, source_address=(source_ip, 0)
        )
        # Commands go out as UTF-8 so that tests can send SMTPUTF8 addresses;
        # whether the server advertised it is for the test to check.
        self.smtp.command_encoding = "utf-8"
        self.greeting: Reply | None = None
        self.helo_reply: Reply | None = None
        self.disconnected = False
        try:
            self.greeting = _reply(*self.smtp.connect(host, port))
            if self.greeting.code == 220:
                self.helo_reply = _reply(*(self.smtp.ehlo(helo) if ehlo else self.smtp.helo(helo)))
        except smtplib.SMTPServerDisconnected:
            self.disconnected = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, verb: str, args: str = "") -> Reply:
        """Send one raw command and return its reply."""
        return _reply(*self.smtp.docmd(verb, args))

    def transaction(
        self,
        mail_from: str,
        rcpts: Sequence[Recipient],
        message: bytes | str | None = None,
        *,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> Transcript:
        """MAIL, each RCPT, DATA; RSET after a refused transaction so the session stays usable."""
        t = Transcript(greeting=self.greeting, helo=self.helo_reply)
        if self.disconnected or self.helo_reply is None or not self.helo_reply.ok:
            t.disconnected = self.disconnected
            return t
        try:
            t.mail = self.command("MAIL", f"FROM:<{mail_from}>" + _opts(mail_options))
            if t.mail.ok:
                for rcpt in rcpts:
                    address, options = (rcpt, rcpt_options) if isinstance(rcpt, str) else rcpt
                    t.rcpts.append(
                        (address, self.command("RCPT", f"TO:<{address}>" + _opts(options)))
                    )
            if t.mail.ok and any(r.ok for _, r in t.rcpts):
                if message is None:
                    first = rcpts[0] if isinstance(rcpts[0], str) else rcpts[0][0]
                    message = make_message(mail_from or "mailer-daemon@harness.test", first)
                data = message.encode("utf-8") if isinstance(message, str) else message
                try:
                    t.data = _reply(*self.smtp.data(_crlf(data)))
                except smtplib.SMTPDataError as e:  # DATA itself refused
                    t.data = _reply(e.smtp_code, e.smtp_error)
            if t.data is None or not t.data.ok:
                self.command("RSET")
        except smtplib.SMTPServerDisconnected:
            t.disconnected = self.disconnected = True
        return t

    def close(self) -> None:
        try:
            if not self.disconnected and self.smtp.sock is not None:
                self.smtp.quit()
        except (smtplib.SMTPServerDisconnected, OSError):
            pass
        finally:
            self.smtp.close()


def _opts(options: Sequence[str]) -> str:
    return "".join(" " + o for o in options)


def send(
    port: int,
    mail_from: str,
    rcpts: Sequence[Recipient],
    message: bytes | str | None = None,
    *,
    host: str = "127.0.0.1",
    source_ip: str = "127.0.0.1",
    helo: str = "client.pass.example",
    ehlo: bool = True,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    timeout: float = 30.0,
) -> Transcript:
    """One session, one transaction; see the module docstring."""
    with Client(
        port, host=host, source_ip=source_ip, helo=helo, ehlo=ehlo, timeout=timeout
    ) as client:
        return client.transaction(
            mail_from, rcpts, message, mail_options=mail_options, rcpt_options=rcpt_options
        )


def raw_envelope(
    port: int, mail_from: bytes, rcpt: bytes, helo: str = "helo.pass.example"
) -> list[str]:
    """The replies to MAIL FROM and (if that was accepted) RCPT TO, for
    addresses sent as raw octets: smtplib would encode them. The session
    ends with QUIT; no message is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s, s.makefile("rwb") as f:

        def command(line: bytes) -> str:
            f.write(line + b"\r\n")
            f.flush()
            while True:
                got = f.readline().decode("utf-8", "replace").rstrip()
                if got[3:4] != "-":
                    return got

        f.readline()  # the greeting
        command(b"EHLO " + helo.encode())
        answers = [command(b"MAIL FROM:<" + mail_from + b">")]
        if answers[0].startswith("250"):
            answers.append(command(b"RCPT TO:<" + rcpt + b">"))
        command(b"QUIT")
    return answers
