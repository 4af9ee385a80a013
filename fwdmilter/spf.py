"""SPF checks (RFC 7208) with pyspf, over dnspython, against the configured resolver.

pyspf does its DNS through a module-level function, ``spf.DNSLookup``, that
it chooses at import. This adapter installs one lookup function there, once,
which sends each query to the resolver of the :class:`SPFChecker` running
it (a thread-local says which), so that checkers with different resolvers
can live in one process and none of them depends on /etc/resolv.conf unless
configured so.

Every evaluation has one overall time limit (``dns.timeout``): pyspf's own
default would wait 20 seconds on a zone that never answers. Answers are
cached for their TTL (dnspython's LRUCache), so that a run of mail from one
domain costs one evaluation's lookups, not one per message.

With one configured nameserver (a host's caching resolver: the usual case),
a lookup is one UDP exchange made here (:func:`_ask_udp`: a new socket, so
a new random source port, connected to the server; the query; a blocking
read with the time left), read by :mod:`fwdmilter.dnswire`, its answer kept
for the least TTL along its CNAME chain (RFC 7208 asks no more; a TTL of 0
is never kept). dnspython's ``Resolver.resolve`` does the same exchange
through a selector of its own per query and parses every part of the reply
into objects: on the milter's hot path that was half of its Python time.
Anything but a plain answer or NXDOMAIN (truncation, SERVFAIL, REFUSED, a
reply not to our question, one dnswire does not read) goes to ``resolve``,
which handles it as before; a timeout is a timeout (one server, as
``resolve`` would have waited for it).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

import dns.entropy
import dns.exception
import dns.name
import dns.resolver
import spf

from fwdmilter import addr, dnswire
from fwdmilter.config import DNSSettings
from fwdmilter.policy import (
    MailDecision,
    Settings,
    SPFOutcome,
    Trust,
    forwarder_domains,
    helo_within,
    match_forwarder,
    rcpt_spf,
)
from fwdmilter.states import Forward

__all__ = ["SPFChecker", "pyspf_answers"]

log = logging.getLogger(__name__)

#: DNS answers kept (each for its TTL), least recently used dropped first.
_CACHE_ENTRIES = 10_000

_current = threading.local()
_install_lock = threading.Lock()
_installed = False


def _lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20.0) -> list[Any]:
    """pyspf's DNSLookup, answering from the current checker's resolver."""
    checker: SPFChecker | None = getattr(_current, "checker", None)
    if checker is None:
        raise spf.TempError("DNS: no resolver for this thread")
    return checker.answers(name, qtype, timeout)


#: Largest UDP reply read; without EDNS a server sends at most 512 bytes.
_UDP_MAX: Final = 65535


def _ask_udp(server: tuple[str, int], name: str, rtype: int, deadline: float) -> dnswire.Reply:
    """One UDP exchange with ``server``: a new socket (a new random source
    port), connected so that only the server's datagrams reach it; replies
    to other queries are dropped. Raises dns.exception.Timeout, OSError
    (e.g. ICMP port unreachable) and dnswire.Unreadable."""
    qid = dns.entropy.random_16()
    wire, question = dnswire.query(qid, name, rtype)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(server)
        sock.send(wire)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise dns.exception.Timeout(timeout=0.0)  # type: ignore[no-untyped-call]
            sock.settimeout(left)
            try:
                reply = sock.recv(_UDP_MAX)
            except TimeoutError:
                raise dns.exception.Timeout(timeout=left) from None  # type: ignore[no-untyped-call]
            if reply[:2] == wire[:2]:
                return dnswire.parse(reply, qid, question, name, rtype)


class _AnswerCache:
    """Answers of the UDP path, each kept for its TTL, least recently used
    dropped first. Thread-safe."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._data: OrderedDict[tuple[str, int], tuple[float, tuple[object, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int], now: float) -> tuple[object, ...] | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            if hit[0] <= now:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return hit[1]

    def put(self, key: tuple[str, int], expires: float, data: tuple[object, ...]) -> None:
        with self._lock:
            self._data[key] = (expires, data)
            self._data.move_to_end(key)
            while len(self._data) > self._entries:
                self._data.popitem(last=False)


#: What dnspython raises for a name it cannot form, before any query.
_MALFORMED_NAME: Final = (
    dns.exception.SyntaxError,
    dns.name.NameTooLong,
    dns.name.IDNAException,
)


def pyspf_answers(
    resolver: dns.resolver.Resolver, name: str, qtype: str, timeout: float
) -> list[Any]:
    """``resolver``'s answer in the form pyspf's DNSLookup returns.

    That is what pyspf's own dnspython lookup returns: a list of
    ((name, qtype), data). Raises spf.TempError for a timeout or a server
    failure, so that the check's result is temperror (RFC 7208 section 2.6.6).
    """
    out: list[Any] = []
    if "\\" in name:
        # dnspython reads a backslash as an escape ("\\." a dot inside a
        # label), which would ask for another name than the mail's; no
        # mail domain holds one (RFC 5321 section 4.1.2): malformed, no
        # records (RFC 7208 section 4.3).
        return out
    try:
        answers = resolver.resolve(name, qtype, lifetime=timeout, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return out
    except _MALFORMED_NAME:
        # RFC 7208 section 4.3: a malformed domain (an empty label, one over
        # 63 octets, a name IDNA cannot encode) has no records; no server
        # was asked, and a temperror would defer the mail for ever.
        return out
    except dns.exception.Timeout as exc:
        raise spf.TempError(f"DNS timeout looking up {qtype} {name}") from exc
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS error looking up {qtype} {name}: {type(exc).__name__}") from exc
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), rdata.strings))
    return out


def _install() -> None:
    global _installed  # noqa: PLW0603 - one process-wide hook, installed once
    with _install_lock:
        if not _installed:
            spf.DNSLookup = _lookup
            _installed = True


def _plain_ip(ip: str) -> str:
    """An IPv4-mapped IPv6 address as IPv4, as SPF wants it (RFC 7208 5.6)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


class SPFChecker:
    """Checks SPF for a client address and a sender or HELO name.

    Thread-safe: libmilter's connection threads share one checker.
    """

    def __init__(self, settings: DNSSettings, *, cache_seconds: float = 300.0) -> None:
        if settings.nameservers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = list(settings.nameservers)
            resolver.port = settings.port
        else:
            resolver = dns.resolver.Resolver()
        resolver.timeout = settings.timeout
        resolver.lifetime = settings.timeout
        # Answers are kept for their TTL, as a caching resolver keeps them:
        # mail from one domain comes in runs, and a lookup and its parsing
        # are most of the milter's work per message. Thread-safe.
        resolver.cache = dns.resolver.LRUCache(_CACHE_ENTRIES)
        self._resolver = resolver
        # The UDP path (module docstring) with one server; dnspython with several.
        self._server: tuple[str, int] | None = (
            (str(resolver.nameservers[0]), resolver.port)
            if len(resolver.nameservers) == 1
            else None
        )
        self._answers = _AnswerCache(_CACHE_ENTRIES)
        self._timeout = settings.timeout
        self._permits_cache: dict[tuple[str, str], tuple[float, bool]] = {}
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        _install()

    def check(self, ip: str, sender: str, helo: str) -> SPFOutcome:
        """The SPF result for mail from ``sender`` (bare; "" for the null
        sender, when the HELO name is checked, RFC 7208 section 2.3)."""
        ip = _plain_ip(ip)
        identity = "mailfrom" if sender else "helo"
        domain = addr.domain_of(sender) if sender else helo.lower().rstrip(".")
        if identity == "helo" and (not domain or domain.startswith("[") or "." not in domain):
            # An address literal or a bare word cannot have an SPF record.
            return SPFOutcome("none", identity, domain, "no usable HELO name")
        started = time.monotonic()
        _current.checker = self
        try:
            query = spf.query(
                i=ip, s=sender, h=helo, timeout=self._timeout, querytime=self._timeout
            )
            result, _code, explanation = query.check()
        except Exception as exc:
            log.warning("spf=error ip=%s domain=%s error=%s", ip, domain, exc, exc_info=True)
            result, explanation = "temperror", "SPF evaluation failed"
        finally:
            _current.checker = None
        log.debug(
            "spf=%s ip=%s domain=%s identity=%s seconds=%.3f",
            result,
            ip,
            domain,
            identity,
            time.monotonic() - started,
        )
        return SPFOutcome(str(result), identity, domain, str(explanation or ""))

    def answers(self, name: str, qtype: str, timeout: float) -> list[Any]:
        """pyspf's DNSLookup for this checker: from the cache, by the UDP
        path, or (several servers, a truncated or unreadable reply, an
        error code but NXDOMAIN) by dnspython's resolver."""
        rtype = dnswire.TYPES.get(qtype)
        if rtype is None or self._server is None:
            return pyspf_answers(self._resolver, name, qtype, timeout)
        started = time.monotonic()
        key = (name.lower().rstrip("."), rtype)
        data = self._answers.get(key, started)
        if data is None:
            try:
                reply = _ask_udp(self._server, name, rtype, started + timeout)
            except dns.exception.Timeout as exc:
                raise spf.TempError(f"DNS timeout looking up {qtype} {name}") from exc
            except (OSError, dnswire.Unreadable):
                reply = None
            if reply is None or reply.truncated or reply.rcode not in (0, 3):
                left = max(0.001, timeout - (time.monotonic() - started))
                return pyspf_answers(self._resolver, name, qtype, left)
            data = reply.data
            if data and reply.ttl > 0:
                self._answers.put(key, started + reply.ttl, data)
        return [((name, qtype), d) for d in data]

    def forwarder(self, ip: str, domain: str, helo: str) -> str:
        """Whether the client at ``ip`` is the forwarder ``domain``: the
        result of check_host(ip, domain) for the identity postmaster@domain
        (RFC 7208 section 2.4), or, when the HELO name is ``domain`` or a
        name under it, of the HELO identity (section 2.3). "pass" if either
        passes, "temperror" if either could not complete, else the first
        result. Not cached here: the milter keeps it per connection."""
        results = [self.check(ip, f"postmaster@{domain}", "").result]
        if results[0] != "pass" and helo_within(helo, domain):
            results.append(self.check(ip, "", helo).result)
        if "pass" in results:
            return "pass"
        return "temperror" if "temperror" in results else results[0]

    def trust(
        self,
        entries: tuple[str, ...],
        ip: str,
        helo: str,
        cache: dict[tuple[str, str], str] | None = None,
    ) -> Trust:
        """Which of a recipient's trusted forwarders (``Forward.trusted``)
        the client at ``ip`` is: its networks first (no DNS), then each
        domain in turn (:meth:`forwarder`) until one passes. ``cache`` keeps
        the domains' results, keyed (domain, HELO name): the milter gives
        one per connection."""
        trust = match_forwarder(entries, ip, {})
        if trust.entry or not ip:
            return trust
        results: dict[str, str] = {}
        for domain in forwarder_domains(entries):
            key = (domain, helo.lower())
            hit = cache.get(key) if cache is not None else None
            if hit is None:
                hit = self.forwarder(ip, domain, helo)
                if cache is not None:
                    cache[key] = hit
            results[domain] = hit
            if hit == "pass":
                break
        return match_forwarder(entries, ip, results)

    def recipient_trust(
        self,
        s: Settings,
        mail: MailDecision,
        forward: Forward | None,
        ip: str,
        helo: str,
        cache: dict[tuple[str, str], str] | None = None,
    ) -> Trust | None:
        """:meth:`trust` for a recipient's own forwarders, asked only when
        they matter: the recipient has some and the mail's SPF verdict
        would refuse it (None otherwise: no DNS)."""
        if forward is None or not forward.trusted or rcpt_spf(s, mail, forward)[0] is None:
            return None
        return self.trust(forward.trusted, ip, helo, cache)

    def sender_permits(self, mail: MailDecision, outbound_ips: Sequence[str]) -> bool:
        """True if the sender's SPF passes every one of ``outbound_ips``
        (srs.outbound_ips, for "when-needed" rewriting); False without them
        or without a sender to rewrite."""
        domain = addr.domain_of(mail.sender)
        return (
            bool(outbound_ips)
            and bool(mail.srs_sender)
            and all(self.permits(ip, domain) for ip in outbound_ips)
        )

    def permits(self, ip: str, domain: str) -> bool:
        """True if ``domain``'s SPF record passes ``ip`` (for "when-needed"
        rewriting); cached for a few minutes per (ip, domain)."""
        key = (ip, domain.lower())
        now = time.monotonic()
        with self._lock:
            hit = self._permits_cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        outcome = self.check(ip, f"postmaster@{domain}", "")
        ok = outcome.result == "pass"
        if outcome.result != "temperror":
            with self._lock:
                if len(self._permits_cache) > 10_000:
                    self._permits_cache.clear()
                self._permits_cache[key] = (now + self._cache_seconds, ok)
        return ok
