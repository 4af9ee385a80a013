"""The held-mail state machine's data: records, entries and their states.

Pure: no store, no libmilter, no socket, no clock. Both the policy
(:mod:`fwdmilter.policy`) and the store (:mod:`fwdmilter.store`) import the
types defined here; the transitions between the states are the functions of
:mod:`fwdmilter.machine`.

Two kinds of state, with distinct names
---------------------------------------
A **record state** (:data:`RecordState`) belongs to a *message record*: one
forwarded message to one target, kept under the SRS address it went out
with, so that a bounce coming back can be told apart::

    B      bouncable: non-null sender, verified (SPF pass, SMTP AUTH)
    U      unbouncable: every other forwarded message
    H      its bounce is held (an entry of the same target names it)
    R      sent again by the admin (fwdctl held requeue), not yet delivered
    done   the requeued message was delivered

An **entry state** (:data:`EntryState`) belongs to a *held entry*: one
message kept in the MTA's hold queue, per target::

    H      a held failure bounce of a U (or R) message; counted: while a
           target has H or R entries, U mail for it is deferred (4xx)
    R      requeued: the original is on its way again; counted
    N      null-sender mail kept by the recipient's policy, or mail to an
           SRS address that could not be classified; not counted (it does
           not mean the target is failing)

Addresses
---------
Every address these types carry in a key position (``rcpt``, ``target``,
``srs``) is in the one normal form of :func:`fwdmilter.addr.key`; the store
applies it on every write and lookup, so that a forward typed in capitals
and the held entries of its target agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "RecordState",
    "EntryState",
    "NullSenderPolicy",
    "SenderRewrite",
    "SENDER_REWRITES",
    "SPF_RESULTS",
    "SPF_ACTIONS",
    "RECORD_STATES",
    "ENTRY_STATES",
    "COUNTED_ENTRY_STATES",
    "Forward",
    "RcptInfo",
    "MessageRecord",
    "HeldEntry",
]

RecordState = Literal["B", "U", "R", "H", "done"]
EntryState = Literal["H", "R", "N"]
NullSenderPolicy = Literal["forward", "hold"]

RECORD_STATES: Final[frozenset[str]] = frozenset({"B", "U", "R", "H", "done"})
ENTRY_STATES: Final[frozenset[str]] = frozenset({"H", "R", "N"})
#: The entry states that defer U mail for their target.
COUNTED_ENTRY_STATES: Final[frozenset[str]] = frozenset({"H", "R"})


#: A recipient's choice of envelope sender for its forwarded mail: "srs"
#: (always rewrite), "when-needed" (keep a verified sender whose SPF already
#: permits this host), "none" (keep every verified sender: for targets that
#: whitelisted this forwarder). U mail is always rewritten, whatever the
#: choice: its bounces must come back here to be held. "" inherits the
#: global srs.rewrite.
SenderRewrite = Literal["", "srs", "when-needed", "none"]
SENDER_REWRITES: Final[frozenset[str]] = frozenset({"", "srs", "when-needed", "none"})
#: The SPF results a recipient may give its own action (RFC 7208 section
#: 2.6; "pass" is always accepted).
SPF_RESULTS: Final[tuple[str, ...]] = (
    "fail",
    "softfail",
    "neutral",
    "none",
    "permerror",
    "temperror",
)
SPF_ACTIONS: Final[frozenset[str]] = frozenset({"reject", "tempfail", "accept"})


@dataclass(frozen=True, slots=True)
class Forward:
    """One entry of the forwarding table.

    ``targets`` are where mail for ``rcpt`` goes, in the order given (1-1 or
    1-many alias expansion); each has its own message records and held
    entries. An entry with ``moved_to`` set is a deleted recipient: mail for
    it is refused with 551 and the new address (RFC 5321 section 3.4). Its
    ``targets`` are then empty.

    ``pending`` is a new target that waits for its owner's confirmation
    until ``pending_expires`` (Unix time): mail keeps going to ``targets``
    meanwhile, and an entry with no target but a pending one is answered
    4xx (the recipient is about to confirm, the sender should retry).

    The recipient's policy overrides the global settings where set:
    ``spf_actions`` (SPF result, action) pairs, ``rewrite`` (a
    :data:`SenderRewrite`, "" inherits), ``null_sender``. ``trusted`` lists
    the forwarders whose mail for ``rcpt`` skips the sender's SPF verdict: a
    network in CIDR notation, or a domain whose own SPF (or HELO) check must
    pass for the connecting client.
    """

    rcpt: str
    targets: tuple[str, ...] = ()
    contact: str = ""
    null_sender: NullSenderPolicy = "forward"
    moved_to: str = ""
    created: float = 0.0
    updated: float = 0.0
    pending: str = ""
    pending_expires: float = 0.0
    spf_actions: tuple[tuple[str, str], ...] = ()
    rewrite: SenderRewrite = ""
    trusted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            # A bare string would read as a tuple of one-letter targets.
            raise TypeError("Forward.targets is a tuple of addresses, not a string")

    @property
    def target(self) -> str:
        """The first target, or "" (what one-target callers show)."""
        return self.targets[0] if self.targets else ""

    @property
    def active(self) -> bool:
        """True if mail for ``rcpt`` is forwarded (not a moved recipient)."""
        return bool(self.targets) and not self.moved_to

    def pending_at(self, now: float) -> str:
        """The target awaiting confirmation at ``now``, or ""."""
        if self.pending and not self.moved_to and self.pending_expires > now:
            return self.pending
        return ""

    def spf_action(self, result: str) -> str:
        """This recipient's own action for an SPF result, or "" (the global one)."""
        return dict(self.spf_actions).get(result, "")


@dataclass(frozen=True, slots=True)
class RcptInfo:
    """What the milter needs at RCPT for one recipient.

    ``held`` is the number of H and R entries of the forward's targets
    together (0 when there is no active forward): while any target of the
    address has one, U mail for the whole address is deferred.
    """

    forward: Forward | None
    held: int = 0


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One forwarded message to one target, as the milter recorded it.

    ``srs`` is the SRS address the message went out with; ``record_id`` is
    unique among the records of that address, and ``msg_id`` is the id in
    the message's trace header (shared by the records of one message with
    several targets). ``held_id`` links a requeued (R) message to the held
    entry it came from.
    """

    srs: str
    record_id: str
    msg_id: str
    state: RecordState
    sender: str
    rcpt: str
    target: str
    created: float
    instance: str
    queue_id: str = ""
    held_id: str = ""
    #: Unix time the record expires; set by the store when it reads a record.
    expires: float = 0.0


@dataclass(frozen=True, slots=True)
class HeldEntry:
    """A message kept in the MTA's hold queue, for one target.

    ``entry_id`` is unique per target ("INSTANCE/QUEUEID" of the held
    message). ``queue_id`` and ``host`` (the milter instance that holds it)
    say where the held message is; several entries (several targets) may
    name one queue file, which is deleted only when the last of them ends.
    After a requeue (state R) they keep naming the held bounce until the
    requeued message fails again, when they name the new held bounce;
    ``requeue_id`` is the queue id the requeued message got on the MTA,
    which tells when the MTA has delivered it.

    ``alerted_to`` lists the alert recipients dealt with: told, or refused
    for good (a 5xx: retrying would not help); ``alerted`` is True once
    every recipient has been dealt with.
    """

    target: str
    entry_id: str
    state: EntryState
    sender: str
    rcpt: str
    queue_id: str
    host: str
    reason: str
    held_at: float
    srs: str = ""
    msg_id: str = ""
    contact: str = ""
    requeued_at: float = 0.0
    alerted: bool = False
    requeue_id: str = ""
    alerted_to: tuple[str, ...] = ()
