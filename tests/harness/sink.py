"""The final mailboxes: an ESMTP sink that records every message with its envelope.

Why our own sink and not Postfix's ``smtp-sink``: the tests must refuse
*chosen* recipients at RCPT (smtp-sink refuses every RCPT or none), read the
envelope with its ESMTP parameters as data rather than from a dump file, and
block until "a message for X arrived" without polling a folder. A stdlib
server on threads does all three in a page of code.

The sink speaks ESMTP (RFC 5321) with PIPELINING (RFC 2920), 8BITMIME
(RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461: NOTIFY, ORCPT, RET, ENVID
are recorded verbatim) and ENHANCEDSTATUSCODES. It never relays anything.

API::

    sink = Sink(hostname="sink.test")
    port = sink.add_listener("inbox")             # one port per listener name
    sink.add_listener("broken", refuse_all="550 5.1.1 no such user")
    sink.refuse("bob@pass.example")               # 550 at RCPT for this address
    msg = sink.wait_for("alice@inner.example", timeout=20)
    msg.listener, msg.mail_from, msg.rcpt_addresses, msg.rcpts[0].params["NOTIFY"]
    msg.email["Subject"], msg.data                 # parsed and raw message
    sink.assert_nothing_for("carol@inner.example", wait=1.0)
    sink.rejections                                # every RCPT the sink refused
    sink.stop()

The sink is shared by a whole session: tests tell their mail apart by unique
addresses (``user+token@domain``, see ``tests.harness.smtp.unique``).
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import itertools
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

__all__ = ["Listener", "Message", "Rcpt", "Rejection", "Sink", "xtext_decode"]

_MAX_LINE = 64 * 1024
_DATA_LIMIT = 64 * 1024 * 1024


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 xtext ("+2B" is "+"), as in ORCPT and ENVID values."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "+" and _is_hex(text[i + 1 : i + 3]):
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789ABCDEFabcdef" for c in text)


@dataclass(frozen=True)
class Rcpt:
    """One accepted RCPT TO: the address and its ESMTP parameters (keys upper case)."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def orcpt(self) -> str | None:
        """The decoded ORCPT value ("rfc822;user@domain"), if the client gave one."""
        value = self.params.get("ORCPT")
        return None if value is None else xtext_decode(value)


@dataclass(frozen=True)
class Message:
    """One message as the sink received it."""

    sink_id: str
    listener: str
    peer: tuple[str, int]
    helo: str
    mail_from: str
    mail_params: dict[str, str | None]
    rcpts: tuple[Rcpt, ...]
    data: bytes
    received_at: float

    @property
    def rcpt_addresses(self) -> list[str]:
        return [r.address for r in self.rcpts]

    def rcpt(self, address: str) -> Rcpt:
        for r in self.rcpts:
            if r.address.lower() == address.lower():
                return r
        raise KeyError(address)

    def is_for(self, address: str) -> bool:
        return any(r.address.lower() == address.lower() for r in self.rcpts)

    @cached_property
    def email(self) -> email.message.EmailMessage:
        """The message parsed with the modern policy (headers decoded)."""
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        if not isinstance(msg, email.message.EmailMessage):  # pragma: no cover - policy says so
            raise TypeError("the default policy parses into EmailMessage")
        return msg

    def summary(self) -> str:
        return (
            f"{self.sink_id} on {self.listener!r}: from=<{self.mail_from}> "
            f"to={self.rcpt_addresses} subject={self.email.get('Subject')!r}"
        )


@dataclass(frozen=True)
class Rejection:
    """A command the sink refused (today: RCPT only)."""

    listener: str
    mail_from: str
    address: str
    reply: str


@dataclass
class Listener:
    """A named port of the sink. ``refuse_all``: reply every RCPT with it.
    ``dsn``: offer the DSN extension (False: a mailbox server that speaks no
    DSN, so the MTA before it reports "relayed" to NOTIFY=SUCCESS)."""

    name: str
    port: int
    refuse_all: str | None = None
    dsn: bool = True


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(self, sink: Sink, listener: Listener) -> None:
        self.sink = sink
        self.listener = listener
        super().__init__(("127.0.0.1", listener.port), _Session)


class _Session(socketserver.StreamRequestHandler):
    """One SMTP session; replies are written as each command is read (PIPELINING-safe)."""

    server: _Server
    timeout = 300

    def setup(self) -> None:
        super().setup()
        self.server.sink._opened(self.request)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.sink._closed(self.request)

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode("utf-8") + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        sink = self.server.sink
        listener = self.server.listener
        helo = ""
        mail_from: str | None = None
        mail_params: dict[str, str | None] = {}
        rcpts: list[Rcpt] = []
        with contextlib.suppress(OSError):
            self.reply(f"220 {sink.hostname} ESMTP harness sink")
            while True:
                raw = self.rfile.readline(_MAX_LINE)
                if not raw:
                    return
                line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                if verb in ("EHLO", "HELO"):
                    helo = arg.strip()
                    mail_from, mail_params, rcpts = None, {}, []
                    if verb == "HELO":
                        self.reply(f"250 {sink.hostname}")
                    else:
                        dsn = "250-DSN\r\n" if listener.dsn else ""
                        self.reply(
                            f"250-{sink.hostname}\r\n250-PIPELINING\r\n250-SIZE {_DATA_LIMIT}\r\n"
                            f"250-8BITMIME\r\n250-SMTPUTF8\r\n{dsn}"
                            "250 ENHANCEDSTATUSCODES"
                        )
                elif verb == "MAIL":
                    parsed = _parse_path(arg, "FROM:")
                    if mail_from is not None:
                        self.reply("503 5.5.1 Error: nested MAIL command")
                    elif parsed is None:
                        self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
                    else:
                        mail_from, mail_params = parsed
                        rcpts = []
                        self.reply("250 2.1.0 Ok")
                elif verb == "RCPT":
                    parsed = _parse_path(arg, "TO:")
                    if mail_from is None:
                        self.reply("503 5.5.1 Error: need MAIL command")
                    elif parsed is None:
                        self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
                    else:
                        address, params = parsed
                        refusal = sink._refusal(listener, address)
                        if refusal is None:
                            rcpts.append(Rcpt(address, params))
                            self.reply("250 2.1.5 Ok")
                        else:
                            sink._rejected(Rejection(listener.name, mail_from, address, refusal))
                            self.reply(refusal)
                elif verb == "DATA":
                    if mail_from is None or not rcpts:
                        self.reply("554 5.5.1 Error: no valid recipients")
                        continue
                    self.reply("354 End data with <CR><LF>.<CR><LF>")
                    data = self._read_data()
                    if data is None:
                        return
                    msg = sink._record(
                        listener.name,
                        self.client_address,
                        helo,
                        mail_from,
                        mail_params,
                        rcpts,
                        data,
                    )
                    self.reply(f"250 2.0.0 Ok: queued as {msg.sink_id}")
                    mail_from, mail_params, rcpts = None, {}, []
                elif verb == "RSET":
                    mail_from, mail_params, rcpts = None, {}, []
                    self.reply("250 2.0.0 Ok")
                elif verb == "NOOP":
                    self.reply("250 2.0.0 Ok")
                elif verb == "VRFY":
                    self.reply("252 2.0.0 Send some mail, I'll try my best")
                elif verb == "QUIT":
                    self.reply("221 2.0.0 Bye")
                    return
                else:
                    self.reply("502 5.5.2 Error: command not recognized")

    def _read_data(self) -> bytes | None:
        """Read to the lone dot; undo dot-stuffing (RFC 5321 section 4.5.2)."""
        lines: list[bytes] = []
        size = 0
        while True:
            raw = self.rfile.readline(_MAX_LINE)
            if not raw:
                return None
            if raw in (b".\r\n", b".\n"):
                return b"".join(lines)
            if raw.startswith(b"."):
                raw = raw[1:]
            size += len(raw)
            if size <= _DATA_LIMIT:
                lines.append(raw)


def _parse_path(arg: str, keyword: str) -> tuple[str, dict[str, str | None]] | None:
    """``FROM:<addr> KEY=VALUE...`` into the address and its parameters."""
    if arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].lstrip()
    if not rest.startswith("<"):
        return None
    # The closing ">" is the first one outside a quoted local part.
    quoted = False
    end = -1
    for i, ch in enumerate(rest):
        if ch == '"' and rest[i - 1 : i] != "\\":
            quoted = not quoted
        elif ch == ">" and not quoted:
            end = i
            break
    if end < 0:
        return None
    address = rest[1:end]
    # A source route (RFC 5321 section 4.1.2, "@a,@b:user@c") is obsolete;
    # keep only the mailbox, as MTAs do.
    if address.startswith("@") and ":" in address:
        address = address.split(":", 1)[1]
    params: dict[str, str | None] = {}
    for token in rest[end + 1 :].split():
        key, eq, value = token.partition("=")
        params[key.upper()] = value if eq else None
    return address, params


class Sink:
    """An SMTP sink with named listeners, recipients it refuses, and waits."""

    def __init__(self, hostname: str = "sink.test") -> None:
        self.hostname = hostname
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._rejections: list[Rejection] = []
        self._refused: dict[str, str] = {}
        self._listeners: dict[str, Listener] = {}
        self._servers: list[tuple[_Server, threading.Thread]] = []
        self._open: set[socket.socket] = set()
        self._ids = itertools.count(1)

    # -- listeners -----------------------------------------------------------

    def add_listener(self, name: str, *, refuse_all: str | None = None, dsn: bool = True) -> int:
        """Start a listener on a free loopback port; return the port."""
        if name in self._listeners:
            raise ValueError(f"listener {name!r} exists")
        for _ in range(5):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            listener = Listener(name, port, refuse_all, dsn)
            try:
                server = _Server(self, listener)
            except OSError:  # taken between the probe and the bind
                continue
            break
        else:
            raise RuntimeError("no free port for the sink")
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"sink-{name}"
        )
        thread.daemon = True
        thread.start()
        self._listeners[name] = listener
        self._servers.append((server, thread))
        return port

    def port(self, name: str) -> int:
        return self._listeners[name].port

    def listener(self, name: str) -> Listener:
        return self._listeners[name]

    @property
    def listeners(self) -> dict[str, Listener]:
        return dict(self._listeners)

    # -- refusals ------------------------------------------------------------

    def refuse(
        self, address: str, reply: str = "550 5.1.1 Recipient address rejected: sink refuses it"
    ) -> None:
        """Refuse RCPT TO for this address (any listener) with ``reply``."""
        with self._cond:
            self._refused[address.lower()] = reply

    def accept(self, address: str) -> None:
        """Undo ``refuse``."""
        with self._cond:
            self._refused.pop(address.lower(), None)

    @contextlib.contextmanager
    def refusing(
        self, address: str, reply: str = "550 5.1.1 Recipient address rejected: sink refuses it"
    ) -> Iterator[None]:
        self.refuse(address, reply)
        try:
            yield
        finally:
            self.accept(address)

    def set_refuse_all(self, name: str, reply: str | None) -> None:
        """Make listener ``name`` refuse every RCPT (``None``: accept again)."""
        with self._cond:
            self._listeners[name].refuse_all = reply

    def _refusal(self, listener: Listener, address: str) -> str | None:
        with self._cond:
            return listener.refuse_all or self._refused.get(address.lower())

    # -- records -------------------------------------------------------------

    def _record(
        self,
        listener: str,
        peer: tuple[str, int],
        helo: str,
        mail_from: str,
        mail_params: dict[str, str | None],
        rcpts: list[Rcpt],
        data: bytes,
    ) -> Message:
        with self._cond:
            msg = Message(
                sink_id=f"SINK{next(self._ids):05d}",
                listener=listener,
                peer=(str(peer[0]), int(peer[1])),
                helo=helo,
                mail_from=mail_from,
                mail_params=dict(mail_params),
                rcpts=tuple(rcpts),
                data=data,
                received_at=time.monotonic(),
            )
            self._messages.append(msg)
            self._cond.notify_all()
        return msg

    def _rejected(self, rejection: Rejection) -> None:
        with self._cond:
            self._rejections.append(rejection)
            self._cond.notify_all()

    def _opened(self, sock: socket.socket) -> None:
        with self._cond:
            self._open.add(sock)

    def _closed(self, sock: socket.socket) -> None:
        with self._cond:
            self._open.discard(sock)

    @property
    def rejections(self) -> list[Rejection]:
        with self._cond:
            return list(self._rejections)

    def messages(
        self,
        rcpt: str | None = None,
        *,
        listener: str | None = None,
        mail_from: str | None = None,
        match: Callable[[Message], bool] | None = None,
    ) -> list[Message]:
        """Messages received so far that fit every filter given."""
        with self._cond:
            found = list(self._messages)
        return [m for m in found if _fits(m, rcpt, listener, mail_from, match)]

    def wait_for(
        self,
        rcpt: str | None = None,
        *,
        listener: str | None = None,
        mail_from: str | None = None,
        match: Callable[[Message], bool] | None = None,
        count: int = 1,
        timeout: float = 20.0,
        explain: Callable[[], str] | None = None,
    ) -> Message:
        """Block until ``count`` messages fit the filters; return the first of them.

        On timeout the error lists what the sink did receive and, if given,
        ``explain()`` (the MTAs' logs).
        """
        return self.wait_for_all(
            rcpt,
            listener=listener,
            mail_from=mail_from,
            match=match,
            count=count,
            timeout=timeout,
            explain=explain,
        )[0]

    def wait_for_all(
        self,
        rcpt: str | None = None,
        *,
        listener: str | None = None,
        mail_from: str | None = None,
        match: Callable[[Message], bool] | None = None,
        count: int = 1,
        timeout: float = 20.0,
        explain: Callable[[], str] | None = None,
    ) -> list[Message]:
        """Like ``wait_for`` but return every fitting message (at least ``count``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self._messages if _fits(m, rcpt, listener, mail_from, match)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        what = f"{count} message(s) for rcpt={rcpt} listener={listener} mail_from={mail_from}"
        raise TimeoutError(
            f"after {timeout}s the sink has not got {what}\n" + self._report(explain)
        )

    def assert_nothing_for(
        self,
        rcpt: str | None = None,
        *,
        listener: str | None = None,
        mail_from: str | None = None,
        match: Callable[[Message], bool] | None = None,
        wait: float = 0.0,
        explain: Callable[[], str] | None = None,
    ) -> None:
        """Fail if a fitting message arrived, after waiting ``wait`` seconds."""
        if wait:
            time.sleep(wait)
        found = self.messages(rcpt, listener=listener, mail_from=mail_from, match=match)
        if found:
            raise AssertionError(
                "the sink got what it must not get:\n  "
                + "\n  ".join(m.summary() for m in found)
                + "\n"
                + self._report(explain)
            )

    def _report(self, explain: Callable[[], str] | None) -> str:
        with self._cond:
            got = [m.summary() for m in self._messages[-20:]]
            refused = [
                f"{r.listener}: <{r.mail_from}> -> <{r.address}>: {r.reply}"
                for r in self._rejections[-10:]
            ]
        text = "last messages in the sink:\n  " + ("\n  ".join(got) or "(none)")
        text += "\nlast refusals:\n  " + ("\n  ".join(refused) or "(none)")
        if explain is not None:
            text += "\n" + explain()
        return text

    # -- life ----------------------------------------------------------------

    def stop(self) -> None:
        for server, _ in self._servers:
            server.shutdown()
        with self._cond:
            still_open = list(self._open)
        for sock in still_open:  # wake sessions blocked in a read
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for server, thread in self._servers:
            server.server_close()  # joins the session threads
            thread.join(5)
        self._servers.clear()


def _fits(
    msg: Message,
    rcpt: str | None,
    listener: str | None,
    mail_from: str | None,
    match: Callable[[Message], bool] | None,
) -> bool:
    return (
        (rcpt is None or msg.is_for(rcpt))
        and (listener is None or msg.listener == listener)
        and (mail_from is None or msg.mail_from.lower() == mail_from.lower())
        and (match is None or match(msg))
    )
