"""Every SMTP reply the milter gives, named once.

A :class:`Reply` cannot be built wrong: a permanent one has a 5xx code and a
5.x.x enhanced status, a temporary one 4xx and 4.x.x (RFC 3463), and the text
is one printable ASCII line. The texts tell the sender why, in words a
postmaster can act on; they never carry exception text.

The enhanced codes follow RFC 3463 and, for SPF, RFC 7372 section 3.2
(5.7.23 "SPF validation failed", 4.7.24 "SPF validation error").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Reply", "permanent", "temporary"]

_TEXT: Final = re.compile(r"[\x20-\x7e]*\Z")


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status code, text."""

    code: int
    status: str
    text: str

    def __post_init__(self) -> None:
        klass = self.code // 100
        if klass not in (4, 5) or not 400 <= self.code <= 599:
            raise ValueError(f"a milter reply is 4xx or 5xx, not {self.code}")
        parts = self.status.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[0]) != klass:
            raise ValueError(f"enhanced status {self.status!r} does not fit code {self.code}")
        if not _TEXT.match(self.text) or not self.text:
            raise ValueError(f"reply text must be one line of printable ASCII: {self.text!r}")

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, text: str) -> Reply:
        """The same code with another text (made one printable ASCII line)."""
        clean = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
        return Reply(self.code, self.status, clean[:400] or self.text)

    def milter_text(self) -> str:
        """The text as libmilter's setreply wants it: '%' doubled."""
        return self.text.replace("%", "%%")

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


def permanent(code: int, status: str, text: str) -> Reply:
    return Reply(code, status, text)


def temporary(code: int, status: str, text: str) -> Reply:
    return Reply(code, status, text)


# -- MAIL FROM: SPF (RFC 7208 section 8, RFC 7372) ------------------------------

SPF_FAIL = permanent(
    550, "5.7.23", "SPF check failed: the sender's domain does not permit this host"
)
SPF_SOFTFAIL = permanent(
    550, "5.7.23", "SPF check soft-failed: the sender's domain discourages this host"
)
SPF_NEUTRAL = permanent(550, "5.7.23", "SPF check neutral: refused by local policy")
SPF_NONE = permanent(
    550, "5.7.23", "No SPF record for the sender's domain: refused by local policy"
)
SPF_PERMERROR = permanent(550, "5.7.24", "SPF record of the sender's domain is broken (permerror)")
SPF_TEMPERROR = temporary(
    451, "4.7.24", "SPF check could not be completed (DNS error); try again later"
)

# -- RCPT TO ------------------------------------------------------------------

UNKNOWN_RECIPIENT = permanent(550, "5.1.1", "No such recipient here")
MOVED_RECIPIENT = permanent(551, "5.1.6", "User not local; please try <{moved_to}>")
SRS_FORGED = permanent(550, "5.7.1", "Invalid SRS bounce address: its signature does not verify")
SRS_EXPIRED = permanent(550, "5.7.1", "Expired SRS bounce address: it is too old to be valid")
SRS_MALFORMED = permanent(550, "5.1.3", "Malformed SRS bounce address")
TARGET_HELD = temporary(
    451,
    "4.7.1",
    "Mail for this recipient is held while a target of this address refuses mail; "
    "unverified senders are deferred, try again later",
)

SPLIT_TRANSACTION = temporary(
    452,
    "4.5.3",
    "Too many recipients for one transaction: send this recipient in a new transaction",
)
# A forwarding address whose first target awaits its owner's confirmation
# (fwdweb): the mailbox exists but does not take mail yet (RFC 3463 X.2.1).
TARGET_PENDING = temporary(
    450,
    "4.2.1",
    "This forwarding address waits for its owner to confirm its new target; try again later",
)
TARGET_UNCONFIRMED = permanent(
    550, "5.2.1", "This forwarding address has no target: its owner never confirmed one"
)

# -- end of message -------------------------------------------------------------

SRS_REPLY_REFUSED = permanent(
    550,
    "5.7.1",
    "This bounce address relays delivery failures only; the original sender was not"
    " verified, so other mail to it is refused",
)
LOOP = permanent(554, "5.4.6", "Mail loop detected: this message was forwarded here too often")

# -- any stage: our own trouble ----------------------------------------------------

STORE_UNAVAILABLE = temporary(
    451, "4.3.0", "Forwarding state temporarily unavailable; try again later"
)
INTERNAL_ERROR = temporary(451, "4.3.0", "Temporary local problem; try again later")
SHUTTING_DOWN = temporary(451, "4.3.2", "Mail filter is restarting; try again later")
BAD_ADDRESS = permanent(553, "5.1.7", "Malformed sender address")
BAD_RECIPIENT = permanent(553, "5.1.3", "Malformed recipient address")
