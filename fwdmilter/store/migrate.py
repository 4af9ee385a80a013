"""Moving a site's state from one store to another (``fwdctl store migrate``).

Everything is copied: the forwarding table (moved entries too), every
message record that has not expired (keeping its expiry, so a bounce that
arrives after the move is still told apart), and every held entry, whose
counters the destination rebuilds as it stores them. Stop the milters first
(or point them at the destination at once): records written to the source
during the copy are not copied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from fwdmilter.store.base import Forward, HeldEntry, MessageRecord, Store

__all__ = ["migrate"]


def migrate(src: Store, dst: Store) -> dict[str, int]:
    """Copy everything from ``src`` into ``dst``; how many of each were read.

    The result has the keys ``forwards``, ``messages`` and ``held`` (items
    read from ``src``) and ``stored`` (items ``dst`` stored: fewer only if
    message records expired during the copy). Entries ``dst`` holds already
    are replaced by those of ``src`` with the same keys; others are kept.
    Raises the store errors of either store.
    """
    read: Counter[str] = Counter()

    def counted() -> Iterator[Forward | MessageRecord | HeldEntry]:
        for item in src.export():
            if isinstance(item, Forward):
                read["forwards"] += 1
            elif isinstance(item, MessageRecord):
                read["messages"] += 1
            else:
                read["held"] += 1
            yield item

    stored = dst.import_items(counted())
    return {
        "forwards": read["forwards"],
        "messages": read["messages"],
        "held": read["held"],
        "stored": stored,
    }
