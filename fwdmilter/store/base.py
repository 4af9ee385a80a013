"""The store contract: what the milter and fwdctl keep, whatever holds it.

One contract, two backends: :mod:`fwdmilter.store.redis` (shared by several
hosts) and :mod:`fwdmilter.store.sqlite` (one host, the default). The milter,
the policy and fwdctl only ever see :class:`Store`; one contract test suite
runs against both backends.

What is kept
------------
*Forwards* (the forwarding table), keyed by the forwarding recipient: where
its mail goes, whom to tell when mail for it is held, what to do with
null-sender mail, and, for a deleted recipient, where it moved.

*Message records*, one per forwarded message and target, grouped under the
SRS address the message was sent with (many messages share one SRS address:
one sender on one day). They live ``srs.max_age_days``: after that a bounce
to that address is refused anyway. A record says whether the message is
B (bouncable), U (unbouncable) or R (requeued by the admin), so that a bounce
coming back can be told apart.

*Web tokens* and *rate counters* (the recipient's web service, fwdweb):
pending target confirmations, sign-in links, sessions and API tokens, each
kept only as the SHA-256 of the token, and counters of fixed time windows
that limit how often a sign-in link is mailed.

*Held entries*, one per bounce held in the MTA's queue, grouped by target,
with per-target counters of H (held) and R (requeued, not yet delivered)
entries. While a target's counters are not both zero, U mail for it is
refused with a 4xx. Counters change only together with the entries they
count, atomically, so they are exact under any concurrency.

Addresses
---------
The store keeps one normal form of every address it looks up: it applies
:func:`fwdmilter.addr.key` itself on every write and every lookup (a
forward's ``rcpt`` and ``target``, a record's ``srs``, ``rcpt`` and
``target``, an entry's ``target``, ``rcpt`` and ``srs``, the per-target
counters), whatever form the caller passes. A forward typed
``Nobody@Broken.Example`` and the held entries of ``nobody@broken.example``
are one target, counted once. Items read back carry the normal form.
Schema version 1 stored addresses as given; opening such a store migrates
it (re-keys mixed-case data, rebuilds the counters from the entries).

Failures
--------
Every method may raise :class:`~fwdmilter.errors.StoreUnavailable` (cannot
reach the store now, or it is busy or full: the milter answers 4xx) or
:class:`~fwdmilter.errors.StoreSchemaError` (permanent until an admin acts:
corrupt or newer data, data of the wrong type under our keys, a password or
ACL the store refuses, a file the milter cannot write). No other exception
escapes a backend; a :class:`ValueError` means the caller broke this
contract (a bug, not an outage).

Time
----
Each backend reads the clock through a ``clock`` callable given when it is
built (``time.time`` by default), so that tests can inject the time; the
methods that take ``now`` use the caller's time instead.

Thread safety
-------------
A store is shared by all of libmilter's connection threads: every method is
safe to call from any thread at any time.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from fwdmilter.states import (
    EntryState,
    Forward,
    HeldEntry,
    MessageRecord,
    NullSenderPolicy,
    RcptInfo,
    RecordState,
)

__all__ = [
    "Forward",
    "RcptInfo",
    "MessageRecord",
    "HeldEntry",
    "Stats",
    "Store",
    "MessageState",
    "HeldState",
    "NullSenderPolicy",
    "SCHEMA_VERSION",
    "WebToken",
    "WebTokenKind",
]

#: Version of the stored data's layout; a backend refuses data of a newer one
#: and migrates older data forward when it opens.
#: 4: a forward has several targets, a policy and trusted forwarders.
SCHEMA_VERSION: Final = 4

#: The names the store used before the types moved to :mod:`fwdmilter.states`.
MessageState = RecordState
HeldState = EntryState
#: confirm: a pending target's confirmation link; signin: a sign-in link;
#: session: a signed-in browser; api: a recipient's named API token.
WebTokenKind = Literal["confirm", "signin", "session", "api"]


@dataclass(frozen=True, slots=True)
class WebToken:
    """A token of the recipient's web service, stored as its SHA-256 only.

    ``digest`` is the hex SHA-256 of the secret the user holds (the link in
    a mail, the session cookie, the API token): the store never sees the
    secret. ``name`` is the API token's name, or the target a confirmation
    is for; ``data`` is free text for the web service (a session's CSRF
    secret's digest, the address that asked). ``expires`` is Unix time
    (0: never, for API tokens until revoked).
    """

    kind: WebTokenKind
    digest: str
    rcpt: str
    name: str = ""
    data: str = ""
    created: float = 0.0
    expires: float = 0.0

    def valid_at(self, now: float) -> bool:
        return self.expires == 0.0 or self.expires > now


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts for ``fwdctl stats``."""

    forwards: int = 0
    moved: int = 0
    messages: dict[str, int] = field(default_factory=dict)  # by state
    held: dict[str, int] = field(default_factory=dict)  # "H"/"R" -> count
    held_by_target: dict[str, tuple[int, int]] = field(default_factory=dict)  # target -> (H, R)


class Store(abc.ABC):
    """The contract every backend fulfils (see the module docstring)."""

    #: The URL scheme(s) of the backend, for messages.
    kind: str = ""

    # -- the forwarding table ------------------------------------------------

    @abc.abstractmethod
    def get_forward(self, rcpt: str) -> Forward | None:
        """The entry for ``rcpt`` (active or moved), or None."""

    @abc.abstractmethod
    def put_forward(self, forward: Forward) -> None:
        """Create or replace the entry for ``forward.rcpt``."""

    @abc.abstractmethod
    def delete_forward(self, rcpt: str, moved_to: str = "", now: float = 0.0) -> bool:
        """Delete ``rcpt``; with ``moved_to``, keep a moved entry instead.

        The moved entry keeps ``created`` and ``contact``; its ``target`` is
        empty, its ``null_sender`` the default and ``updated`` is ``now``.
        Returns False if there was no entry.
        """

    @abc.abstractmethod
    def list_forwards(self) -> list[Forward]:
        """Every entry, sorted by ``rcpt``."""

    # -- the milter's hot path -------------------------------------------------

    @abc.abstractmethod
    def rcpt_info(self, rcpts: Sequence[str]) -> list[RcptInfo]:
        """For each recipient: its forward, and the held count of its target.

        The milter calls this once per RCPT. A networked backend must answer
        in one round trip in the steady state (the forward and the counter of
        the target it names, pipelined).
        """

    @abc.abstractmethod
    def record_messages(self, records: Sequence[MessageRecord], ttl: float) -> None:
        """Store ``records``, each to expire ``ttl`` seconds from now.

        One round trip for a networked backend, atomic per SRS address.
        A record with the ``srs`` and ``record_id`` of a stored one replaces
        it. ``ttl`` must be positive.
        """

    @abc.abstractmethod
    def messages(self, srs: str) -> list[MessageRecord]:
        """The unexpired records under the SRS address ``srs``, oldest first."""

    @abc.abstractmethod
    def set_message_state(self, srs: str, record_id: str, state: MessageState) -> bool:
        """Change one record's state, keeping its lifetime. False if it is gone."""

    @abc.abstractmethod
    def purge(self, now: float) -> int:
        """Delete the message records expired at ``now``; the number deleted.

        Reads never return expired records whatever this does; purging only
        gives the space back. A backend whose records expire by themselves
        (Redis TTLs) returns 0.
        """

    # -- held mail -------------------------------------------------------------

    @abc.abstractmethod
    def hold(self, entry: HeldEntry) -> bool:
        """Add an H entry and count it, or an N entry (not counted), atomically.

        ``entry.state`` must be "H" or "N" (else ValueError). Returns False,
        changing nothing, if the target already has an entry with that
        ``entry_id``.
        """

    @abc.abstractmethod
    def get_held(self, target: str, entry_id: str) -> HeldEntry | None:
        """One held entry, or None."""

    @abc.abstractmethod
    def held(self, target: str | None = None, domain: str | None = None) -> list[HeldEntry]:
        """Held entries (H, R and N), all or of one target or target domain,
        oldest first."""

    @abc.abstractmethod
    def mark_requeued(self, target: str, entry_id: str, now: float) -> bool:
        """H -> R for one entry (counters too), atomically. False unless it was H."""

    @abc.abstractmethod
    def rehold(
        self, target: str, entry_id: str, queue_id: str, host: str, reason: str, now: float
    ) -> bool:
        """R -> H for one entry whose requeued message failed again.

        The entry now names the new held bounce: ``queue_id``, ``host`` and
        ``reason`` are replaced, ``held_at`` becomes ``now`` (its retention
        starts again), ``alerted`` becomes False and ``alerted_to`` empty (the
        new bounce is news to the recipient's contact), ``requeue_id`` is
        cleared. ``requeued_at`` keeps the time of the
        last requeue. False unless it was R.
        """

    @abc.abstractmethod
    def unrequeue(self, target: str, entry_id: str) -> bool:
        """R -> H for an entry whose requeue never left (the submission
        failed): the opposite of :meth:`mark_requeued`. ``held_at``,
        ``alerted`` and ``alerted_to`` are kept (nothing new happened to the
        mail); ``requeue_id`` is cleared. False unless it was R."""

    @abc.abstractmethod
    def set_requeue_id(
        self, target: str, entry_id: str, requeue_id: str, srs: str = "", msg_id: str = ""
    ) -> bool:
        """Note the MTA's queue id of an R entry's requeued message and, when
        given, the SRS address and trace id it went out with (they replace
        ``srs`` and ``msg_id``: a bounce of the requeued message comes back
        there). False unless the entry is R."""

    @abc.abstractmethod
    def release(self, target: str, entry_id: str) -> bool:
        """Remove an R entry whose requeued message was delivered. False unless R."""

    @abc.abstractmethod
    def drop(self, target: str, entry_id: str) -> bool:
        """Remove an entry in any state (expiry). False if it was not there."""

    @abc.abstractmethod
    def mark_alerted(
        self, target: str, entry_id: str, told: Sequence[str] = (), *, complete: bool = True
    ) -> bool:
        """Note who was dealt with (told, or refused the alert for good: a
        bad address is not tried again) for an entry: ``told`` is added to
        ``alerted_to`` (normal form, no duplicates), and ``alerted`` becomes
        ``complete`` (True: nobody is left to tell; False: some recipients
        failed and the daily resend tries them again). Atomic. False if the
        entry is gone."""

    @abc.abstractmethod
    def held_by_queue(self, host: str, queue_id: str) -> list[HeldEntry]:
        """Every entry (any target, any state) naming the queue file
        ``queue_id`` of ``host``: several targets may share one held
        message, which is deleted only when none of them needs it."""

    @abc.abstractmethod
    def held_counts(self, target: str) -> tuple[int, int]:
        """(H, R) for ``target``."""

    # -- the recipient's web service (fwdweb) -----------------------------------

    @abc.abstractmethod
    def put_token(self, token: WebToken) -> None:
        """Store ``token`` (replacing one of the same kind and digest); it
        disappears by itself once expired."""

    @abc.abstractmethod
    def get_token(self, kind: WebTokenKind, digest: str, now: float) -> WebToken | None:
        """The unexpired token of ``kind`` with ``digest``, or None."""

    @abc.abstractmethod
    def take_token(self, kind: WebTokenKind, digest: str, now: float) -> WebToken | None:
        """Remove and return the unexpired token, atomically: of two callers
        with the same digest, one gets it and the other None (single use)."""

    @abc.abstractmethod
    def tokens(self, kind: WebTokenKind, rcpt: str, now: float) -> list[WebToken]:
        """The unexpired tokens of ``kind`` for ``rcpt``, oldest first."""

    @abc.abstractmethod
    def delete_tokens(self, kind: WebTokenKind, rcpt: str, name: str | None = None) -> int:
        """Remove the tokens of ``kind`` for ``rcpt`` (only those named
        ``name`` if given); the number removed."""

    @abc.abstractmethod
    def count_hit(self, key: str, window: float, now: float) -> int:
        """Count one event under ``key`` in the fixed window of ``window``
        seconds that holds ``now``; the count in that window, this one
        included. Counters vanish once their window is over."""

    # -- whole store -----------------------------------------------------------

    @abc.abstractmethod
    def stats(self) -> Stats:
        """Counts per state and per target."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files; the store is not used after."""

    # -- migration between backends --------------------------------------------

    @abc.abstractmethod
    def export(self) -> Iterator[Forward | MessageRecord | HeldEntry]:
        """Everything stored, for ``fwdctl store migrate``: unexpired message
        records only, each with its ``expires`` set."""

    @abc.abstractmethod
    def import_items(self, items: Iterable[Forward | MessageRecord | HeldEntry]) -> int:
        """Store exported items as they are, message records keeping their
        ``expires``; held counters are rebuilt from the entries. Returns the
        number of items stored."""
