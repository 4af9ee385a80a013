"""The held-mail state machine's transitions, as pure functions.

Facts in, a typed decision out: no store, no MTA, no clock (the time is a
parameter). The I/O loops that apply these decisions are
:mod:`fwdmilter.milter` (the bounce decision, at end of message) and
:mod:`fwdmilter.held` (the admin's transitions, run by fwdctl). The states
themselves are described in :mod:`fwdmilter.states` and docs/states.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from fwdmilter.addr import key, strip_brackets
from fwdmilter.states import HeldEntry, RecordState

__all__ = [
    "QueueView",
    "Skip",
    "Requeue",
    "Discard",
    "Release",
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
    #: Recipients (normal form) of the null-sender messages in any queue:
    #: bounces waiting to reach the milter (Sendmail queues its own bounces
    #: before they pass it).
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
            if _null_sender(sender):
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
class Release:
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
) -> Skip | Release | Keep:
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
    return Keep(entry, why) if why else Release(entry)


def decide_expire(
    entry: HeldEntry,
    instance: str,
    now: float,
    retention_days: int,
    queue: QueueView,
    sharing: Iterable[HeldEntry],
) -> Skip | Discard | Release | None:
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
            return Release(entry)
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
