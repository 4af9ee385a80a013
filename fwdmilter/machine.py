"""The held-mail state machine: every transition of docs/states.md, pure.

Facts in, a frozen decision out, whose effects are typed values (hold this,
release that, change this record's state) that the shell applies in a
fixed order (:data:`EFFECT_ORDER`). Nothing here touches a store, the MTA,
a socket or the clock. The states themselves and the record and entry
types are in :mod:`fwdmilter.states`.

The milter's transitions (mail reaching an SRS address)::

    record   mail to its SRS address          transition
    ------   -------------------------------  ---------------------------------
    B        anything                         delivered to the sender
    U, none  failure (DSN failed, old bounce) held: entry H per target, record H
    R        failure                          held again: entry R -> H, record H
    R        success (delivered, relayed)     released: entry removed, record done
    U, none  delay, success, auto-reply,      discarded: not a failure, and the
             read receipt                     sender is not verified
    U, none  other (a person's reply, or      refused, 550 5.7.1: it cannot go to
             nothing we can read)             an unverified sender

"Relevant" records are those of the message the mail is about: the ones
whose trace id the mail carries, else every record under the SRS address
(each one a target that did get mail from that sender that day). A bounce
never creates entries for targets that got nothing, and creates at most
``max_entries`` of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from fwdmilter import replies
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
) -> BounceDecision:
    """Mail of ``kind`` to the SRS address ``srs`` (normal form), whose
    reversal is ``original_sender``, with the records kept under it."""
    relevant = _relevant(records, frozenset(trace_ids))
    ids = tuple(dict.fromkeys(r.msg_id for r in relevant))
    verified = bool(relevant) and all(r.state == "B" for r in relevant)

    if kind is Kind.FAILURE:
        if verified:
            return BounceDecision("deliver", kind, reason, msg_ids=ids)
        return _hold_failure(
            kind, reason, srs, original_sender, relevant, instance, queue_id, now, max_entries, ids
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
            effects.append(Rehold(rec.target, rec.held_id, reason))
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
        effects.append(
            Hold(_entry(target, entry_id, original_sender, rec, queue_id, instance, reason, now))
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
    ``holds`` is (rcpt, target, contact) per recipient, in normal form.
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
