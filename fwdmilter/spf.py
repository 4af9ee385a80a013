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
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any, Final

import dns.exception
import dns.name
import dns.resolver
import spf

from fwdmilter import addr
from fwdmilter.config import DNSSettings
from fwdmilter.policy import SPFOutcome

__all__ = ["SPFChecker", "pyspf_answers"]

log = logging.getLogger(__name__)

#: DNS answers kept (each for its TTL), least recently used dropped first.
_CACHE_ENTRIES = 10_000

_current = threading.local()
_install_lock = threading.Lock()
_installed = False


def _lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20.0) -> list[Any]:
    """pyspf's DNSLookup, answering from the current checker's resolver."""
    resolver: dns.resolver.Resolver | None = getattr(_current, "resolver", None)
    if resolver is None:
        raise spf.TempError("DNS: no resolver for this thread")
    return pyspf_answers(resolver, name, qtype, timeout)


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
        _current.resolver = self._resolver
        try:
            query = spf.query(
                i=ip, s=sender, h=helo, timeout=self._timeout, querytime=self._timeout
            )
            result, _code, explanation = query.check()
        except Exception as exc:
            log.warning("spf=error ip=%s domain=%s error=%s", ip, domain, exc, exc_info=True)
            result, explanation = "temperror", "SPF evaluation failed"
        finally:
            _current.resolver = None
        log.debug(
            "spf=%s ip=%s domain=%s identity=%s seconds=%.3f",
            result,
            ip,
            domain,
            identity,
            time.monotonic() - started,
        )
        return SPFOutcome(str(result), identity, domain, str(explanation or ""))

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
