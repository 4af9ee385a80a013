"""A real DNS server (dnsmasq) for the SPF test zones, on a free loopback port.

The zones are data: ``ZONES`` lists each name, its TXT records and the SPF
result it gives for a client at 127.0.0.1. Extend the list to add a case.
Every name under ``.example`` is answered by dnsmasq alone (``--local``):
a name that is not listed is NXDOMAIN. A zone listed with ``silent=True`` is
forwarded to a UDP socket that reads nothing, so every lookup in it times out
(SPF temperror), as a dead authoritative server does.

API::

    server = DnsServer(workdir)           # started; server.port, server.log()
    server.resolver(lifetime=2.0)         # a dnspython Resolver that asks it
    with server.pyspf():                  # pyspf's lookups go to it meanwhile
        spf.check2(i="127.0.0.1", s="a@pass.example", h="mx.pass.example", querytime=2)
    server.stop()

pyspf's ``querytime`` (default 20 s) bounds a whole check and, when it is
set, replaces ``timeout``: passing ``timeout=1.5`` alone still waits 20 s on a
silent zone; pass ``querytime``.

HELO names for null-sender checks are listed too (``helo.<zone>``), as are
the hosts of the topology (``border.fwd.example``, ``mx.inner.example``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver

from tests.harness.proc import Process, free_port, wait_until

__all__ = ["ZONES", "DnsName", "DnsServer"]

# 192.0.2.0/24 stands for outside clients in the in-process milter tests.
_PASS = "v=spf1 ip4:127.0.0.0/8 ip4:192.0.2.0/24 -all"


@dataclass(frozen=True)
class DnsName:
    """A name the server knows; ``spf`` is what pyspf says for client 127.0.0.1."""

    name: str
    txt: tuple[str, ...] = ()
    spf: str | None = None
    a: tuple[str, ...] = ()
    silent: bool = False  # the whole zone at this name never answers


def _zone(domain: str, record: str | None, result: str) -> list[DnsName]:
    """A sender domain and its HELO name ``helo.<domain>`` with the same policy."""
    txt = () if record is None else (record,)
    return [DnsName(domain, txt, result), DnsName(f"helo.{domain}", txt, result)]


ZONES: tuple[DnsName, ...] = (
    *_zone("pass.example", _PASS, "pass"),
    *_zone("fail.example", "v=spf1 ip4:192.0.2.1 -all", "fail"),
    *_zone("softfail.example", "v=spf1 ip4:192.0.2.1 ~all", "softfail"),
    *_zone("neutral.example", "v=spf1 ip4:192.0.2.1 ?all", "neutral"),
    # A name that exists (it has a TXT record) but publishes no SPF policy.
    *_zone("none.example", "harness: this is not an SPF record", "none"),
    # Not listed at all: NXDOMAIN, which SPF also reads as "none".
    DnsName("nxdomain.example", spf="none"),
    # An unknown mechanism is a syntax error (RFC 7208 section 4.6).
    *_zone("permerror.example", "v=spf1 frobnicate:127.0.0.1 ip4:127.0.0.0/8 -all", "permerror"),
    # Macros put the sender's local part into DNS names (RFC 7208 section 7):
    # what a hostile local part does to the lookups.
    *_zone("macro.example", "v=spf1 exists:%{l}.l.macro.example ?all", "neutral"),
    *_zone("explain.example", "v=spf1 -all exp=%{l}.exp.explain.example", "fail"),
    DnsName("temperror.example", spf="temperror", silent=True),
    DnsName("slow.example", spf="temperror", silent=True),
    # Other forwarders that send to ours without SRS (per-recipient trusted
    # forwarders): one whose own domain's SPF lists its clients, and one
    # whose domain lists none but whose HELO name's record does.
    DnsName("alumni.example", (_PASS,), "pass"),
    DnsName("relay.example", ("v=spf1 -all",), "fail"),
    DnsName("mx.relay.example", (_PASS,), "pass"),
    # The forwarder's own domain and the hosts of the test topology.
    DnsName("fwd.example", (_PASS,), "pass"),
    DnsName("border.fwd.example", (_PASS,), "pass"),
    DnsName("border2.fwd.example", (_PASS,), "pass"),
    DnsName("border3.fwd.example", (_PASS,), "pass"),
    DnsName("inner.example", (_PASS,), "pass"),
    DnsName("mx.inner.example", (_PASS,), "pass"),
)


def _txt_arg(name: str, txt: str) -> str:
    # On its command line dnsmasq keeps quotes as they are and splits the
    # record into strings at each comma.
    if "," in txt or '"' in txt:
        raise ValueError(f"TXT record of {name} must not hold commas or quotes")
    return f"--txt-record={name},{txt}"


class DnsServer:
    """dnsmasq answering ``zones`` only, on 127.0.0.1:``port`` (UDP and TCP),
    with the TTL ``ttl`` (0 by default: answers are never cached)."""

    def __init__(self, workdir: Path, zones: Sequence[DnsName] = ZONES, ttl: int = 0) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.zones = tuple(zones)
        self.log_path = workdir / "dnsmasq.log"
        # Lookups in silent zones go here and are never answered.
        self._blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._blackhole.bind(("127.0.0.1", 0))
        hole = int(self._blackhole.getsockname()[1])
        args = [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",
            "--user=root",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--cache-size=0",
            "--local=/example/",
            # TTL of the records given here; 0 (dnsmasq's default): no
            # resolver caches them, every lookup reaches this server.
            f"--local-ttl={ttl}",
            "--log-queries",
            f"--log-facility={self.log_path}",
        ]
        for z in self.zones:
            if z.silent:
                args.append(f"--server=/{z.name}/127.0.0.1#{hole}")
            args += [_txt_arg(z.name, t) for t in z.txt]
            args += [f"--host-record={z.name},{a}" for a in z.a]
        self.proc: Process | None = None
        try:
            self._start(args)
        except BaseException:
            self._blackhole.close()
            raise

    def _start(self, args: list[str]) -> None:
        # The port is free for TCP when we pick it; UDP may still clash, so
        # dnsmasq gets three tries.
        for _ in range(3):
            self.port = free_port()
            self.proc = Process(
                ["dnsmasq", f"--port={self.port}", *args], self.workdir / "dnsmasq.out"
            )
            try:
                wait_until(
                    lambda: not self.proc or not self.proc.alive() or self._answers(),
                    10,
                    "dnsmasq answers",
                )
            except TimeoutError:
                self.proc.stop()
                raise
            if self.proc.alive():
                return
            self.proc.stop()
        raise RuntimeError("dnsmasq did not start:\n" + self.output())

    def _answers(self) -> bool:
        try:
            self.resolver(lifetime=0.1).resolve("fwd.example", "TXT")
        except dns.exception.DNSException:
            return False
        return True

    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver asking this server only."""
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = ["127.0.0.1"]
        res.port = self.port
        res.lifetime = lifetime
        res.timeout = lifetime
        return res

    @contextlib.contextmanager
    def pyspf(self) -> Iterator[None]:
        """Point pyspf's lookups at this server while the block runs.

        pyspf calls the module-level ``spf.DNSLookup(name, qtype, strict,
        timeout)``; this swaps in one that asks our resolver and maps its
        outcomes onto pyspf's as pyspf's own dnspython adapter does.
        """
        import spf  # noqa: PLC0415 - pyspf is a test-time import here

        from fwdmilter.spf import pyspf_answers  # noqa: PLC0415

        def lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[Any]:
            return pyspf_answers(self.resolver(lifetime=timeout), name, qtype, timeout)

        saved = spf.DNSLookup
        spf.DNSLookup = lookup
        try:
            yield
        finally:
            spf.DNSLookup = saved

    def output(self) -> str:
        text = self.proc.output() if self.proc else ""
        if self.log_path.exists():
            text += self.log_path.read_text(errors="replace")
        return text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        self._blackhole.close()
