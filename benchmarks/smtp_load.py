"""SMTP clients for milter_rate: the realistic mix and the one-at-a-time latency.

smtp-source sends every message from one sender and one client address,
which flatters every cache on the path (one SPF record, one connection
source). The mix sends from many sender domains and several loopback
client addresses, with SPF results of every kind, null-sender bounces to
SRS addresses fwdmilter wrote earlier, and a share of mail from domains
whose SPF does not pass (state U at fwdmilter):

========== ============================================================
pass       a sender of a domain whose SPF passes 127.0.0.0/8: forwarded,
           state B
unverified a sender of a domain with softfail, neutral or no SPF record:
           forwarded, state U
fail       a sender of a domain whose SPF fails: refused (550) by the SPF
           milters, at MAIL by pyspf-milter, at RCPT by fwdmilter (the
           verdict is per recipient); accepted with no milter
bounce     a null-sender DSN to the SRS0 address of an earlier forwarded
           message from a passing domain: fwdmilter sends it back to the
           original sender (delivered)
held       the same to the SRS0 address of mail from an unverified domain:
           fwdmilter holds it (Postfix's hold queue, not delivered)
========== ============================================================

The client is asyncio in this process (one connection per message, as
smtp-source does), so the mix's load generator is this process's CPU.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tests.harness.dns import DnsName

MIX_DOMAINS = 200
MIX_CLIENTS = tuple(f"127.0.0.{i}" for i in range(2, 10))
SPF_LOOPBACK = "v=spf1 ip4:127.0.0.0/8 -all"
#: Kinds of mix message and their shares.
MIX_SHARES: dict[str, float] = {
    "pass": 0.60,
    "unverified": 0.15,
    "fail": 0.10,
    "bounce": 0.12,
    "held": 0.03,
}
_SRS0 = re.compile(r"^<?SRS0=[^=]+=[^=]+=([^=]+)=(.+)@[^@>]+>?$", re.IGNORECASE)


def domain_kind(index: int) -> str:
    """What SPF says for client 127.0.0.x at mix domain ``index``."""
    return {0: "fail", 1: "softfail", 2: "neutral", 3: "none"}.get(index % 10, "pass")


def mix_domain(index: int) -> str:
    return f"d{index}.mix.example"


def mix_zones() -> list[DnsName]:
    """The DNS names of the mix: each domain and its MX host (the HELO of bounces)."""
    records = {
        "pass": SPF_LOOPBACK,
        "fail": "v=spf1 ip4:192.0.2.1 -all",
        "softfail": "v=spf1 ip4:192.0.2.1 ~all",
        "neutral": "v=spf1 ?all",
    }
    out: list[DnsName] = []
    for i in range(MIX_DOMAINS):
        kind = domain_kind(i)
        txt = (records[kind],) if kind in records else ()
        out.append(DnsName(mix_domain(i), txt, kind))
        out.append(DnsName(f"mx.{mix_domain(i)}", (SPF_LOOPBACK,), "pass"))
    return out


@dataclass(frozen=True)
class Planned:
    """One message of the mix and the outcome each kind of variant should see."""

    kind: str
    client_ip: str
    helo: str
    sender: str
    rcpt: str
    body: bytes
    #: The original sender a reversed bounce should be delivered to.
    origin: str = ""


@dataclass
class Outcome:
    """What the client saw: the last reply code and the seconds from connect
    to the reply to the end of the message (or to the refusal)."""

    code: int
    seconds: float
    stage: str


def srs_origin(address: str) -> tuple[str, str] | None:
    """(domain, local part) of an SRS0 address, or None."""
    m = _SRS0.match(address)
    return (m.group(1).lower(), m.group(2)) if m else None


def _filler(size: int, seed: int) -> bytes:
    line = (f"mix message {seed} " * 8)[:70].encode() + b"\r\n"
    return line * max(1, size // len(line))


def _message(sender: str, rcpt: str, serial: int, size: int) -> bytes:
    head = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: mix {serial}\r\n"
        f"Message-ID: <mix.{serial}.{time.time_ns()}@client.example>\r\n\r\n"
    ).encode()
    return head + _filler(size - len(head), serial)


def _dsn(rcpt: str, reporting: str, serial: int) -> bytes:
    return (
        f"From: MAILER-DAEMON@{reporting}\r\nTo: <{rcpt}>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        f"Message-ID: <dsn.{serial}.{time.time_ns()}@{reporting}>\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n--b1\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {reporting}\r\n\r\n"
        "Final-Recipient: rfc822; someone@dest.example\r\nAction: failed\r\n"
        "Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
        "\r\n--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <orig.{serial}@client.example>\r\nSubject: hello\r\n"
        "\r\n--b1--\r\n"
    ).encode()


def plan_mix(
    count: int,
    seed: int,
    forwards: int,
    srs_pass: Sequence[str],
    srs_unverified: Sequence[str],
    size: int,
    fwd_domain: str,
) -> list[Planned]:
    """``count`` messages of the mix; bounces go to the SRS addresses given
    (an earlier batch's forwarded senders); recipients of forwarded mail are
    ``Nfwd@fwd_domain`` for N in 1..forwards."""
    rnd = random.Random(seed)
    kinds = list(MIX_SHARES)
    weights = list(MIX_SHARES.values())
    by_kind = {k: [i for i in range(MIX_DOMAINS) if domain_kind(i) in k] for k in ("pass", "fail")}
    by_kind["unverified"] = [
        i for i in range(MIX_DOMAINS) if domain_kind(i) in ("softfail", "neutral", "none")
    ]
    out: list[Planned] = []
    for serial in range(count):
        kind = rnd.choices(kinds, weights)[0]
        if (kind == "bounce" and not srs_pass) or (kind == "held" and not srs_unverified):
            kind = "pass"
        ip = rnd.choice(MIX_CLIENTS)
        if kind in ("bounce", "held"):
            rcpt = rnd.choice(srs_pass if kind == "bounce" else srs_unverified).strip("<>")
            origin = srs_origin(rcpt)
            reporting = f"mx.{mix_domain(rnd.choice(by_kind['pass']))}"
            out.append(
                Planned(
                    kind,
                    ip,
                    reporting,
                    "",
                    rcpt,
                    _dsn(rcpt, reporting, serial),
                    f"{origin[1]}@{origin[0]}" if origin else "",
                )
            )
            continue
        domain = mix_domain(rnd.choice(by_kind[kind]))
        sender = f"user{rnd.randrange(1000)}@{domain}"
        rcpt = f"{rnd.randrange(1, forwards + 1)}fwd@{fwd_domain}"
        out.append(
            Planned(kind, ip, f"mx.{domain}", sender, rcpt, _message(sender, rcpt, serial, size))
        )
    return out


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise ConnectionError(f"SMTP: short reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])


async def _send_one(host: str, port: int, m: Planned) -> Outcome:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port, local_addr=(m.client_ip, 0))
    try:
        stage = "connect"
        code = await _reply(reader)
        steps: list[tuple[str, bytes]] = [
            ("helo", f"EHLO {m.helo}\r\n".encode()),
            ("mail", f"MAIL FROM:<{m.sender}>\r\n".encode()),
            ("rcpt", f"RCPT TO:<{m.rcpt}>\r\n".encode()),
            ("data", b"DATA\r\n"),
            ("eom", m.body.replace(b"\r\n.", b"\r\n..") + b".\r\n"),
        ]
        for stage, line in steps:  # noqa: B007 - the stage of a refusal is reported
            writer.write(line)
            code = await _reply(reader)
            if code >= 400:
                break
        seconds = time.perf_counter() - started
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()
        await writer.wait_closed()
    return Outcome(code, seconds, stage)


async def _send_all(host: str, port: int, plan: Sequence[Planned], sessions: int) -> list[Outcome]:
    queue = list(enumerate(plan))
    queue.reverse()
    results: list[Outcome | None] = [None] * len(plan)

    async def worker() -> None:
        while queue:
            i, m = queue.pop()
            results[i] = await _send_one(host, port, m)

    await asyncio.gather(*(worker() for _ in range(sessions)))
    return [r for r in results if r is not None]


def send_mix(host: str, port: int, plan: Sequence[Planned], sessions: int) -> list[Outcome]:
    """Every planned message, ``sessions`` at a time, each on a new connection."""
    return asyncio.run(_send_all(host, port, plan, sessions))


def _read_reply(sock: socket.socket) -> int:
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("SMTP: connection closed")
        buf += chunk
        lines = buf.split(b"\r\n")
        for line in lines[:-1]:
            if len(line) >= 4 and line[3:4] == b" ":
                return int(line[:3])


def transaction_seconds(
    host: str, port: int, sender: str, rcpt: str, helo: str, body: bytes
) -> float:
    """One message on a new connection, blocking: the seconds from connect
    to the 250 for the end of the message (QUIT and close not counted)."""
    started = time.perf_counter()
    sock = socket.create_connection((host, port), timeout=30)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        steps = [
            b"",
            f"EHLO {helo}\r\n".encode(),
            f"MAIL FROM:<{sender}>\r\n".encode(),
            f"RCPT TO:<{rcpt}>\r\n".encode(),
            b"DATA\r\n",
            body + b".\r\n",
        ]
        for line in steps:
            if line:
                sock.sendall(line)
            code = _read_reply(sock)
            if code >= 400:
                raise ConnectionError(f"SMTP: {code} after {line[:30]!r}")
        seconds = time.perf_counter() - started
        sock.sendall(b"QUIT\r\n")
        _read_reply(sock)
    finally:
        sock.close()
    return seconds


def message(sender: str, rcpt: str, serial: int, size: int) -> bytes:
    """A plain message of about ``size`` bytes."""
    return _message(sender, rcpt, serial, size)
