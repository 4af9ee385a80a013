"""The held-mail state machine: every transition of docs/states.md, pure.

Facts in, a frozen decision out, whose effects are typed values (hold this,
release that, change this record's state) that the shell applies in a
fixed order (:data:`EFFECT_ORDER`). Nothing here touches a store, the MTA,
a socket or the clock. The states themselves and the record and entry
types are in :mod:`fwdmilter.states`.

The I/O loops that apply these decisions are :mod:`fwdmilter.milter` (mail
to an SRS address, at end of message) and :mod:`fwdmilter.held` (the
admin's transitions, run by fwdctl: the last section of this module).

The milter's transitions (mail reaching an SRS address)::

    record   mail to its SRS address          transition
    ------   -------------------------------  ---------------------------------
    B        anything                         delivered to the sender
    U, none  failure (DSN failed, old bounce) held: entry H per failed target, record H
    R        failure                          held again: entry R -> H, record H
    R        success (delivered, relayed)     released: entry removed, record done
    U, none  delay, success, auto-reply,      discarded: not a failure, and the
             read receipt                     sender is not verified
    U, none  other (a person's reply, or      refused, 550 5.7.1: it cannot go to
             nothing we can read)             an unverified sender

"Relevant" records are those of the message the mail is about: the ones
whose trace id the mail carries, else every record under the SRS address
(each one a target that did get mail from that sender that day). A failure
DSN narrows them to the targets it says failed (a message to several
targets fails for some of them only), when any of them is named; when none
is (a downstream forwarder rewrote the address, a bounce in a legacy
format), every relevant target is held, as nothing tells them apart. A
bounce never creates entries for targets that got nothing, and creates at
most ``max_entries`` of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from fwdmilter import replies
from fwdmilter.addr import key, strip_brackets
from fwdmilter.classify import Kind
from fwdmilter.replies import Reply
from fwdmilter.states import HeldEntry, MessageRecord, RecordState

__all__ = [
    "Hold",
    "Rehold",
    "Release",
    "SetRecordState",
    "WriteRecords",
    "Effect",
    "EFFECT_ORDER",
    "BounceAction",
    "BounceDecision",
    "UNKNOWN_TARGET",
    "decide_bounce",
    "hold_null_sender",
    "ordered",
    "QueueView",
    "Skip",
    "Requeue",
    "Discard",
    "ReleaseEntry",
    "Keep",
    "CheckReport",
    "NoticeKind",
    "RELEASE_BOUND_SECONDS",
    "record_ttl",
    "needs_file",
    "file_unneeded",
    "decide_requeue",
    "decide_drop",
    "decide_release",
    "decide_expire",
    "decide_check",
]

#: The target of the entry of a failure that no record explains (its
#: records expired, or were never written): it defers nobody.
UNKNOWN_TARGET: Final = "unknown"


# -- effects -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Release:
    """Remove an R entry: its requeued message was delivered."""

    target: str
    entry_id: str


@dataclass(frozen=True, slots=True)
class SetRecordState:
    """Change one message record's state."""

    srs: str
    record_id: str
    state: RecordState


@dataclass(frozen=True, slots=True)
class WriteRecords:
    """Store message records (one per forwarded message and target)."""

    records: tuple[MessageRecord, ...]


@dataclass(frozen=True, slots=True)
class Rehold:
    """R -> H for an entry whose requeued message failed again."""

    target: str
    entry_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Hold:
    """Add a held entry (H, counted; or N, not counted)."""

    entry: HeldEntry


Effect = Release | SetRecordState | WriteRecords | Rehold | Hold

#: The order the shell applies effects in: releases and state changes
#: first, records next, held entries last, so that a store failure half way
#: never leaves an entry for a message that was not held.
EFFECT_ORDER: Final[tuple[type, ...]] = (Release, SetRecordState, WriteRecords, Rehold, Hold)


def ordered(effects: Iterable[Effect]) -> tuple[Effect, ...]:
    """``effects`` sorted into :data:`EFFECT_ORDER`, stable within a kind."""
    return tuple(sorted(effects, key=lambda e: EFFECT_ORDER.index(type(e))))


# -- mail to an SRS address ----------------------------------------------------

BounceAction = Literal["deliver", "discard", "hold", "reject"]


@dataclass(frozen=True, slots=True)
class BounceDecision:
    """What to do with one message to one SRS address."""

    action: BounceAction
    kind: Kind
    reason: str
    effects: tuple[Effect, ...] = ()
    reply: Reply | None = None  # for "reject"
    #: The trace ids of the records the mail was about (for the log).
    msg_ids: tuple[str, ...] = ()
    #: How many targets the failure named beyond ``max_entries``.
    capped: int = 0


def _relevant(records: Sequence[MessageRecord], ids: frozenset[str]) -> list[MessageRecord]:
    if ids:
        by_id = [r for r in records if r.msg_id in ids]
        if by_id:
            return by_id
    return list(records)


def _failed_only(records: list[MessageRecord], failed: frozenset[str]) -> list[MessageRecord]:
    """The records whose target the failure names, if it names any of them;
    else all of them (nothing tells which target failed)."""
    named = [r for r in records if key(r.target) in failed]
    return named or records


def decide_bounce(
    *,
    kind: Kind,
    reason: str,
    srs: str,
    original_sender: str,
    records: Sequence[MessageRecord],
    trace_ids: Iterable[str],
    instance: str,
    queue_id: str,
    now: float,
    max_entries: int,
    failed: Iterable[str] = (),
    reasons: Iterable[tuple[str, str]] = (),
) -> BounceDecision:
    """Mail of ``kind`` to the SRS address ``srs`` (normal form), whose
    reversal is ``original_sender``, with the records kept under it.
    ``failed`` are the recipients a failure DSN names as failed (normal
    form: :attr:`fwdmilter.classify.Classification.failed`), ``reasons``
    each one's own reason, for its target's entry (``reason`` otherwise)."""
    relevant = _relevant(records, frozenset(trace_ids))
    if kind is Kind.FAILURE:
        relevant = _failed_only(relevant, frozenset(failed))
    ids = tuple(dict.fromkeys(r.msg_id for r in relevant))
    verified = bool(relevant) and all(r.state == "B" for r in relevant)

    if kind is Kind.FAILURE:
        if verified:
            return BounceDecision("deliver", kind, reason, msg_ids=ids)
        return _hold_failure(
            kind,
            reason,
            dict(reasons),
            srs,
            original_sender,
            relevant,
            instance,
            queue_id,
            now,
            max_entries,
            ids,
        )

    effects: list[Effect] = []
    if kind is Kind.SUCCESS:
        for rec in relevant:
            if rec.state == "R":
                effects.append(SetRecordState(rec.srs, rec.record_id, "done"))
                if rec.held_id:
                    effects.append(Release(rec.target, rec.held_id))
    if verified:
        return BounceDecision("deliver", kind, reason, ordered(effects), msg_ids=ids)
    if kind is Kind.OTHER:
        return BounceDecision(
            "reject", kind, reason, ordered(effects), replies.SRS_REPLY_REFUSED, msg_ids=ids
        )
    return BounceDecision("discard", kind, reason, ordered(effects), msg_ids=ids)


def _hold_failure(
    kind: Kind,
    reason: str,
    reasons: dict[str, str],
    srs: str,
    original_sender: str,
    relevant: Sequence[MessageRecord],
    instance: str,
    queue_id: str,
    now: float,
    max_entries: int,
    ids: tuple[str, ...],
) -> BounceDecision:
    entry_id = f"{instance}/{queue_id}"
    effects: list[Effect] = []
    for rec in relevant:
        if rec.state == "R" and rec.held_id:
            effects.append(Rehold(rec.target, rec.held_id, reasons.get(key(rec.target), reason)))
            effects.append(SetRecordState(rec.srs, rec.record_id, "H"))
    fresh = [rec for rec in relevant if not (rec.state == "R" and rec.held_id)]
    # One entry per target, newest record first: the message most likely
    # bounced is the latest one that target got under this address.
    by_target: dict[str, MessageRecord] = {}
    for rec in reversed(fresh):
        by_target.setdefault(rec.target, rec)
    targets = list(by_target.items())
    capped = max(0, len(targets) - max_entries)
    kept = targets[:max_entries]
    for target, rec in kept:
        why = reasons.get(key(target), reason)
        effects.append(
            Hold(_entry(target, entry_id, original_sender, rec, queue_id, instance, why, now))
        )
        effects.append(SetRecordState(rec.srs, rec.record_id, "H"))
    if not relevant:
        # Nothing tells which target failed (its records expired, or were
        # never written): keep the bounce, under a target that defers nobody.
        effects.append(
            Hold(
                HeldEntry(
                    target=UNKNOWN_TARGET,
                    entry_id=entry_id,
                    state="H",
                    sender=original_sender,
                    rcpt="",
                    queue_id=queue_id,
                    host=instance,
                    reason=reason,
                    held_at=now,
                    srs=srs,
                )
            )
        )
    return BounceDecision("hold", kind, reason, ordered(effects), msg_ids=ids, capped=capped)


def _entry(
    target: str,
    entry_id: str,
    sender: str,
    rec: MessageRecord,
    queue_id: str,
    instance: str,
    reason: str,
    now: float,
) -> HeldEntry:
    return HeldEntry(
        target=target,
        entry_id=entry_id,
        state="H",
        sender=sender,
        rcpt=rec.rcpt,
        queue_id=queue_id,
        host=instance,
        reason=reason,
        held_at=now,
        srs=rec.srs,
        msg_id=rec.msg_id,
    )


# -- null-sender mail a recipient wants kept -------------------------------------


def hold_null_sender(
    holds: Iterable[tuple[str, str, str]],
    *,
    instance: str,
    queue_id: str,
    msg_id: str,
    now: float,
) -> tuple[Effect, ...]:
    """N entries for null-sender mail to recipients whose policy is "hold":
    ``holds`` is (rcpt, target, contact) per target of each such recipient
    (each target once: the entry id names the held message), in normal form.
    Listed and expired like held bounces, they do not defer U mail: they do
    not mean the target is failing."""
    return tuple(
        Hold(
            HeldEntry(
                target=target,
                entry_id=f"{instance}/{queue_id}",
                state="N",
                sender="",
                rcpt=rcpt,
                queue_id=queue_id,
                host=instance,
                reason="null-sender mail held by the recipient's policy",
                held_at=now,
                msg_id=msg_id,
                contact=contact,
            )
        )
        for rcpt, target, contact in holds
    )


# -- the admin's transitions ---------------------------------------------------------
#
#   requeue   H -> R   the original goes out again (marked R *before* it leaves,
#                      so that a fast failure bounce finds R and holds it again);
#                      back to H (unrequeue) if the submission fails
#             N -> -   null-sender mail held by policy, forwarded as it is
#   release   R -> -   the border MTA no longer has the requeued message in any
#                      queue, no bounce for it waits there, and the record is
#                      still R (a failure would have made it H again)
#   drop      * -> -   the admin discards an entry now; nobody is told
#   expire    * -> -   older than held.retention_days; the contact is told what
#                      happened (discarded, or sent again and under way)
#   check              the hold queue against the store: entries whose file is
#                      gone (dropped by --fix), files nobody lists (reported)
#
# A held message (queue file) may be named by several entries (one per
# target): it is deleted only when no other entry still needs it.

#: How long ``fwdctl held release`` takes at most to see a delivery: its
#: systemd timer runs every minute (systemd/fwdctl-release.timer, AccuracySec=1s).
RELEASE_BOUND_SECONDS: Final = 60

#: Entries younger than this are left alone by ``held check``: the milter
#: writes an entry before the MTA applies the quarantine at end of message.
CHECK_GRACE_SECONDS: Final = 600.0

NoticeKind = Literal["none", "discarded", "under-way", "requeued"]


def _null_sender(sender: str) -> bool:
    # Sendmail's qf files say "<>"; Postfix's postqueue -j says
    # "MAILER-DAEMON" (a real sender always has a domain by then: Postfix
    # appends $myorigin to a bare local part).
    bare = strip_brackets(sender)
    return bare == "" or bare.upper() == "MAILER-DAEMON"


@dataclass(frozen=True, slots=True)
class QueueView:
    """What the MTA's queues hold now, as the admin's transitions see it."""

    #: Queue ids of the messages in the hold (quarantine) queue.
    held: frozenset[str] = frozenset()
    #: Queue ids of every message in any queue (held ones included).
    queued: frozenset[str] = frozenset()
    #: Recipients (normal form) of the null-sender messages in any queue but
    #: the hold queue: bounces waiting to reach the milter (Sendmail queues
    #: its own bounces before they pass it). A held bounce has passed it
    #: already, and may be the one another target's entry still keeps (one
    #: bounce for two targets, or two messages from one sender on one day):
    #: it must not keep a requeued target from being released.
    bounces_to: frozenset[str] = frozenset()

    @classmethod
    def of(cls, messages: Iterable[tuple[str, str, str, Sequence[str]]]) -> QueueView:
        """From (queue, queue_id, sender, recipients) of each queued message."""
        held: set[str] = set()
        queued: set[str] = set()
        bounces: set[str] = set()
        for queue, queue_id, sender, recipients in messages:
            queued.add(queue_id)
            if queue == "hold":
                held.add(queue_id)
            if _null_sender(sender) and queue != "hold":
                bounces.update(key(r) for r in recipients)
        return cls(frozenset(held), frozenset(queued), frozenset(bounces))


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do for this entry; ``why`` says so to the admin."""

    entry: HeldEntry
    why: str


@dataclass(frozen=True, slots=True)
class Requeue:
    """Send the held mail again: a bounce's original with a fresh SRS sender
    (``null_sender`` False: the entry becomes R, its record lives
    ``record_ttl`` seconds), or an N entry's message as it is (then the
    entry goes). ``delete_file``: no other entry needs the held message."""

    entry: HeldEntry
    null_sender: bool
    delete_file: bool
    record_ttl: float


@dataclass(frozen=True, slots=True)
class Discard:
    """Remove the entry; delete its held message if nobody else needs it;
    tell the contact ``notice`` (expiry only)."""

    entry: HeldEntry
    delete_file: bool
    notice: NoticeKind = "none"


@dataclass(frozen=True, slots=True)
class ReleaseEntry:
    """The requeued message was delivered: the R entry ends."""

    entry: HeldEntry


@dataclass(frozen=True, slots=True)
class Keep:
    """The R entry stays; ``why`` says what it waits for."""

    entry: HeldEntry
    why: str


@dataclass(frozen=True, slots=True)
class CheckReport:
    """``held check``: what the hold queue and the store disagree on."""

    #: Entries (H or N) whose held message is no longer in the hold queue.
    missing: tuple[HeldEntry, ...] = ()
    #: Held messages no entry of this instance names.
    orphans: tuple[str, ...] = ()
    #: What ``--fix`` does: drop the entries whose file is gone. Orphans are
    #: only reported (see docs/operations.md: a file nobody lists may be
    #: another tool's, and its target is not known).
    fixes: tuple[Discard, ...] = ()


def record_ttl(max_age_days: int) -> float:
    """Seconds a record of a requeued message lives: longer than its SRS
    address is valid (the stamp is valid through its last day, and clocks
    differ), so that a bounce the address still admits finds its record."""
    return float((max_age_days + 2) * 86400)


def needs_file(entry: HeldEntry) -> bool:
    """True if the entry still needs its held message: H (the bounce holds
    the original) and N (the message itself). An R entry's original is on
    its way again."""
    return entry.state in ("H", "N") and bool(entry.queue_id)


def file_unneeded(entry: HeldEntry, sharing: Iterable[HeldEntry]) -> bool:
    """True if no entry but ``entry`` itself needs its held message;
    ``sharing`` are the entries that name the same queue file."""
    me = (entry.target, entry.entry_id)
    return not any(
        needs_file(o)
        and (o.target, o.entry_id) != me
        and (o.host, o.queue_id) == (entry.host, entry.queue_id)
        for o in sharing
    )


def _foreign(entry: HeldEntry, instance: str, command: str) -> Skip | None:
    if entry.host and entry.host != instance:
        return Skip(
            entry,
            f"held on {entry.host}: run fwdctl held {command} there, or with --instance"
            f" {entry.host} if that host no longer runs",
        )
    return None


def decide_requeue(
    entry: HeldEntry, instance: str, sharing: Iterable[HeldEntry], max_age_days: int
) -> Skip | Requeue:
    """What ``held requeue`` does with one entry."""
    if (skip := _foreign(entry, instance, "requeue")) is not None:
        return skip
    if entry.state == "R":
        return Skip(entry, "already requeued; released once the MTA has delivered it")
    return Requeue(
        entry,
        null_sender=entry.state == "N",
        delete_file=file_unneeded(entry, sharing),
        record_ttl=record_ttl(max_age_days),
    )


def decide_drop(entry: HeldEntry, instance: str, sharing: Iterable[HeldEntry]) -> Skip | Discard:
    """What ``held drop`` does with one entry: discard it, nobody told."""
    if (skip := _foreign(entry, instance, "drop")) is not None:
        return skip
    return Discard(entry, delete_file=needs_file(entry) and file_unneeded(entry, sharing))


def _requeued_gone(entry: HeldEntry, queue: QueueView) -> str:
    """Why the requeued message of an R entry cannot be called delivered,
    or "" if it can."""
    if not entry.requeue_id:
        return "the MTA did not say the requeued message's queue id; waiting for a notice"
    if entry.requeue_id in queue.queued:
        return f"the requeued message {entry.requeue_id} is still in the MTA's queue"
    if entry.srs and key(entry.srs) in queue.bounces_to:
        return f"a bounce to {entry.srs} waits in the MTA's queue"
    return ""


def decide_release(
    entry: HeldEntry, instance: str, queue: QueueView, record: RecordState | None
) -> Skip | ReleaseEntry | Keep:
    """Whether an R entry's requeued message has been delivered by the
    border MTA: it is in none of the MTA's queues, no bounce to its SRS
    address waits there, and its record (``record``: the state of the
    requeued message's record, None if it is gone) is still R."""
    if (skip := _foreign(entry, instance, "release")) is not None:
        return skip
    if entry.state != "R":
        return Skip(entry, f"state {entry.state}: not requeued")
    if record is not None and record != "R":
        return Keep(entry, f"its record is {record}: a bounce came back for it")
    why = _requeued_gone(entry, queue)
    return Keep(entry, why) if why else ReleaseEntry(entry)


def decide_expire(
    entry: HeldEntry,
    instance: str,
    now: float,
    retention_days: int,
    queue: QueueView,
    sharing: Iterable[HeldEntry],
) -> Skip | Discard | ReleaseEntry | None:
    """What ``held expire`` does with one entry; None if it is not due.

    An entry is due ``retention_days`` after it was held, an R entry that
    long after its last requeue. An R entry whose requeued message has left
    the queue was delivered: it is released, not discarded. One still under
    way is dropped (the target is no longer deferred) and the contact is
    told that the mail was sent again and is still on its way; never
    "discarded" about mail that is not."""
    if entry.host and entry.host != instance:
        return None  # that host's own timer expires it
    since = entry.requeued_at if entry.state == "R" and entry.requeued_at else entry.held_at
    if since > now - retention_days * 86400:
        return None
    if entry.state == "R":
        if entry.requeue_id and not _requeued_gone(entry, queue):
            return ReleaseEntry(entry)
        notice: NoticeKind = "under-way" if entry.requeue_id in queue.queued else "requeued"
        return Discard(entry, delete_file=False, notice=notice)
    return Discard(
        entry,
        delete_file=needs_file(entry) and file_unneeded(entry, sharing),
        notice="discarded" if entry.state == "H" else "none",
    )


def decide_check(
    entries: Sequence[HeldEntry],
    instance: str,
    queue: QueueView,
    now: float,
    grace: float = CHECK_GRACE_SECONDS,
) -> CheckReport:
    """Compare this instance's entries with the MTA's hold queue."""
    mine = [e for e in entries if e.host == instance or not e.host]
    missing = tuple(
        e
        for e in mine
        if needs_file(e) and e.queue_id not in queue.held and e.held_at < now - grace
    )
    named = {e.queue_id for e in mine}
    orphans = tuple(sorted(q for q in queue.held if q not in named))
    return CheckReport(
        missing=missing,
        orphans=orphans,
        fixes=tuple(Discard(e, delete_file=False) for e in missing),
    )
