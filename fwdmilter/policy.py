"""The milter's decisions, as pure functions: facts in, a decision out.

Nothing here touches a socket, a file or the clock; the milter shell
(:mod:`fwdmilter.milter`) gathers the facts (SPF result, store lookups, the
queue id, the time), calls these functions in transaction order, and applies
what they return. A transaction runs through four steps::

    decide_mail      MAIL FROM: the SPF result -> the state the message
                     will have (B or U) and its SRS sender (a reply only for
                     a sender nothing could store)
    classify_rcpt    RCPT TO: which lookups the recipient needs
    decide_rcpt_*    RCPT TO: the SPF verdict for this recipient (its own
                     action, its trusted forwarders, or the global action),
                     then the lookup's result -> reply or continue
    decide_rcpt_split  RCPT TO: a recipient whose copy needs another outcome
                     than the accepted ones -> 452 4.5.3 (a new transaction)
    decide_eom       end of message: the envelope and header changes, and
                     the store effects (records, held entries) as values

Message states (see docs/states.md): a message is B (bouncable) when its
MAIL FROM is non-null and verified (SPF pass, or an authenticated client),
U otherwise. What mail to an SRS address does is the state machine's
(:mod:`fwdmilter.machine`): a failure of a B message goes to its sender, a
failure of a U or R message, or of one we have no record of, is held, never
sent to the unverified sender; what is not a failure holds nothing.

The SPF verdict is enforced at RCPT TO, per recipient, as Postfix's own
``smtpd_delay_reject = yes`` does: a forwarding address may have its own
action for a result (``Forward.spf_actions``) and its own trusted
forwarders (``Forward.trusted``), which are known only once the recipient
is. SRS and other recipients get the global action (``[spf]``). The codes
and texts are those that MAIL FROM gave before (``replies.SPF_*``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal

from fwdmilter import addr, replies
from fwdmilter.classify import Classification, Kind
from fwdmilter.headers import AUTH_RESULTS_HEADER, TRACE_HEADER, authserv_id, trace_fields
from fwdmilter.headers import ptext as _ptext
from fwdmilter.machine import Effect, Hold, WriteRecords, decide_bounce, hold_null_sender
from fwdmilter.replies import Reply
from fwdmilter.states import Forward, HeldEntry, MessageRecord, RcptInfo
from srs import (
    ALIAS_HOST,
    SRS,
    AddressError,
    BadHash,
    Expired,
    Malformed,
    NotSRS,
    SRSAddress,
    alias_key,
    ascii_domain,
    local_part_too_long,
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
    "decide_rcpt_other",
    "spf_refusal",
    "spf_action",
    "rcpt_spf",
    "Trust",
    "match_forwarder",
    "forwarder_domain",
    "forwarder_domains",
    "helo_within",
    "rewrite_choice",
    "needs_sender_permits",
    "sender_rewrite",
    "auth_results_value",
    "RcptGroup",
    "rcpt_group",
    "decide_rcpt_split",
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
    #: The most held entries (targets) one bounce may create.
    max_entries_per_bounce: int = 10

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
    #: ``srs_sender`` is a short form: the original sender is only in the
    #: message records, so they must be written for it to be used.
    srs_short: bool = False


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
    """MAIL FROM: work out the message's state from the SPF outcome.

    ``spf`` is None when the check was skipped (trusted or authenticated
    client). ``sender`` is bare ("" for the null sender). The SPF verdict
    is not given here: each RCPT TO applies it for its recipient
    (:func:`rcpt_spf`), so that a recipient's own action or trusted
    forwarder can count. Mail whose SPF result is refused for every
    recipient gets its SRS sender too; it is never used.
    """
    null = sender == ""
    auth = _auth_results(s, spf, sender, helo, auth_user, client_ip)
    verified = not null and (bool(auth_user) or (spf is not None and spf.result == "pass"))
    state: State = "B" if verified else "U"
    srs_sender: str | None = None
    short = False
    if not null and addr.domain_of(sender) not in s.own_domains:
        try:
            srs_sender = s.srs.forward(sender, now=now)
        except AddressError:
            return MailDecision(replies.BAD_ADDRESS, state, sender, None, auth, spf)
        if local_part_too_long(srs_sender):
            # Receivers refuse a local part over 64 octets (RFC 5321 section
            # 4.5.3.1.1): send with a short form, signed and dated alike,
            # whose sender the message records keep.
            srs_sender = s.srs.forward(f"{alias_key(sender)}@{ALIAS_HOST}", now=now)
            short = True
    return MailDecision(None, state, sender, srs_sender, auth, spf, short)


def spf_refusal(spf: SPFOutcome, action: str) -> Reply | None:
    """The reply for ``action`` ("reject", "tempfail", "accept") on ``spf``'s
    result: 550 5.7.23/5.7.24 or 451 4.7.24 (RFC 7372 section 3.2) with the
    domain's explanation, or None to accept."""
    if spf.result == "pass" or action not in ("reject", "tempfail"):
        return None
    base = _SPF_REPLIES.get(spf.result, replies.SPF_PERMERROR)
    if action == "tempfail" and base.permanent:
        base = replies.SPF_TEMPERROR.with_text(base.text + "; try again later")
    elif action == "reject" and not base.permanent:
        base = replies.SPF_PERMERROR.with_text(base.text.replace("; try again later", ""))
    text = base.text
    who = f"{spf.domain}" if spf.domain else "the sender"
    text = f"{text} ({who}: {spf.explanation})" if spf.explanation else text
    return base.with_text(text)


# -- RCPT TO: the SPF verdict per recipient ----------------------------------------

ActionSource = Literal["recipient", "global"]


def spf_action(s: Settings, spf: SPFOutcome, forward: Forward | None) -> tuple[str, ActionSource]:
    """The action for ``spf``'s result and where it comes from: the
    recipient's own (``Forward.spf_actions``) or the global ``[spf]`` one.
    "pass" is always accepted."""
    if spf.result == "pass":
        return "accept", "global"
    own = forward.spf_action(spf.result) if forward is not None else ""
    if own:
        return own, "recipient"
    return s.spf_actions.get(spf.result, "accept"), "global"


def _forwarder_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None


def forwarder_domain(entry: str) -> str:
    """A trusted forwarder entry that is a domain, in the form checked
    (lower case, no final dot); "" for a network."""
    if _forwarder_network(entry) is not None:
        return ""
    return entry.strip().lower().rstrip(".")


def forwarder_domains(entries: Iterable[str]) -> tuple[str, ...]:
    """The domains among a recipient's trusted forwarders, in order: the
    ones the shell must check through DNS (:func:`match_forwarder`)."""
    out: list[str] = []
    for entry in entries:
        domain = forwarder_domain(entry)
        if domain and domain not in out:
            out.append(domain)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Trust:
    """Whether the client is one of a recipient's trusted forwarders.

    ``entry`` is the first entry of ``Forward.trusted`` the client matched
    ("" for none); ``unsure`` is True when no entry matched but a domain's
    check could not be completed (DNS temperror): the client may be that
    forwarder, so a refusal must be temporary.
    """

    entry: str = ""
    unsure: bool = False


def match_forwarder(
    entries: Iterable[str], client_ip: str, domain_results: Mapping[str, str]
) -> Trust:
    """Which trusted forwarder entry the client at ``client_ip`` is.

    A network matches the client address as :func:`is_trusted` does; a
    domain matches when ``domain_results`` (from the shell: the SPF result
    of check_host(client, domain) with the identity postmaster@domain, or
    of the HELO identity when the HELO name is that domain or under it, RFC
    7208 section 2.4; "pass" if either passes) says "pass". A domain
    missing from ``domain_results`` was not checked and does not match.
    """
    unsure = False
    for entry in entries:
        net = _forwarder_network(entry)
        if net is not None:
            if is_trusted(client_ip, (net,)):
                return Trust(entry)
            continue
        result = domain_results.get(forwarder_domain(entry), "")
        if result == "pass":
            return Trust(entry)
        unsure = unsure or result == "temperror"
    return Trust(unsure=unsure)


def helo_within(helo: str, domain: str) -> bool:
    """True if the HELO name is ``domain`` or a name under it."""
    name = helo.strip().lower().rstrip(".")
    domain = domain.lower().rstrip(".")
    return bool(domain) and (name == domain or name.endswith("." + domain))


def rcpt_spf(
    s: Settings, mail: MailDecision, forward: Forward | None, trust: Trust | None = None
) -> tuple[Reply | None, str]:
    """The SPF verdict for one recipient: (refusal or None, note).

    The recipient's own action for the result, else the global one; none
    at all when the client is one of the recipient's trusted forwarders
    (``trust``, from :func:`match_forwarder`). ``note`` says why a result
    that the global action refuses was let in for this recipient, for the
    Authentication-Results comment (RFC 8601 section 2.3); "" otherwise.
    A refusal while a trusted forwarder's check could not complete is the
    temporary SPF_TEMPERROR: with DNS back, the forwarder may be known.
    """
    spf = mail.spf
    if spf is None or spf.result == "pass":
        return None, ""
    action, source = spf_action(s, spf, forward)
    refusal = spf_refusal(spf, action)
    if refusal is not None:
        if trust is not None and trust.entry:
            return None, f"not enforced: trusted forwarder {trust.entry} of a recipient"
        if trust is not None and trust.unsure and refusal.permanent:
            return replies.SPF_TEMPERROR, ""
        return refusal, ""
    if source == "recipient" and spf_refusal(spf, s.spf_actions.get(spf.result, "accept")):
        return None, f"not enforced: a recipient's own policy accepts spf={spf.result}"
    return None, ""


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

    ``action``: "forward" (replace by every target of the forward), "reverse"
    (replace by the SRS address's reversal), "hold" (null-sender mail this
    recipient wants held), "pass" (not ours: leave it), "refuse" (``reply``).

    ``sender_rewrite`` is the envelope sender a forwarded copy needs: "srs"
    (the SRS sender), "keep" (the sender as it came), or "" (not decided
    here: end of message applies the global srs.rewrite). ``spf_note``
    says why this recipient took mail whose SPF result the global action
    refuses (its trusted forwarder, its own action).
    """

    rcpt: str  # as the client gave it (for delrcpt)
    action: Literal["forward", "reverse", "hold", "pass", "refuse"]
    reply: Reply | None = None
    forward: Forward | None = None
    srs: SRSAddress | None = None
    params: tuple[str, ...] = ()
    sender_rewrite: Literal["", "srs", "keep"] = ""
    spf_note: str = ""


def decide_rcpt_other(
    s: Settings, rcpt: str, mail: MailDecision, params: Sequence[str] = ()
) -> RcptDecision:
    """A recipient that is not ours to decide: passed untouched, once the
    global SPF verdict lets the mail in."""
    refusal, _ = rcpt_spf(s, mail, None)
    if refusal is not None:
        return RcptDecision(rcpt, "refuse", refusal)
    return RcptDecision(rcpt, "pass", params=tuple(params))


def decide_rcpt_srs(
    s: Settings,
    rcpt: str,
    bare: str,
    params: Sequence[str],
    now: float,
    mail: MailDecision | None = None,
) -> RcptDecision:
    """A recipient at our SRS domain: only a valid, unexpired tag is accepted.

    A forged or expired one is refused now, never accepted and bounced
    later: the forwarder is not an open bounce relay. With ``mail``, the
    global SPF verdict comes first.
    """
    if mail is not None:
        refusal, _ = rcpt_spf(s, mail, None)
        if refusal is not None:
            return RcptDecision(rcpt, "refuse", refusal)
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
    s: Settings,
    rcpt: str,
    info: RcptInfo,
    mail: MailDecision,
    params: Sequence[str],
    now: float | None = None,
    *,
    trust: Trust | None = None,
    sender_permits_us: bool = False,
) -> RcptDecision:
    """A recipient in a forwarding domain, with its table entry and its
    target's held count. ``now`` decides whether a pending target has
    expired (None: a pending target counts whatever its age).

    The SPF verdict comes first: the recipient's own action or the global
    one, none if the client is one of its trusted forwarders (``trust``,
    from :func:`match_forwarder`). ``sender_permits_us`` (the sender's SPF
    already passes this host's outbound addresses) is needed only where
    :func:`needs_sender_permits` says so."""
    fwd = info.forward
    refusal, note = rcpt_spf(s, mail, fwd, trust)
    if refusal is not None:
        return RcptDecision(rcpt, "refuse", refusal, forward=fwd)
    if fwd is None:
        return RcptDecision(rcpt, "refuse", replies.UNKNOWN_RECIPIENT)
    if fwd.moved_to:
        reply = replies.MOVED_RECIPIENT
        return RcptDecision(
            rcpt, "refuse", reply.with_text(reply.text.format(moved_to=fwd.moved_to)), forward=fwd
        )
    if not fwd.active:
        # A first target that its owner has not confirmed yet: the sender
        # retries while the confirmation link is valid (docs/web.md).
        pending = fwd.pending_at(now) if now is not None else fwd.pending
        if pending:
            return RcptDecision(rcpt, "refuse", replies.TARGET_PENDING, forward=fwd)
        if fwd.pending:
            return RcptDecision(rcpt, "refuse", replies.TARGET_UNCONFIRMED, forward=fwd)
        return RcptDecision(rcpt, "refuse", replies.UNKNOWN_RECIPIENT, forward=fwd)
    if mail.sender == "" and fwd.null_sender == "hold":
        return RcptDecision(rcpt, "hold", forward=fwd, params=tuple(params), spf_note=note)
    if mail.state == "U" and info.held > 0:
        return RcptDecision(rcpt, "refuse", replies.TARGET_HELD, forward=fwd)
    return RcptDecision(
        rcpt,
        "forward",
        forward=fwd,
        params=tuple(params),
        sender_rewrite=sender_rewrite(s, mail, fwd, sender_permits_us),
        spf_note=note,
    )


# -- RCPT TO: the envelope sender per recipient --------------------------------------

RewriteChoice = Literal["srs", "when-needed", "none"]


def rewrite_choice(s: Settings, forward: Forward | None) -> tuple[RewriteChoice, ActionSource]:
    """A recipient's sender rewrite and where it comes from: its own
    (``Forward.rewrite``) or the global srs.rewrite ("always" is "srs")."""
    own = forward.rewrite if forward is not None else ""
    if own in ("srs", "when-needed", "none"):
        return own, "recipient"
    return ("when-needed" if s.rewrite == "when-needed" else "srs"), "global"


def needs_sender_permits(s: Settings, mail: MailDecision, forward: Forward | None) -> bool:
    """True if the recipient's envelope sender depends on whether the
    sender's SPF passes this host's outbound addresses (a DNS check the
    shell makes once per transaction)."""
    if mail.state != "B" or not mail.srs_sender:
        return False
    return rewrite_choice(s, forward)[0] == "when-needed"


def sender_rewrite(
    s: Settings, mail: MailDecision, forward: Forward | None, sender_permits_us: bool = False
) -> Literal["srs", "keep"]:
    """The envelope sender a recipient's forwarded copy goes out with.

    U mail is always rewritten, whatever the recipient chose: its bounce
    must come back here to be held, never reach an unverified sender.
    Verified (B) mail: "srs" rewrites; "none" keeps the sender (for targets
    that whitelisted this forwarder); "when-needed" keeps it when its SPF
    already permits our outbound addresses (without srs.outbound_ips the
    shell cannot know, and it is rewritten). Null senders and our own
    domains' senders have nothing to rewrite: "keep".
    """
    if not mail.srs_sender:
        return "keep"
    if mail.state != "B":
        return "srs"
    choice = rewrite_choice(s, forward)[0]
    if choice == "none" or (choice == "when-needed" and sender_permits_us):
        return "keep"
    return "srs"


# -- RCPT TO: one outcome per transaction ------------------------------------------

RcptGroup = Literal["bounce", "kept", "relayed"]


def rcpt_group(decision: RcptDecision) -> RcptGroup:
    """Which end-of-message outcome a recipient's copy needs: "bounce" (mail
    to an SRS address: delivered, discarded, refused or held as a whole),
    "kept" (null-sender mail the recipient's policy keeps in the hold
    queue), "relayed" (forwarded, or passed untouched)."""
    if decision.action == "reverse":
        return "bounce"
    if decision.action == "hold":
        return "kept"
    return "relayed"


def decide_rcpt_split(accepted: Sequence[RcptDecision], decision: RcptDecision) -> RcptDecision:
    """Never let one recipient's outcome take another's copy: the message is
    quarantined, discarded or refused as a whole, so a transaction carries
    recipients of one group only, and a bounce to an SRS address travels
    alone; forwarded copies share one envelope sender (a recipient that
    keeps the sender does not travel with one whose copy is rewritten).
    A recipient that does not fit is answered 452 4.5.3: RFC 5321
    section 3.5.3 has the client deliver the accepted recipients and send
    this one in a new transaction."""
    if not accepted:
        return decision
    group = rcpt_group(decision)
    if group == "bounce" or group != rcpt_group(accepted[0]) or _other_sender(accepted, decision):
        return RcptDecision(
            decision.rcpt, "refuse", replies.SPLIT_TRANSACTION, forward=decision.forward
        )
    return decision


def _other_sender(accepted: Sequence[RcptDecision], decision: RcptDecision) -> bool:
    """True if ``decision``'s copy needs another envelope sender than the
    forwarded copies accepted before it: the sender is one per message
    (chgfrom), so it travels in a transaction of its own."""
    if decision.action != "forward" or not decision.sender_rewrite:
        return False
    return any(
        r.action == "forward" and r.sender_rewrite and r.sender_rewrite != decision.sender_rewrite
        for r in accepted
    )


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
    return len(trace_ids(s, values))


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
    #: For each SRS recipient's address in normal form: its message records.
    records: Mapping[str, Sequence[MessageRecord]] = field(default_factory=dict)
    #: What the mail to the SRS recipient is (fwdmilter.classify), if it has one.
    bounce: Classification | None = None


@dataclass(frozen=True, slots=True)
class EomDecision:
    """What end of message decided. The shell applies it in this order:
    the store effects (in machine.EFFECT_ORDER), then header and envelope
    changes and the quarantine, then the reply; alerts go out last, once
    all of that succeeded."""

    reply: Reply | None = None
    discard: bool = False
    quarantine: str = ""
    chgfrom: str | None = None
    delrcpt: tuple[str, ...] = ()
    addrcpt: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Headers to insert at the top, in the order given.
    add_headers: tuple[tuple[str, str], ...] = ()
    #: (name, 1-based index) of headers to delete.
    del_headers: tuple[tuple[str, int], ...] = ()
    effects: tuple[Effect, ...] = ()
    #: key, value pairs for the decision's log line, in order.
    log: tuple[tuple[str, str], ...] = ()

    @property
    def action(self) -> str:
        return dict(self.log).get("action", "accept")

    @property
    def holds(self) -> tuple[HeldEntry, ...]:
        return tuple(e.entry for e in self.effects if isinstance(e, Hold))

    @property
    def records(self) -> tuple[MessageRecord, ...]:
        return tuple(r for e in self.effects if isinstance(e, WriteRecords) for r in e.records)


def _comment(text: str) -> str:
    """``text`` as an RFC 5322 comment: a backslash before each character a
    comment cannot hold as it is (section 3.2.2)."""
    return "(" + "".join("\\" + c if c in "()\\" else c for c in text) + ")"


def auth_results_value(tx: Transaction) -> str:
    """The Authentication-Results value for the message: MAIL FROM's, with
    a comment for each recipient that took mail its SPF result would have
    had refused (RFC 8601 section 2.3 allows comments after a result's
    properties): ``spf=fail smtp.mailfrom=a@example.org (not enforced:
    trusted forwarder alumni.example of a recipient)``. The comments name
    no recipient, and each reason comes once: every copy of the message
    carries the header, and naming one recipient would tell the others
    (a Bcc'd one, say) who else got it."""
    notes = list(dict.fromkeys(r.spf_note for r in tx.rcpts if r.spf_note))
    if not notes:
        return tx.mail.auth_results
    return " ".join([tx.mail.auth_results, *(_comment(n) for n in notes)])


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
    """End of message: rewrite, record, reverse, discard, refuse or hold."""
    log: list[tuple[str, str]] = [("state", tx.mail.state)]
    loops = count_trace(s, tx.trace_values)
    if loops > s.loop_limit:
        log += [("action", "reject-loop"), ("loops", str(loops))]
        return EomDecision(reply=replies.LOOP, log=tuple(log))

    # RFC 8601 section 5: remove Authentication-Results claiming to be ours.
    del_headers = tuple((AUTH_RESULTS_HEADER, i) for i in sorted(tx.own_auth_results, reverse=True))
    auth = ((AUTH_RESULTS_HEADER, auth_results_value(tx)),)

    forwards = [(r, r.forward) for r in tx.rcpts if r.action == "forward" and r.forward]
    reversals = [(r, r.srs) for r in tx.rcpts if r.action == "reverse" and r.srs]
    kept = [(r, r.forward) for r in tx.rcpts if r.action == "hold" and r.forward]

    if kept:
        # One N entry per target: the entry id names the held message, so a
        # target two recipients share has one entry (the first recipient's).
        holds: dict[str, tuple[str, str, str]] = {}
        for r, f in kept:
            for target in f.targets:
                holds.setdefault(addr.key(target), (addr.key(r.rcpt), addr.key(target), f.contact))
        effects = hold_null_sender(
            holds.values(),
            instance=s.instance,
            queue_id=tx.queue_id,
            msg_id=tx.msg_id,
            now=tx.now,
        )
        log += [("action", "hold-null-sender"), ("to", ",".join(map(_bracket, holds)))]
        return EomDecision(
            quarantine="fwdmilter: null-sender mail held by the recipient's policy",
            add_headers=auth,
            del_headers=del_headers,
            effects=effects,
            log=tuple(log),
        )

    if reversals:
        return _decide_reversal(s, tx, reversals[0], auth, del_headers, log)

    delrcpt, addrcpt, pairs = _expand(forwards)
    if not forwards:
        log.append(("action", "pass"))
        return EomDecision(add_headers=auth, del_headers=del_headers, log=tuple(log))

    chgfrom: str | None = None
    # "when-needed" leaves a verified (B) sender as it is when its SPF
    # permits us; a U message is always rewritten, so that its bounce comes
    # back here to be held instead of reaching an unverified sender. RCPT
    # TO decided it per recipient (sender_rewrite, with the recipient's own
    # choice or the global srs.rewrite; one value per transaction,
    # decide_rcpt_split).
    skip_srs = all(r.sender_rewrite == "keep" for r, _ in forwards)
    if tx.mail.srs_sender and not skip_srs:
        chgfrom = _bracket(tx.mail.srs_sender)
    effects_out: tuple[Effect, ...] = ()
    if chgfrom is not None:
        srs_key = addr.key(tx.mail.srs_sender or "")
        effects_out = (
            WriteRecords(
                tuple(
                    MessageRecord(
                        srs=srs_key,
                        record_id=f"{tx.msg_id}.{i}",
                        msg_id=tx.msg_id,
                        state=tx.mail.state,
                        sender=tx.mail.sender,
                        rcpt=rcpt,
                        target=target,
                        created=tx.now,
                        instance=s.instance,
                        queue_id=tx.queue_id,
                    )
                    for i, (rcpt, target) in enumerate(pairs)
                )
            ),
        )
        log.append(("srs", chgfrom))
    log += [("action", "forward"), ("trace", tx.msg_id)]
    return EomDecision(
        chgfrom=chgfrom,
        delrcpt=tuple(delrcpt),
        addrcpt=tuple(addrcpt),
        add_headers=((TRACE_HEADER, _trace_value(s, tx.msg_id)), *auth),
        del_headers=del_headers,
        effects=effects_out,
        log=tuple(log),
    )


def _expand(
    forwards: Sequence[tuple[RcptDecision, Forward]],
) -> tuple[list[str], list[tuple[str, tuple[str, ...]]], list[tuple[str, str]]]:
    """Each forwarded recipient is replaced by every target of its forward
    (1-1 or 1-many): the recipients to delete, the targets to add with their
    ESMTP parameters, and the (recipient, target) pairs that get a message
    record, all in normal form but the first two. A target that two
    recipients of the transaction share is added once, with the first one's
    parameters (the MTA would deliver it twice otherwise); each pair still
    has its record, so that a bounce finds whichever recipient it is for."""
    delrcpt: list[str] = []
    added: dict[str, tuple[str, tuple[str, ...]]] = {}
    pairs: dict[tuple[str, str], None] = {}
    for r, fwd in forwards:
        delrcpt.append(r.rcpt)
        params = _rcpt_params(r)
        for target in fwd.targets:
            target_key = addr.key(target)
            added.setdefault(target_key, (_bracket(target), params))
            pairs.setdefault((addr.key(r.rcpt), target_key), None)
    return delrcpt, list(added.values()), list(pairs)


def _decide_reversal(
    s: Settings,
    tx: Transaction,
    reversal: tuple[RcptDecision, SRSAddress],
    auth: tuple[tuple[str, str], ...],
    del_headers: tuple[tuple[str, int], ...],
    log: list[tuple[str, str]],
) -> EomDecision:
    """Mail to one valid SRS address (it travels alone: decide_rcpt_split)."""
    r, srs_addr = reversal
    key = addr.key(r.rcpt)
    records = tx.records.get(key, ())
    bounce = tx.bounce or Classification(Kind.OTHER, "not read")
    original = _sender_as_sent(srs_addr, records)
    decision = decide_bounce(
        kind=bounce.kind,
        reason=bounce.reason,
        srs=key,
        original_sender=original,
        records=records,
        trace_ids=trace_ids(s, bounce.trace_values),
        instance=s.instance,
        queue_id=tx.queue_id,
        now=tx.now,
        max_entries=s.max_entries_per_bounce,
        failed=bounce.failed,
        reasons=bounce.failed_reasons,
    )
    # "reverse" in the log, as before the kinds: admins grep for it.
    action = "reverse" if decision.action == "deliver" else decision.action
    log += [("kind", bounce.kind.value), ("action", action)]
    if decision.msg_ids:
        log.append(("trace", ",".join(decision.msg_ids)))
    if decision.action != "deliver":
        log.append(("reason", decision.reason))
    if decision.capped:
        log.append(("capped", str(decision.capped)))
    quarantine = ""
    if decision.action == "reject":
        return EomDecision(reply=decision.reply, effects=decision.effects, log=tuple(log))
    delrcpt: tuple[str, ...] = ()
    addrcpt: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if decision.action == "hold":
        quarantine = "fwdmilter: bounce held, sender not verified: " + decision.reason
    elif decision.action == "deliver":
        delrcpt, addrcpt = (r.rcpt,), ((_bracket(original), _rcpt_params(r)),)
        # Our trace header on the bounce too: a bounce loop stops at loop_limit.
        auth = ((TRACE_HEADER, _trace_value(s, tx.msg_id)), *auth)
    return EomDecision(
        discard=decision.action == "discard",
        quarantine=quarantine,
        delrcpt=delrcpt,
        addrcpt=addrcpt,
        add_headers=auth,
        del_headers=del_headers,
        effects=decision.effects,
        log=tuple(log),
    )


def _sender_as_sent(srs_addr: SRSAddress, records: Sequence[MessageRecord]) -> str:
    """Where a bounce goes: the sender as the message gave it, from our record,
    if that is the mailbox the SRS address names (an IDN domain travels as
    its A-label in the SRS address); else the SRS address's reversal."""
    senders = {rec.sender for rec in records if rec.sender}
    if srs_addr.host == ALIAS_HOST:
        # A short form: the records hold the sender its key stands for.
        key = srs_addr.user.upper()
        for sender in sorted(senders):
            if alias_key(sender) == key:
                return sender
        return srs_addr.reversed  # not reached: deliver needs its records
    if len(senders) == 1:
        (sender,) = senders
        if ascii_domain(sender).lower() == srs_addr.reversed.lower():
            return sender
    return srs_addr.reversed
