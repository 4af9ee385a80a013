"""The milter's decisions, as pure functions: facts in, a decision out.

Nothing here touches a socket, a file or the clock; the milter shell
(:mod:`fwdmilter.milter`) gathers the facts (SPF result, store lookups, the
queue id, the time), calls these functions in transaction order, and applies
what they return. A transaction runs through four steps::

    decide_mail      MAIL FROM: SPF result -> reply or continue; the state
                     the message will have (B or U) and its SRS sender
    classify_rcpt    RCPT TO: which lookups the recipient needs
    decide_rcpt_*    RCPT TO: the lookup's result -> reply or continue
    decide_eom       end of message: the envelope and header changes, the
                     records to write, what to hold

Message states (see docs/states.md): a message is B (bouncable) when its
MAIL FROM is non-null and verified (SPF pass, or an authenticated client),
U otherwise. A bounce for a B message goes to its sender; a bounce for a U
or R message, or for one we have no record of, is held, never sent to the
unverified sender.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal

from fwdmilter import addr, replies
from fwdmilter.dsn import DSN
from fwdmilter.headers import AUTH_RESULTS_HEADER, TRACE_HEADER, authserv_id, trace_fields
from fwdmilter.headers import ptext as _ptext
from fwdmilter.replies import Reply
from fwdmilter.store.base import Forward, HeldEntry, MessageRecord, RcptInfo
from srs import (
    SRS,
    AddressError,
    BadHash,
    Expired,
    Malformed,
    NotSRS,
    SRSAddress,
    ascii_domain,
    looks_like_srs,
)

__all__ = [
    "Settings",
    "SPFOutcome",
    "MailDecision",
    "RcptKind",
    "RcptDecision",
    "Transaction",
    "EomDecision",
    "TRACE_HEADER",
    "AUTH_RESULTS_HEADER",
    "is_trusted",
    "decide_mail",
    "classify_rcpt",
    "decide_rcpt_srs",
    "decide_rcpt_forwarding",
    "decide_eom",
    "trace_ids",
    "count_trace",
    "authserv_id",
]

State = Literal["B", "U"]
_SPF_REPLIES: Final[Mapping[str, Reply]] = {
    "fail": replies.SPF_FAIL,
    "softfail": replies.SPF_SOFTFAIL,
    "neutral": replies.SPF_NEUTRAL,
    "none": replies.SPF_NONE,
    "permerror": replies.SPF_PERMERROR,
    "temperror": replies.SPF_TEMPERROR,
}


@dataclass(frozen=True, slots=True)
class Settings:
    """What the decisions depend on, from the configuration."""

    srs: SRS
    hostname: str
    forwarding_domains: frozenset[str]
    spf_actions: Mapping[str, str]
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    loop_limit: int = 2
    rewrite: Literal["always", "when-needed"] = "always"
    max_age_days: int = 21
    instance: str = ""

    @property
    def srs_domain(self) -> str:
        return self.srs.domain.lower()

    @property
    def own_domains(self) -> frozenset[str]:
        """Domains whose senders are never rewritten: ours."""
        return self.forwarding_domains | {self.srs_domain}


def is_trusted(
    ip: str | None, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """True if the client address ``ip`` lies in one of ``networks``."""
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


# -- MAIL FROM -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SPFOutcome:
    """The result of an SPF check (RFC 7208 section 2.6).

    ``identity`` is "mailfrom" or "helo" (for the null sender, section 2.3);
    ``explanation`` is pyspf's text, the domain's exp= where it has one.
    """

    result: str
    identity: str
    domain: str
    explanation: str = ""


@dataclass(frozen=True, slots=True)
class MailDecision:
    """What MAIL FROM decided."""

    reply: Reply | None
    state: State
    sender: str  # bare, "" for the null sender
    srs_sender: str | None  # the SRS address to send with, if rewritten
    auth_results: str  # the Authentication-Results header value
    spf: SPFOutcome | None


def _auth_results(
    s: Settings, spf: SPFOutcome | None, sender: str, helo: str, auth_user: str, trusted_ip: str
) -> str:
    if auth_user:
        return f"{s.hostname}; auth=pass smtp.auth={_ptext(auth_user)}"
    if spf is None:
        return f"{s.hostname}; none (SPF not checked: trusted client {trusted_ip})"
    prop = (
        f"smtp.mailfrom={_ptext(sender)}"
        if spf.identity == "mailfrom"
        else f"smtp.helo={_ptext(helo)}"
    )
    return f"{s.hostname}; spf={spf.result} {prop}"


def decide_mail(
    s: Settings,
    sender: str,
    helo: str,
    spf: SPFOutcome | None,
    *,
    auth_user: str = "",
    client_ip: str = "",
    now: float,
) -> MailDecision:
    """MAIL FROM: act on the SPF outcome; work out the message's state.

    ``spf`` is None when the check was skipped (trusted or authenticated
    client). ``sender`` is bare ("" for the null sender).
    """
    null = sender == ""
    auth = _auth_results(s, spf, sender, helo, auth_user, client_ip)
    if spf is not None:
        action = s.spf_actions.get(spf.result, "accept") if spf.result != "pass" else "accept"
        if action in ("reject", "tempfail"):
            base = _SPF_REPLIES[spf.result]
            if action == "tempfail" and base.permanent:
                base = replies.SPF_TEMPERROR.with_text(base.text + "; try again later")
            elif action == "reject" and not base.permanent:
                base = replies.SPF_PERMERROR.with_text(base.text.replace("; try again later", ""))
            text = base.text
            who = f"{spf.domain}" if spf.domain else "the sender"
            text = f"{text} ({who}: {spf.explanation})" if spf.explanation else text
            return MailDecision(base.with_text(text), "U", sender, None, auth, spf)
    verified = not null and (bool(auth_user) or (spf is not None and spf.result == "pass"))
    state: State = "B" if verified else "U"
    srs_sender: str | None = None
    if not null and addr.domain_of(sender) not in s.own_domains:
        try:
            srs_sender = s.srs.forward(sender, now=now)
        except AddressError:
            return MailDecision(replies.BAD_ADDRESS, state, sender, None, auth, spf)
    return MailDecision(None, state, sender, srs_sender, auth, spf)


# -- RCPT TO -------------------------------------------------------------------


class RcptKind(Enum):
    """Which lookups a recipient needs."""

    SRS = "srs"  # a bounce address at our SRS domain: verify its tag
    FORWARDING = "forwarding"  # in a forwarding domain: look it up in the table
    OTHER = "other"  # not ours to decide: pass untouched


def classify_rcpt(s: Settings, rcpt: str) -> RcptKind:
    """``rcpt`` is bare."""
    domain = addr.domain_of(rcpt)
    if domain == s.srs_domain and looks_like_srs(rcpt):
        return RcptKind.SRS
    if domain in s.forwarding_domains:
        return RcptKind.FORWARDING
    return RcptKind.OTHER


@dataclass(frozen=True, slots=True)
class RcptDecision:
    """What RCPT TO decided for one recipient.

    ``action``: "forward" (replace by the forward's target), "reverse"
    (replace by the SRS address's reversal), "hold" (null-sender mail this
    recipient wants held), "pass" (not ours: leave it), "refuse" (``reply``).
    """

    rcpt: str  # as the client gave it (for delrcpt)
    action: Literal["forward", "reverse", "hold", "pass", "refuse"]
    reply: Reply | None = None
    forward: Forward | None = None
    srs: SRSAddress | None = None
    params: tuple[str, ...] = ()


def decide_rcpt_srs(
    s: Settings, rcpt: str, bare: str, params: Sequence[str], now: float
) -> RcptDecision:
    """A recipient at our SRS domain: only a valid, unexpired tag is accepted.

    A forged or expired one is refused now, never accepted and bounced
    later: the forwarder is not an open bounce relay.
    """
    try:
        parsed = s.srs.parse(bare, now=now)
    except BadHash:
        return RcptDecision(rcpt, "refuse", replies.SRS_FORGED)
    except Expired:
        return RcptDecision(rcpt, "refuse", replies.SRS_EXPIRED)
    except (Malformed, NotSRS):
        return RcptDecision(rcpt, "refuse", replies.SRS_MALFORMED)
    return RcptDecision(rcpt, "reverse", srs=parsed, params=tuple(params))


def decide_rcpt_forwarding(
    s: Settings, rcpt: str, info: RcptInfo, mail: MailDecision, params: Sequence[str]
) -> RcptDecision:
    """A recipient in a forwarding domain, with its table entry and its
    target's held count."""
    fwd = info.forward
    if fwd is None:
        return RcptDecision(rcpt, "refuse", replies.UNKNOWN_RECIPIENT)
    if fwd.moved_to:
        reply = replies.MOVED_RECIPIENT
        return RcptDecision(
            rcpt, "refuse", reply.with_text(reply.text.format(moved_to=fwd.moved_to)), forward=fwd
        )
    if not fwd.active:
        return RcptDecision(rcpt, "refuse", replies.UNKNOWN_RECIPIENT, forward=fwd)
    if mail.sender == "" and fwd.null_sender == "hold":
        return RcptDecision(rcpt, "hold", forward=fwd, params=tuple(params))
    if mail.state == "U" and info.held > 0:
        return RcptDecision(rcpt, "refuse", replies.TARGET_HELD, forward=fwd)
    return RcptDecision(rcpt, "forward", forward=fwd, params=tuple(params))


# -- end of message ------------------------------------------------------------


def _trace_value(s: Settings, msg_id: str) -> str:
    return f"{s.srs_domain}; id={msg_id}; by={s.hostname}"


def trace_ids(s: Settings, values: Iterable[str]) -> list[str]:
    """The ids in trace header values that name this forwarder, newest first."""
    ids: list[str] = []
    for value in values:
        fields = trace_fields(value)
        if fields is not None and fields[0] == s.srs_domain:
            ids.append(fields[1])
    return ids


def count_trace(s: Settings, values: Iterable[str]) -> int:
    """How many trace headers name this forwarder (for loop detection)."""
    count = 0
    for value in values:
        fields = trace_fields(value)
        if fields is not None and fields[0] == s.srs_domain:
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class Transaction:
    """Everything known at end of message."""

    mail: MailDecision
    rcpts: tuple[RcptDecision, ...]  # accepted ones only, in RCPT order
    queue_id: str
    msg_id: str  # fresh id for this message's trace header and records
    now: float
    trace_values: tuple[str, ...] = ()  # our trace headers found in the message
    own_auth_results: tuple[int, ...] = ()  # 1-based indexes of A-R headers claiming our id
    #: For each SRS recipient's lower-cased bare address: its message records.
    records: Mapping[str, Sequence[MessageRecord]] = field(default_factory=dict)
    dsn: DSN | None = None
    dsn_error: str = ""  # why the message is not a DSN, if it was tried
    #: "when-needed" rewriting: the sender's SPF already permits us.
    sender_permits_us: bool = False


@dataclass(slots=True)
class EomDecision:
    """What end of message decided; the shell applies it in this order:
    store writes, then header and envelope changes, then the reply."""

    reply: Reply | None = None
    discard: bool = False
    quarantine: str = ""
    chgfrom: str | None = None
    delrcpt: list[str] = field(default_factory=list)
    addrcpt: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    #: Headers to insert at the top, in the order given.
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    #: (name, 1-based index) of headers to delete.
    del_headers: list[tuple[str, int]] = field(default_factory=list)
    records: list[MessageRecord] = field(default_factory=list)
    holds: list[HeldEntry] = field(default_factory=list)
    state_changes: list[tuple[str, str, str]] = field(default_factory=list)  # srs, record_id, state
    releases: list[tuple[str, str]] = field(default_factory=list)  # target, entry_id
    reholds: list[tuple[str, str, str]] = field(default_factory=list)  # target, entry_id, reason
    log: dict[str, str] = field(default_factory=dict)


def _rcpt_params(decision: RcptDecision) -> tuple[str, ...]:
    """ESMTP parameters for the replacement recipient: NOTIFY carries over,
    and ORCPT keeps naming the address the sender used (RFC 3461 section 4.2)."""
    # A parameter libmilter could not pass on (octets that are not UTF-8, a
    # control) is dropped rather than failing addrcpt on every retry.
    usable = [p for p in decision.params if addr.problem(p) is None]
    kept = [p for p in usable if p.upper().startswith("NOTIFY=")]
    orcpt = [p for p in usable if p.upper().startswith("ORCPT=")]
    if orcpt:
        kept += orcpt
    elif decision.action == "forward":
        bare = addr.strip_brackets(decision.rcpt)
        if bare.isascii() and "+" not in bare and "=" not in bare and " " not in bare:
            kept.append(f"ORCPT=rfc822;{bare}")
    return tuple(kept)


def _bracket(address: str) -> str:
    return f"<{address}>"


def decide_eom(s: Settings, tx: Transaction) -> EomDecision:
    """End of message: rewrite, record, reverse or hold."""
    d = EomDecision()
    d.log["state"] = tx.mail.state
    loops = count_trace(s, tx.trace_values)
    if loops > s.loop_limit:
        d.reply = replies.LOOP
        d.log["action"] = "reject-loop"
        d.log["loops"] = str(loops)
        return d

    # RFC 8601 section 5: remove Authentication-Results claiming to be ours.
    d.del_headers.extend(
        (AUTH_RESULTS_HEADER, i) for i in sorted(tx.own_auth_results, reverse=True)
    )
    d.add_headers.append((AUTH_RESULTS_HEADER, tx.mail.auth_results))

    forwards = [(r, r.forward) for r in tx.rcpts if r.action == "forward" and r.forward]
    reversals = [(r, r.srs) for r in tx.rcpts if r.action == "reverse" and r.srs]
    policy_holds = [(r, r.forward) for r in tx.rcpts if r.action == "hold" and r.forward]
    passed = [r for r in tx.rcpts if r.action == "pass"]

    if policy_holds:
        _hold_null_sender(s, tx, d, policy_holds)
        if d.quarantine:
            d.log["action"] = "hold-null-sender"
            return d

    keep: list[tuple[RcptDecision, SRSAddress]] = []  # reversals that go through
    drop: list[RcptDecision] = []  # reversals whose bounce is not delivered
    if reversals:
        _decide_bounces(s, tx, d, reversals, keep, drop)
        if d.quarantine:
            d.log["action"] = "hold"
            return d

    if not forwards and not keep and not passed:
        # Every recipient was a bounce we do not deliver (a delivery notice
        # for a requeued message, a delay notice for a U message).
        d.discard = True
        d.log["action"] = "discard"
        return d

    for r in drop:
        d.delrcpt.append(r.rcpt)
    for r, fwd in forwards:
        d.delrcpt.append(r.rcpt)
        d.addrcpt.append((_bracket(fwd.target), _rcpt_params(r)))
    for r, srs_addr in keep:
        d.delrcpt.append(r.rcpt)
        to = _sender_as_sent(srs_addr, tx.records.get(addr.key(r.rcpt), ()))
        d.addrcpt.append((_bracket(to), _rcpt_params(r)))

    if forwards or keep:
        d.add_headers.insert(0, (TRACE_HEADER, _trace_value(s, tx.msg_id)))
        sender = tx.mail.sender
        if tx.mail.srs_sender and not (s.rewrite == "when-needed" and tx.sender_permits_us):
            d.chgfrom = _bracket(tx.mail.srs_sender)
        if forwards and d.chgfrom is not None:
            srs_key = addr.key(tx.mail.srs_sender or "")
            for i, (r, fwd) in enumerate(forwards):
                d.records.append(
                    MessageRecord(
                        srs=srs_key,
                        record_id=f"{tx.msg_id}.{i}",
                        msg_id=tx.msg_id,
                        state=tx.mail.state,
                        sender=sender,
                        rcpt=addr.key(r.rcpt),
                        target=addr.key(fwd.target),
                        created=tx.now,
                        instance=s.instance,
                        queue_id=tx.queue_id,
                    )
                )
    d.log["action"] = "forward" if forwards else ("reverse" if keep else "pass")
    if d.chgfrom:
        d.log["srs"] = d.chgfrom
    return d


def _hold_null_sender(
    s: Settings, tx: Transaction, d: EomDecision, holds: Sequence[tuple[RcptDecision, Forward]]
) -> None:
    """Null-sender mail for recipients whose policy is "hold": keep it here
    (the loop-proof alternative to forwarding a bounce). Such entries are in
    state N: listed and expired like held bounces, but they do not mean the
    target is failing, so they do not defer U mail for it."""
    for r, fwd in holds:
        entry = HeldEntry(
            target=addr.key(fwd.target),
            entry_id=f"{s.instance}/{tx.queue_id}",
            state="N",
            sender="",
            rcpt=addr.key(r.rcpt),
            queue_id=tx.queue_id,
            host=s.instance,
            reason="null-sender mail held by the recipient's policy",
            held_at=tx.now,
            msg_id=tx.msg_id,
            contact=fwd.contact,
        )
        d.holds.append(entry)
    d.quarantine = "fwdmilter: null-sender mail held by the recipient's policy"


def _decide_bounces(
    s: Settings,
    tx: Transaction,
    d: EomDecision,
    reversals: Sequence[tuple[RcptDecision, SRSAddress]],
    keep: list[tuple[RcptDecision, SRSAddress]],
    drop: list[RcptDecision],
) -> None:
    """Mail to valid SRS addresses: deliver to a verified sender, or hold."""
    dsn = tx.dsn
    kind = dsn.kind if dsn is not None else "failure"
    ids = set(trace_ids(s, dsn.header_values(TRACE_HEADER) if dsn is not None else ()))
    hold_reasons: list[str] = []
    for r, srs_addr in reversals:
        key = addr.key(r.rcpt)
        records = list(tx.records.get(key, ()))
        relevant = _relevant_records(records, ids, dsn)
        if kind in ("success", "delay"):
            for rec in relevant:
                if rec.state == "R" and kind == "success":
                    d.state_changes.append((rec.srs, rec.record_id, "done"))
                    if rec.held_id:
                        d.releases.append((rec.target, rec.held_id))
            if relevant and all(rec.state == "B" for rec in relevant):
                keep.append((r, srs_addr))
            else:
                drop.append(r)
            continue
        # A failure, or a bounce that is not a DSN at all.
        if relevant and all(rec.state == "B" for rec in relevant):
            keep.append((r, srs_addr))
            continue
        reason = _failure_reason(dsn, tx.dsn_error)
        hold_reasons.append(reason)
        _hold_bounce(s, tx, d, r, srs_addr, relevant, dsn, reason)
    if hold_reasons:
        d.quarantine = "fwdmilter: bounce held, sender not verified: " + hold_reasons[0]
        d.log["reason"] = hold_reasons[0]


def _sender_as_sent(srs_addr: SRSAddress, records: Sequence[MessageRecord]) -> str:
    """Where a bounce goes: the sender as the message gave it, from our record,
    if that is the mailbox the SRS address names (an IDN domain travels as
    its A-label in the SRS address); else the SRS address's reversal."""
    senders = {rec.sender for rec in records if rec.sender}
    if len(senders) == 1:
        (sender,) = senders
        if ascii_domain(sender).lower() == srs_addr.reversed.lower():
            return sender
    return srs_addr.reversed


def _relevant_records(
    records: Sequence[MessageRecord], ids: set[str], dsn: DSN | None
) -> list[MessageRecord]:
    """The records a bounce is about: by trace id, else by the DSN's
    recipients, else all of the SRS address's."""
    if ids:
        by_id = [r for r in records if r.msg_id in ids]
        if by_id:
            records = by_id
    if dsn is not None:
        named = {a.lower() for a in dsn.recipient_addresses()}
        by_rcpt = [r for r in records if r.target in named or r.rcpt in named]
        if by_rcpt:
            return by_rcpt
    return list(records)


def _failure_reason(dsn: DSN | None, error: str) -> str:
    if dsn is None:
        return f"not a delivery status notification ({error})" if error else "bounce"
    failed = dsn.failed() or dsn.recipients
    if not failed:
        return "delivery failed"
    first = failed[0]
    status = first.status or "5.0.0"
    diagnostic = " ".join(first.diagnostic.split())
    # A diagnostic usually quotes the reply, status included: say it once.
    text = diagnostic if status in diagnostic else f"{status} {diagnostic}".strip()
    return text[:300]


def _hold_bounce(
    s: Settings,
    tx: Transaction,
    d: EomDecision,
    r: RcptDecision,
    srs_addr: SRSAddress,
    relevant: Sequence[MessageRecord],
    dsn: DSN | None,
    reason: str,
) -> None:
    entry_id = f"{s.instance}/{tx.queue_id}"
    requeued = [rec for rec in relevant if rec.state == "R" and rec.held_id]
    for rec in requeued:
        d.reholds.append((rec.target, rec.held_id, reason))
        d.state_changes.append((rec.srs, rec.record_id, "H"))
    fresh = [rec for rec in relevant if rec.state != "R"]
    if requeued and not fresh:
        return
    targets: dict[str, MessageRecord | None] = {}
    for rec in fresh:
        targets.setdefault(rec.target, rec)
    if not targets:
        # No record left: the DSN says whom it is about, or nobody knows.
        named = dsn.failed() if dsn is not None else ()
        for status in named or ():
            targets.setdefault(addr.key(status.final_recipient or status.original_recipient), None)
        if not targets:
            targets["unknown"] = None
    for target, held_rec in targets.items():
        entry = HeldEntry(
            target=target or "unknown",
            entry_id=entry_id,
            state="H",
            sender=srs_addr.reversed,
            rcpt=held_rec.rcpt if held_rec else "",
            queue_id=tx.queue_id,
            host=s.instance,
            reason=reason,
            held_at=tx.now,
            srs=addr.key(r.rcpt),
            msg_id=held_rec.msg_id if held_rec else "",
        )
        d.holds.append(entry)
        if held_rec is not None:
            d.state_changes.append((held_rec.srs, held_rec.record_id, "H"))
