"""What fwdctl does with held mail: the I/O loop of the admin's transitions.

Each command reads what it needs (the store's entries, the MTA's queues),
asks :mod:`fwdmilter.machine` what to do with each entry (pure functions),
and applies the answer. The decisions, and the states they move between,
are described there and in docs/states.md; docs/operations.md shows the
commands.

- ``requeue`` marks the entry R *before* the original leaves (a failure
  bounce that comes back at once finds R and holds it again), submits it
  with a fresh SRS sender and ``NOTIFY=SUCCESS,FAILURE``, notes the queue id
  the MTA gave it, and puts the entry back to H if the submission failed.
  N entries (null-sender mail held by policy) are forwarded as they are.
- ``release`` ends the R entries whose requeued message the border MTA has
  delivered: gone from all its queues, no bounce for it waiting, record
  still R. A systemd timer runs it every minute.
- ``drop`` and ``expire`` discard entries; a held message is deleted only
  when no other entry still needs it.
- ``check`` compares the hold queue with the store (``--fix`` drops the
  entries whose held message is gone).

Every step that can fail leaves the entry as it was, and says why. With
``dry_run`` nothing changes: the outcomes say what would be done.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from fwdmilter import addr, dsn, machine
from fwdmilter.alerts import alert_recipients, resend_alerts
from fwdmilter.config import Config
from fwdmilter.errors import FwdmilterError
from fwdmilter.logfmt import pairs
from fwdmilter.machine import (
    CheckReport,
    Discard,
    NoticeKind,
    QueueView,
    ReleaseEntry,
    Requeue,
    Skip,
)
from fwdmilter.mta.base import MTA
from fwdmilter.policy import TRACE_HEADER
from fwdmilter.states import HeldEntry, MessageRecord
from fwdmilter.store.base import Store
from fwdmilter.submit import submit
from srs import SRS, SRSError

__all__ = [
    "Outcome",
    "queue_view",
    "requeue",
    "release",
    "drop",
    "expire",
    "check",
    "resend_alerts",
    "expiry_notice",
]

log = logging.getLogger(__name__)

_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"
_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one entry (or, with a dry run, what would)."""

    entry: HeldEntry
    done: bool
    message: str


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def _log(event: str, entry: HeldEntry, **extra: str) -> None:
    """One line per entry changed: requeued, released, dropped, expired..."""
    log.info(
        "queue_id=%s %s",
        addr.strip_brackets(entry.queue_id) or "-",
        pairs(
            [
                ("held", event),
                ("target", entry.target),
                ("entry", entry.entry_id),
                ("state", entry.state),
                *extra.items(),
            ]
        ),
    )


def queue_view(mta: MTA) -> QueueView:
    """What the MTA's queues hold now."""
    return QueueView.of((m.queue, m.queue_id, m.sender, m.recipients) for m in mta.queued())


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


#: Up to this many entries, a run asks the store who shares each held
#: message (Store.held_by_queue); more, and it reads every entry once.
_FEW: Final = 8


class _Files:
    """Which entries name which held message, as one run knows it.

    Read once per run (or per file, for a run over a few entries) and kept
    current as the run changes entries. A copy that is out of date can only
    count too many entries as needing a file, never too few: nobody adds an
    entry naming an existing held message (the milter holds each bounce in
    a new queue file; a requeued message that fails again is held in a new
    one), so other processes only ever take needers away. At worst a file
    stays that nobody needs, which ``held check`` reports.
    """

    def __init__(
        self,
        store: Store,
        entries: Sequence[HeldEntry],
        everything: Sequence[HeldEntry] | None = None,
    ) -> None:
        self._store = store
        self._by: dict[tuple[str, str], list[HeldEntry]] = {}
        self._complete = everything is not None or len(entries) > _FEW
        if self._complete:
            for e in everything if everything is not None else store.held():
                self._by.setdefault((e.host, e.queue_id), []).append(e)

    def sharing(self, entry: HeldEntry) -> list[HeldEntry]:
        where = (entry.host, entry.queue_id)
        if where not in self._by and not self._complete and entry.queue_id:
            self._by[where] = self._store.held_by_queue(entry.host, entry.queue_id)
        return self._by.get(where, [])

    def changed(self, entry: HeldEntry, now: HeldEntry | None) -> None:
        """``entry`` is now ``now`` (None: gone)."""
        listed = self._by.get((entry.host, entry.queue_id))
        if listed is not None:
            me = (entry.target, entry.entry_id)
            listed[:] = [o for o in listed if (o.target, o.entry_id) != me]
            if now is not None:
                listed.append(now)


def _delete_file(files: _Files, mta: MTA, entry: HeldEntry, dry_run: bool) -> str:
    """Delete the entry's held message unless another entry needs it; a
    note for the outcome."""
    if not entry.queue_id:
        return ""
    if not machine.file_unneeded(entry, files.sharing(entry)):
        return " (its held message stays: another entry needs it)"
    if dry_run:
        return " with its held message"
    return " with its held message" if mta.delete(entry.queue_id) else " (no longer in the queue)"


# -- requeue -------------------------------------------------------------------------


def _requeue_bounce(
    cfg: Config,
    store: Store,
    mta: MTA,
    files: _Files,
    rewriter: SRS,
    step: Requeue,
    now: float,
    dry_run: bool,
) -> Outcome:
    entry = step.entry
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
    if dry_run:
        files.changed(entry, replace(entry, state="R"))
        note = "" if step.delete_file else "; its held message stays (another entry needs it)"
        return Outcome(entry, True, f"would submit to {entry.target} from {sender}{note}")
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
        instance=entry.host or cfg.milter.instance,
        held_id=entry.entry_id,
    )
    # The record, then R, then the submission: a failure bounce may come
    # back before submit() returns, and must find both.
    store.record_messages([record], step.record_ttl)
    if not store.mark_requeued(entry.target, entry.entry_id, now):
        return Outcome(entry, False, "the entry changed meanwhile (requeued twice?): not sent")
    message = _retrace(
        original, f"{rewriter.domain.lower()}; id={msg_id}; by={cfg.milter.hostname}"
    )
    try:
        queue_id = submit(
            cfg.mta.submit,
            sender,
            [entry.target],
            message,
            timeout=cfg.mta.submit_timeout,
            mail_options=["RET=FULL", f"ENVID={msg_id}"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE"],
            helo=cfg.milter.hostname,
        )
    except FwdmilterError as exc:
        store.unrequeue(entry.target, entry.entry_id)
        store.set_message_state(record.srs, record.record_id, "done")
        return Outcome(entry, False, f"not sent, still held: {exc}")
    store.set_requeue_id(entry.target, entry.entry_id, queue_id, srs=sender, msg_id=msg_id)
    _log("requeued", entry, requeue_id=queue_id or "-", sender=sender)
    files.changed(entry, replace(entry, state="R"))
    # Another entry (another target the bounce named) may still need it.
    note = (
        _delete_file(files, mta, entry, dry_run=False)
        if step.delete_file
        else " (its held message stays: another entry needs it)"
    )
    where = f" as {queue_id}" if queue_id else ""
    return Outcome(entry, True, f"submitted to {entry.target} from {sender}{where}{note}")


def _requeue_null_sender(
    cfg: Config, store: Store, mta: MTA, files: _Files, step: Requeue, dry_run: bool
) -> Outcome:
    entry = step.entry
    if dry_run:
        return Outcome(entry, True, f"would forward to {entry.target} with the null sender")
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
    _log("dropped", entry, why="forwarded")
    files.changed(entry, None)
    note = _delete_file(files, mta, entry, dry_run=False)
    return Outcome(entry, True, f"forwarded to {entry.target} with the null sender{note}")


def requeue(
    cfg: Config,
    store: Store,
    mta: MTA,
    rewriter: SRS,
    entries: Iterable[HeldEntry],
    now: float,
    *,
    instance: str | None = None,
    dry_run: bool = False,
) -> list[Outcome]:
    """Requeue the held entries given (H and N; R ones are under way)."""
    me = instance or cfg.milter.instance
    entries = list(entries)
    files = _Files(store, entries)
    outcomes: list[Outcome] = []
    for entry in entries:
        try:
            step = machine.decide_requeue(entry, me, files.sharing(entry), cfg.srs.max_age_days)
            if isinstance(step, Skip):
                outcomes.append(Outcome(entry, False, step.why))
                continue
            if step.null_sender:
                outcome = _requeue_null_sender(cfg, store, mta, files, step, dry_run)
            else:
                outcome = _requeue_bounce(cfg, store, mta, files, rewriter, step, now, dry_run)
        except FwdmilterError as exc:
            outcome = Outcome(entry, False, str(exc))
        outcomes.append(outcome)
    return outcomes


# -- release ---------------------------------------------------------------------------


def _record_state(store: Store, entry: HeldEntry) -> MessageRecord | None:
    if not entry.srs or not entry.msg_id:
        return None
    for rec in store.messages(entry.srs):
        if rec.msg_id == entry.msg_id and rec.held_id == entry.entry_id:
            return rec
    return None


def release(
    cfg: Config,
    store: Store,
    mta: MTA,
    *,
    instance: str | None = None,
    dry_run: bool = False,
) -> list[Outcome]:
    """Release the R entries whose requeued message the MTA has delivered.

    Order matters: the entries first, then the MTA's queues, then each
    entry again. A requeue id is known only once the MTA has queued the
    message, so a queue listed after the entry was read and not holding
    that id means the message left. The second read skips an entry that
    changed meanwhile (held again, or requeued again under a new id), and
    ``Store.release`` itself refuses unless the entry is still R."""
    me = instance or cfg.milter.instance
    before = {
        (e.target, e.entry_id): e.requeue_id
        for e in store.held()
        if e.state == "R" and e.requeue_id and e.host in (me, "")
    }
    if not before:
        return []
    view = queue_view(mta)
    outcomes: list[Outcome] = []
    for entry in store.held():
        if entry.state != "R" or before.get((entry.target, entry.entry_id)) != entry.requeue_id:
            continue
        rec = _record_state(store, entry)
        step = machine.decide_release(entry, me, view, rec.state if rec else None)
        if isinstance(step, ReleaseEntry):
            outcomes.append(_apply_release(store, entry, rec, dry_run))
        # Keep or Skip: it waits (`held list` shows it as R, `held show` why).
    return outcomes


def _apply_release(
    store: Store, entry: HeldEntry, rec: MessageRecord | None, dry_run: bool
) -> Outcome:
    if dry_run:
        return Outcome(entry, True, "would release: the MTA has delivered the requeued message")
    if not store.release(entry.target, entry.entry_id):
        return Outcome(entry, False, "changed meanwhile (a bounce held it again?): not released")
    if rec is not None:
        store.set_message_state(rec.srs, rec.record_id, "done")
    _log("released", entry, requeue_id=entry.requeue_id)
    return Outcome(entry, True, f"released: {entry.requeue_id} was delivered by the MTA")


# -- drop and expire -----------------------------------------------------------------


def drop(
    cfg: Config,
    store: Store,
    mta: MTA,
    entries: Iterable[HeldEntry],
    *,
    instance: str | None = None,
    dry_run: bool = False,
) -> list[Outcome]:
    """Discard held entries now, their held messages with them (unless
    another entry needs one): the admin's way out for an entry that requeue
    cannot help. Nobody is told; an entry of another instance is left to it
    (or reached with ``instance``)."""
    me = instance or cfg.milter.instance
    entries = list(entries)
    files = _Files(store, entries)
    outcomes: list[Outcome] = []
    for entry in entries:
        try:
            step = machine.decide_drop(entry, me, files.sharing(entry))
            if isinstance(step, Skip):
                outcomes.append(Outcome(entry, False, step.why))
                continue
            outcomes.append(_discard(cfg, store, mta, files, step, "dropped", dry_run))
        except FwdmilterError as exc:
            outcomes.append(Outcome(entry, False, str(exc)))
    return outcomes


def _discard(
    cfg: Config,
    store: Store,
    mta: MTA,
    files: _Files,
    step: Discard,
    verb: str,
    dry_run: bool,
    event: str = "dropped",
) -> Outcome:
    entry = step.entry
    notified = ""
    recipients = alert_recipients(cfg, entry.contact or _contact(store, entry))
    if step.notice != "none" and recipients:
        notified = " and told " + ", ".join(recipients)
        if not dry_run:
            submit(
                cfg.mta.submit,
                cfg.held.alert_from,
                recipients,
                expiry_notice(cfg, entry, step.notice),
                timeout=cfg.mta.submit_timeout,
                helo=cfg.milter.hostname,
            )
    note = ""
    if step.delete_file:
        note = _delete_file(files, mta, entry, dry_run=dry_run)
    elif machine.needs_file(entry):
        note = " (its held message stays: another entry needs it)"
    if dry_run:
        files.changed(entry, None)  # as good as gone for the entries after it
        return Outcome(entry, True, f"would be {verb}{note}{notified}")
    # Delete first, then drop: a crash in between leaves an entry whose
    # file is gone, which `held check --fix` mends; the other order would
    # leave a file nobody lists.
    store.drop(entry.target, entry.entry_id)
    files.changed(entry, None)
    _log(event, entry, notice=step.notice)
    if step.notice in ("under-way", "requeued"):
        note += " (it was sent again" + (
            f" and is still queued as {entry.requeue_id})" if step.notice == "under-way" else ")"
        )
    return Outcome(entry, True, f"{verb}{note}{notified}")


def expiry_notice(cfg: Config, entry: HeldEntry, kind: NoticeKind = "discarded") -> bytes:
    """The notice sent to the alternate contact when an entry expires:
    what happened to the mail, which is not always "discarded"."""
    from email.message import EmailMessage  # noqa: PLC0415 - only for notices
    from email.utils import formatdate, make_msgid  # noqa: PLC0415

    msg = EmailMessage()
    author = cfg.held.alert_from or f"postmaster@{cfg.srs.domain}"
    days = cfg.held.retention_days
    msg["From"] = f"fwdmilter on {cfg.milter.hostname} <{author}>"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=cfg.srs.domain)
    msg["Auto-Submitted"] = "auto-generated"
    head = (
        f"A message forwarded to {entry.target} (for {entry.rcpt or 'a forwarding address'})"
        f" failed:\n\n    {entry.reason}\n\nIt was held on {entry.host or cfg.milter.hostname}"
        f" because its sender, {entry.sender or '<>'}, could\nnot be verified."
    )
    if kind == "under-way":
        msg["Subject"] = f"Held mail for {entry.target} was sent again and is still on its way"
        body = (
            f"{head} It was sent again to {entry.target}, and the mail\nserver is still"
            f" trying to deliver it (queue id {entry.requeue_id}). Nothing was\ndiscarded;"
            f" {entry.target} is no longer deferred.\n"
        )
    elif kind == "requeued":
        msg["Subject"] = f"Held mail for {entry.target} was sent again"
        body = (
            f"{head} It was sent again to {entry.target}, and no failure has\ncome back in"
            f" {days} days. Nothing was discarded; {entry.target} is no longer\ndeferred.\n"
        )
    else:
        msg["Subject"] = f"Held mail for {entry.target} was discarded after {days} days"
        body = (
            f"{head} Nobody released it within {days} days, so it has\nnow been discarded."
            " If you expected mail from that sender, ask them to send it again.\n"
        )
    msg.set_content(body)
    return msg.as_bytes()


def expire(
    cfg: Config,
    store: Store,
    mta: MTA,
    now: float,
    *,
    instance: str | None = None,
    dry_run: bool = False,
) -> list[Outcome]:
    """Discard (or release) this instance's entries older than
    ``held.retention_days``, telling the contact what happened."""
    me = instance or cfg.milter.instance
    entries = store.held()
    files = _Files(store, entries, everything=entries)
    view: QueueView | None = None
    outcomes: list[Outcome] = []
    for entry in entries:
        try:
            if entry.state == "R" and view is None:
                view = queue_view(mta)
            step = machine.decide_expire(
                entry,
                me,
                now,
                cfg.held.retention_days,
                view or QueueView(),
                files.sharing(entry),
            )
            if step is None or isinstance(step, Skip):
                continue
            if isinstance(step, ReleaseEntry):
                # Judged on a queue listed after the entry was read: still
                # the same requeue? (see release())
                fresh = store.get_held(entry.target, entry.entry_id)
                if fresh is not None and fresh.requeue_id == entry.requeue_id:
                    rec = _record_state(store, fresh)
                    outcomes.append(_apply_release(store, fresh, rec, dry_run))
                continue
            verb = "discarded" if step.notice in ("discarded", "none") else "ended"
            outcomes.append(_discard(cfg, store, mta, files, step, verb, dry_run, event="expired"))
        except FwdmilterError as exc:
            outcomes.append(Outcome(entry, False, str(exc)))
    return outcomes


def _contact(store: Store, entry: HeldEntry) -> str:
    if not entry.rcpt:
        return ""
    fwd = store.get_forward(entry.rcpt)
    return fwd.contact if fwd else ""


# -- check ---------------------------------------------------------------------------


def check(
    cfg: Config,
    store: Store,
    mta: MTA,
    now: float,
    *,
    instance: str | None = None,
    fix: bool = False,
) -> tuple[CheckReport, list[Outcome]]:
    """Compare the hold queue with the store; with ``fix``, drop the
    entries whose held message is gone. Releases what ``release`` would."""
    me = instance or cfg.milter.instance
    view = queue_view(mta)
    report = machine.decide_check(store.held(), me, view, now)
    outcomes: list[Outcome] = []
    for step in report.fixes:
        entry = step.entry
        if not fix:
            outcomes.append(Outcome(entry, False, "its held message is gone (--fix drops it)"))
            continue
        if store.drop(entry.target, entry.entry_id):
            _log("dropped", entry, why="held message gone")
            outcomes.append(Outcome(entry, True, "dropped: its held message is gone"))
    # Releasing is no mending: it is what the minutely timer does anyway.
    outcomes += release(cfg, store, mta, instance=me)
    return report, outcomes


def outcomes_ok(outcomes: Sequence[Outcome]) -> bool:
    return all(o.done for o in outcomes)
