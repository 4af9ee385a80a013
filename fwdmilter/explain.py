"""What the milter would answer, stage by stage, and why: ``fwdctl explain``.

The same decisions the milter makes (:mod:`fwdmilter.policy`), on the same
facts: the client address and HELO name given, a real SPF check through the
configured DNS, the live forwarding table and held counts from the store.
Nothing is sent and nothing is written; the message's own content (trace
headers, a bounce's report) is not known here, so end of message is told as
it goes for a plain message.

The SPF verdict is told at each RCPT TO, as the milter gives it there: the
action applied and where it comes from (the recipient's own, or the global
``[spf]``), the recipient's trusted forwarder the client is, and the
envelope sender the recipient's copy goes out with (its own rewrite, or the
global srs.rewrite).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from fwdmilter import addr, policy
from fwdmilter.replies import Reply
from fwdmilter.spf import SPFChecker
from fwdmilter.states import Forward
from fwdmilter.store.base import Store

__all__ = ["Stage", "explain"]


@dataclass(frozen=True, slots=True)
class Stage:
    """One SMTP stage: what was asked, what the milter answers, and why."""

    stage: str  # "mail", "rcpt", "eom"
    command: str  # "MAIL FROM:<...>", "RCPT TO:<...>", "end of message"
    reply: str  # "250" (continue), or the milter's reply
    why: tuple[str, ...] = field(default=())


@dataclass
class _Facts:
    """What RCPT TO may ask DNS about, once per explanation."""

    spf: SPFChecker
    client: str
    helo: str
    outbound_ips: tuple[str, ...]
    permits: bool | None = None
    forwarders: dict[tuple[str, str], str] = field(default_factory=dict)

    def sender_permits_us(self, mail: policy.MailDecision) -> bool:
        if self.permits is None:
            self.permits = self.spf.sender_permits(mail, self.outbound_ips)
        return self.permits


def _reply(reply: Reply | None) -> str:
    return "250 (accepted)" if reply is None else str(reply)


def explain(
    settings: policy.Settings,
    store: Store,
    spf: SPFChecker,
    *,
    client: str,
    helo: str,
    sender: str,
    rcpts: list[str],
    auth_user: str = "",
    now: float | None = None,
    outbound_ips: Sequence[str] = (),
) -> list[Stage]:
    """The stages of one transaction from ``client`` saying ``helo``.
    ``outbound_ips`` (srs.outbound_ips) tell "when-needed" rewriting
    whether the sender's SPF already permits this host."""
    now = time.time() if now is None else now
    mail, stage = _mail(settings, spf, client, helo, addr.strip_brackets(sender), auth_user, now)
    stages = [stage]
    if mail.reply is not None:
        return stages
    facts = _Facts(spf, client, helo, tuple(outbound_ips))
    accepted: list[policy.RcptDecision] = []
    for rcpt in rcpts:
        decision, stage = _rcpt(
            settings, store, mail, addr.strip_brackets(rcpt), accepted, now, facts
        )
        if decision.reply is None:
            accepted.append(decision)
        stages.append(stage)
    if accepted:
        stages.append(_eom(settings, mail, accepted, now))
    return stages


def _mail(
    settings: policy.Settings,
    spf: SPFChecker,
    client: str,
    helo: str,
    sender: str,
    auth_user: str,
    now: float,
) -> tuple[policy.MailDecision, Stage]:
    why: list[str] = []
    outcome: policy.SPFOutcome | None = None
    if auth_user:
        why.append(f"client authenticated as {auth_user}: SPF not checked")
    elif policy.is_trusted(client, settings.trusted):
        why.append(f"client {client} is in trusted.networks: SPF not checked")
    else:
        outcome = spf.check(client, sender, helo)
        why.append(
            f"SPF {outcome.result} for the {outcome.identity} identity {outcome.domain}"
            + (f": {outcome.explanation}" if outcome.explanation else "")
        )
    mail = policy.decide_mail(
        settings, sender, helo, outcome, auth_user=auth_user, client_ip=client, now=now
    )
    if outcome is not None and outcome.result != "pass":
        action = settings.spf_actions.get(outcome.result, "accept")
        why.append(
            f"SPF {outcome.result}: the global action is {action} (spf.{outcome.result});"
            " each RCPT TO applies it, or the recipient's own"
        )
    why.append(f"message state {mail.state}" + (" (verified sender)" if mail.state == "B" else ""))
    if mail.srs_sender:
        form = "short form" if mail.srs_short else "SRS address"
        why.append(f"the envelope sender becomes the {form} {mail.srs_sender}")
    elif sender:
        why.append("the envelope sender is kept (a domain of this host)")
    else:
        why.append("the null sender is never rewritten")
    why.append(f"Authentication-Results: {mail.auth_results}")
    return mail, Stage("mail", f"MAIL FROM:<{sender}>", _reply(mail.reply), tuple(why))


def _rcpt(
    settings: policy.Settings,
    store: Store,
    mail: policy.MailDecision,
    bare: str,
    accepted: list[policy.RcptDecision],
    now: float,
    facts: _Facts,
) -> tuple[policy.RcptDecision, Stage]:
    kind = policy.classify_rcpt(settings, bare)
    why: list[str] = []
    spf_why: list[str] = []
    if kind is policy.RcptKind.SRS:
        decision = policy.decide_rcpt_srs(settings, f"<{bare}>", bare, [], now, mail)
        spf_why = _spf_why(settings, mail, None, None)
        parsed = policy.decide_rcpt_srs(settings, f"<{bare}>", bare, [], now).srs
        if parsed is not None:
            why.append(f"a valid SRS address: mail to it is about {parsed.reversed}")
        else:
            why.append("an address at the SRS domain that does not verify")
    elif kind is policy.RcptKind.FORWARDING:
        info = store.rcpt_info([addr.key(bare)])[0]
        fwd = info.forward
        trust = facts.spf.recipient_trust(
            settings, mail, fwd, facts.client, facts.helo, facts.forwarders
        )
        permits = policy.needs_sender_permits(settings, mail, fwd) and facts.sender_permits_us(mail)
        decision = policy.decide_rcpt_forwarding(
            settings, f"<{bare}>", info, mail, [], trust=trust, sender_permits_us=permits
        )
        spf_why = _spf_why(settings, mail, fwd, trust)
        if decision.action == "forward":
            spf_why.append(_rewrite_why(settings, mail, fwd, decision))
        if fwd is None:
            why.append("not in the forwarding table")
        elif fwd.moved_to:
            why.append(f"deleted, moved to {fwd.moved_to}")
        else:
            why.append(f"forwarded to {', '.join(fwd.targets)}")
            if len(fwd.targets) == 1:
                why.append(f"its target has {info.held} held or requeued message(s)")
            else:
                why.append(
                    f"its {len(fwd.targets)} targets have {info.held} held or requeued"
                    " message(s) together (unverified mail waits while any has one)"
                )
            if fwd.null_sender == "hold":
                why.append("null-sender mail for it is kept in the hold queue")
    else:
        decision = policy.decide_rcpt_other(settings, f"<{bare}>", mail)
        spf_why = _spf_why(settings, mail, None, None)
        why.append("not in a forwarding domain nor the SRS domain: passed untouched")
    why += spf_why
    if decision.reply is None:
        decision = policy.decide_rcpt_split(accepted, decision)
        if decision.reply is not None:
            why.append("needs another outcome than the recipients accepted before it")
    return decision, Stage("rcpt", f"RCPT TO:<{bare}>", _reply(decision.reply), tuple(why))


def _spf_why(
    settings: policy.Settings,
    mail: policy.MailDecision,
    fwd: Forward | None,
    trust: policy.Trust | None,
) -> list[str]:
    """The SPF verdict for one recipient: the action and where it comes from."""
    spf = mail.spf
    if spf is None or spf.result == "pass":
        return []
    action, source = policy.spf_action(settings, spf, fwd)
    where = "the recipient's own" if source == "recipient" else f"the global spf.{spf.result}"
    why = [f"SPF {spf.result}: {action} ({where})"]
    if trust is not None and trust.entry:
        why.append(f"the client is its trusted forwarder {trust.entry}: the verdict is not applied")
    elif trust is not None and trust.unsure:
        why.append("one of its trusted forwarders could not be checked (DNS): a temporary refusal")
    elif fwd is not None and fwd.trusted:
        why.append("the client is none of its trusted forwarders")
    return why


def _rewrite_why(
    settings: policy.Settings,
    mail: policy.MailDecision,
    fwd: Forward | None,
    decision: policy.RcptDecision,
) -> str:
    choice, source = policy.rewrite_choice(settings, fwd)
    where = "the recipient's own" if source == "recipient" else "the global srs.rewrite"
    if not mail.srs_sender:
        outcome = "nothing to rewrite"
    elif decision.sender_rewrite == "keep":
        outcome = "its copy keeps the envelope sender"
    else:
        outcome = "its copy goes out with the SRS sender"
        if choice != "srs" and mail.state != "B":
            outcome += " (unverified mail is always rewritten)"
    return f"sender rewrite {choice} ({where}): {outcome}"


def _eom(
    settings: policy.Settings,
    mail: policy.MailDecision,
    accepted: list[policy.RcptDecision],
    now: float,
) -> Stage:
    if accepted[0].action == "reverse":
        why = [
            "depends on what the mail is and on the state of the records under that address:"
            " a failure of unverified mail is held, other notices and automatic replies are"
            " dropped, anything else is refused; all of it reaches a verified sender"
            " (docs/states.md)"
        ]
        return Stage("eom", "end of message", "250 (accepted)", tuple(why))
    tx = policy.Transaction(
        mail=mail, rcpts=tuple(accepted), queue_id="(queue id)", msg_id="(id)", now=now
    )
    d = policy.decide_eom(settings, tx)
    why = [f"action {d.action}"]
    why += [f"recipient becomes {to}" for to, _ in d.addrcpt]
    if any(r.spf_note for r in accepted):
        why.append(f"Authentication-Results: {policy.auth_results_value(tx)}")
    if d.chgfrom:
        why.append(f"envelope sender {d.chgfrom}; its message record is written")
    if d.quarantine:
        why.append(f"kept in the hold queue: {d.quarantine}")
    return Stage("eom", "end of message", _reply(d.reply), tuple(why))
