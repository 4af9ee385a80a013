"""The MTA adapter: fwdctl's access to the queue that keeps held mail.

The milter holds a bounce by quarantining it (``smfi_quarantine``): Postfix
moves it to its hold queue, Sendmail marks the queue file quarantined.
fwdctl then needs three things of the MTA, whichever it is: list what is
held, read a held message, and delete it once it is dealt with. Submitting
mail (requeue, alerts) goes over SMTP to ``mta.submit`` and is not the
adapter's business.

Adapters run the MTA's own tools (Postfix: ``postqueue -j``, ``postcat``,
``postsuper``) or read its queue files (Sendmail), never a guess at them.
Every failure is an :class:`~fwdmilter.errors.MTAError` whose text names the
command and what it printed.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

__all__ = ["QueuedMessage", "MTA"]


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One message in the MTA's queue: the hold (quarantine) queue unless
    ``queue`` says otherwise (Postfix: incoming, active, deferred, hold,
    corrupt; Sendmail: "queue" for a qf file, "hold" for an hf file)."""

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    arrival: float  # Unix time
    size: int
    reason: str = ""  # the quarantine reason, where the MTA keeps one
    extra: dict[str, str] = field(default_factory=dict)
    queue: str = "hold"


class MTA(abc.ABC):
    """Access to one MTA instance's queue."""

    #: "postfix" or "sendmail"
    name: str = ""

    @abc.abstractmethod
    def held(self) -> list[QueuedMessage]:
        """Every message in the hold / quarantine queue."""

    @abc.abstractmethod
    def read(self, queue_id: str) -> bytes:
        """The held message ``queue_id`` as RFC 5322 text (headers and body),
        without the MTA's own envelope records. MTAError if it is not held."""

    @abc.abstractmethod
    def delete(self, queue_id: str) -> bool:
        """Delete the held message ``queue_id``. False if it was not there."""

    @abc.abstractmethod
    def queued(self) -> list[QueuedMessage]:
        """Every message the MTA has in any of its queues, held or not: the
        requeued message of an R entry has left once it is not among them
        (release), and a bounce waiting in the queue is one of them."""

    def is_held(self, queue_id: str) -> bool:
        """True if ``queue_id`` is in the hold queue."""
        return any(m.queue_id == queue_id for m in self.held())
