"""What fwdctl does with held mail: requeue, expire, re-alert.

A held entry (state H) stands for a bounce quarantined in the MTA's hold
queue: the bounce of a message whose sender was not verified. Requeueing
takes the original message out of that bounce and submits it again to the
target, with a fresh SRS sender and ``NOTIFY=SUCCESS,FAILURE`` so that the
downstream reports either way; the entry becomes R, and the held bounce is
deleted only once the MTA has accepted the new submission. When the
delivery notice comes back the milter releases the entry; when a failure
comes back, the entry is H again.

Entries in state N are null-sender messages held by a recipient's policy:
requeueing forwards them as they are (with the null sender) and drops the
entry.

Every step that can fail leaves the entry as it was, and says why.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from fwdmilter import addr, dsn
from fwdmilter.alerts import alert_recipients, send_alert
from fwdmilter.config import Config
from fwdmilter.errors import FwdmilterError
from fwdmilter.mta.base import MTA
from fwdmilter.policy import TRACE_HEADER
from fwdmilter.store.base import HeldEntry, MessageRecord, Store
from fwdmilter.submit import submit
from srs import SRS, SRSError

__all__ = ["Outcome", "requeue", "drop", "expire", "resend_alerts", "expiry_notice"]

log = logging.getLogger(__name__)

_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"
_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one entry."""

    entry: HeldEntry
    done: bool
    message: str


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def _retrace(message: bytes, trace_value: str) -> bytes:
    """The message with our trace headers replaced by one new one.

    The new id ties the coming delivery notice to the R record; replacing
    (not adding) keeps a message requeued several times from looking like a
    loop.
    """
    end = _HEADER_END.search(message)
    head, rest = (message[: end.start()], message[end.start() :]) if end else (message, b"")
    nl = b"\r\n" if b"\r\n" in head[:2000] else b"\n"
    kept: list[bytes] = []
    skipping = False
    name = TRACE_HEADER.lower().encode() + b":"
    for line in head.split(nl):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(name)
        if not skipping:
            kept.append(line)
    new = f"{TRACE_HEADER}: {trace_value}".encode()
    return nl.join([new, *kept]) + rest


def _requeue_bounce(
    cfg: Config, store: Store, mta: MTA, rewriter: SRS, entry: HeldEntry, now: float
) -> Outcome:
    raw = mta.read(entry.queue_id)
    original = dsn.returned_message(raw)
    if original is None:
        return Outcome(
            entry,
            False,
            "the held bounce carries only the message's headers (the MTA's bounce size "
            "limit, see docs/postfix.md): it stays held; ask the sender to send again",
        )
    if not entry.sender:
        return Outcome(entry, False, "the held bounce names no original sender")
    try:
        sender = rewriter.forward(entry.sender, now=now)
    except SRSError as exc:
        return Outcome(entry, False, f"cannot make an SRS address for {entry.sender}: {exc}")
    msg_id = _new_id()
    record = MessageRecord(
        srs=addr.key(sender),
        record_id=f"{msg_id}.0",
        msg_id=msg_id,
        state="R",
        sender=entry.sender,
        rcpt=entry.rcpt,
        target=entry.target,
        created=now,
        instance=cfg.milter.hostname,
        held_id=entry.entry_id,
    )
    # The record first: a delivery notice may come back before submit returns.
    store.record_messages([record], cfg.srs.max_age_days * 86400)
    message = _retrace(
        original, f"{rewriter.domain.lower()}; id={msg_id}; by={cfg.milter.hostname}"
    )
    submit(
        cfg.mta.submit,
        sender,
        [entry.target],
        message,
        timeout=cfg.mta.submit_timeout,
        mail_options=["RET=FULL", f"ENVID={msg_id}"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE"],
        helo=cfg.milter.hostname,
    )
    if not store.mark_requeued(entry.target, entry.entry_id, now):
        return Outcome(entry, False, "submitted, but the entry changed meanwhile (requeued twice?)")
    deleted = mta.delete(entry.queue_id)
    note = "" if deleted else " (the held bounce was already gone from the queue)"
    return Outcome(entry, True, f"submitted to {entry.target} from {sender}{note}")


def _requeue_null_sender(cfg: Config, store: Store, mta: MTA, entry: HeldEntry) -> Outcome:
    message = mta.read(entry.queue_id)
    submit(
        cfg.mta.submit,
        "",
        [entry.target],
        message,
        timeout=cfg.mta.submit_timeout,
        helo=cfg.milter.hostname,
    )
    store.drop(entry.target, entry.entry_id)
    mta.delete(entry.queue_id)
    return Outcome(entry, True, f"forwarded to {entry.target} with the null sender")


def requeue(
    cfg: Config,
    store: Store,
    mta: MTA,
    rewriter: SRS,
    entries: Iterable[HeldEntry],
    now: float,
) -> list[Outcome]:
    """Requeue the held entries given (H and N; R ones are under way)."""
    outcomes: list[Outcome] = []
    for entry in entries:
        if entry.state == "R":
            outcomes.append(
                Outcome(entry, False, "already requeued; waiting for the delivery notice")
            )
            continue
        if entry.host and entry.host != cfg.milter.hostname:
            outcomes.append(
                Outcome(entry, False, f"held on {entry.host}: run fwdctl held requeue there")
            )
            continue
        try:
            if entry.state == "N":
                outcome = _requeue_null_sender(cfg, store, mta, entry)
            else:
                outcome = _requeue_bounce(cfg, store, mta, rewriter, entry, now)
        except FwdmilterError as exc:
            outcome = Outcome(entry, False, str(exc))
        outcomes.append(_logged("requeue", outcome))
    return outcomes


def _logged(what: str, outcome: Outcome) -> Outcome:
    log.info(
        "queue_id=%s %s=%s target=%s detail=%s",
        outcome.entry.queue_id,
        what,
        "done" if outcome.done else "failed",
        outcome.entry.target,
        outcome.message,
    )
    return outcome


def drop(cfg: Config, store: Store, mta: MTA, entries: Iterable[HeldEntry]) -> list[Outcome]:
    """Discard held entries now, their held messages with them: the admin's
    way out for an entry that requeue cannot help (an R entry whose delivery
    notice never comes, a bounce someone deleted from the queue by hand).
    Nobody is told; an entry held on another host is left to that host."""
    outcomes: list[Outcome] = []
    for entry in entries:
        if entry.host and entry.host != cfg.milter.hostname:
            outcomes.append(
                Outcome(entry, False, f"held on {entry.host}: run fwdctl held drop there")
            )
            continue
        try:
            deleted = mta.delete(entry.queue_id) if entry.queue_id else False
            store.drop(entry.target, entry.entry_id)
            outcome = Outcome(
                entry, True, "dropped" + (" with its held message" if deleted else "")
            )
        except FwdmilterError as exc:
            outcome = Outcome(entry, False, str(exc))
        outcomes.append(_logged("drop", outcome))
    return outcomes


def expiry_notice(cfg: Config, entry: HeldEntry) -> bytes:
    """The notice sent to the alternate contact when held mail is discarded."""
    from email.message import EmailMessage  # noqa: PLC0415 - only for notices
    from email.utils import formatdate, make_msgid  # noqa: PLC0415

    msg = EmailMessage()
    author = cfg.held.alert_from or f"postmaster@{cfg.srs.domain}"
    msg["From"] = f"fwdmilter on {cfg.milter.hostname} <{author}>"
    msg["Subject"] = (
        f"Held mail for {entry.target} was discarded after {cfg.held.retention_days} days"
    )
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=cfg.srs.domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"""\
A message forwarded to {entry.target} (for {entry.rcpt or "a forwarding address"}) failed:

    {entry.reason}

It was held on {cfg.milter.hostname} because its sender, {entry.sender or "<>"}, could
not be verified. Nobody released it within {cfg.held.retention_days} days, so it has
now been discarded. If you expected mail from that sender, ask them to send it again.
"""
    )
    return msg.as_bytes()


def expire(cfg: Config, store: Store, mta: MTA, now: float) -> list[Outcome]:
    """Discard held entries of this host older than ``held.retention_days``:
    tell the alternate contact, delete the held message, drop the entry."""
    limit = now - cfg.held.retention_days * 86400
    outcomes: list[Outcome] = []
    for entry in store.held():
        if entry.held_at > limit:
            continue
        if entry.host and entry.host != cfg.milter.hostname:
            continue  # that host's own timer expires it
        try:
            notified = ""
            recipients = alert_recipients(cfg, entry.contact or _contact(store, entry))
            if entry.state != "N" and recipients:
                submit(
                    cfg.mta.submit,
                    cfg.held.alert_from,
                    recipients,
                    expiry_notice(cfg, entry),
                    timeout=cfg.mta.submit_timeout,
                    helo=cfg.milter.hostname,
                )
                notified = " and told " + ", ".join(recipients)
            deleted = mta.delete(entry.queue_id) if entry.queue_id else False
            store.drop(entry.target, entry.entry_id)
            outcome = Outcome(
                entry,
                True,
                f"discarded{'' if deleted else ' (no longer in the queue)'}{notified}",
            )
        except FwdmilterError as exc:
            outcome = Outcome(entry, False, str(exc))
        outcomes.append(_logged("expire", outcome))
    return outcomes


def _contact(store: Store, entry: HeldEntry) -> str:
    if not entry.rcpt:
        return ""
    fwd = store.get_forward(entry.rcpt)
    return fwd.contact if fwd else ""


def resend_alerts(cfg: Config, store: Store) -> list[Outcome]:
    """Send the alerts that did not go out when mail was held."""
    outcomes: list[Outcome] = []
    for entry in store.held():
        if entry.state != "H" or entry.alerted:
            continue
        if entry.host and entry.host != cfg.milter.hostname:
            continue
        try:
            send_alert(cfg, store, entry)
            outcomes.append(Outcome(entry, True, "alert sent"))
        except FwdmilterError as exc:
            outcomes.append(Outcome(entry, False, f"alert failed: {exc}"))
    return outcomes
