"""Stored items as flat string maps, and back: shared by the backends.

A Redis hash and an SQLite row hold the same fields under the same names as
the dataclasses of :mod:`fwdmilter.store.base`. Reading validates what it
reads: a missing field or a state this version does not know is corrupt
data, reported as :class:`~fwdmilter.errors.StoreSchemaError` naming where
it was found, never a ``KeyError`` from deep inside the milter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Final, cast

from fwdmilter.addr import key
from fwdmilter.errors import StoreSchemaError
from fwdmilter.states import SENDER_REWRITES, SPF_ACTIONS, SPF_RESULTS, SenderRewrite
from fwdmilter.store.base import (
    Forward,
    HeldEntry,
    HeldState,
    MessageRecord,
    MessageState,
    NullSenderPolicy,
    WebToken,
    WebTokenKind,
)

__all__ = [
    "FORWARD_FIELDS",
    "HELD_FIELDS",
    "HELD_STATES",
    "MESSAGE_FIELDS",
    "MESSAGE_STATES",
    "check_state",
    "join_addresses",
    "key",
    "norm_entry",
    "norm_forward",
    "norm_record",
    "split_addresses",
    "forward_fields",
    "forward_from",
    "held_fields",
    "held_from",
    "record_fields",
    "record_from",
    "WEB_TOKEN_FIELDS",
    "check_token_kind",
    "token_fields",
    "token_from",
]

FORWARD_FIELDS: Final = (
    "rcpt",
    "target",
    "contact",
    "null_sender",
    "moved_to",
    "created",
    "updated",
    "pending",
    "pending_expires",
    "targets",
    "spf_actions",
    "rewrite",
    "trusted",
)
MESSAGE_FIELDS: Final = (
    "srs",
    "record_id",
    "msg_id",
    "state",
    "sender",
    "rcpt",
    "target",
    "created",
    "instance",
    "queue_id",
    "held_id",
    "expires",
)
HELD_FIELDS: Final = (
    "target",
    "entry_id",
    "state",
    "sender",
    "rcpt",
    "queue_id",
    "host",
    "reason",
    "held_at",
    "srs",
    "msg_id",
    "contact",
    "requeued_at",
    "alerted",
    "requeue_id",
    "alerted_to",
)
MESSAGE_STATES: Final[frozenset[str]] = frozenset({"B", "U", "R", "H", "done"})
HELD_STATES: Final[frozenset[str]] = frozenset({"H", "R", "N"})
NULL_SENDER_POLICIES: Final[frozenset[str]] = frozenset({"forward", "hold"})


def join_addresses(addresses: Iterable[str]) -> str:
    """A list of addresses as one field: one per line (no address holds a
    line break, RFC 5321 section 4.1.2)."""
    return "\n".join(addresses)


def split_addresses(text: str) -> tuple[str, ...]:
    return tuple(a for a in text.split("\n") if a)


# -- the one normal form ------------------------------------------------------
# Every address in a key position goes through fwdmilter.addr.key on its way
# in, whoever the caller is, so that a forward typed in capitals, its
# target's held entries and their counters always agree. Other addresses
# (the sender, the contact, moved_to) are kept as written: they are never
# looked up.


def norm_forward(f: Forward) -> Forward:
    """Addresses in their normal form, each target once (in the order
    given), SPF actions in RFC 7208's order of results, each once (the last
    given wins), trusted forwarders lower-case, each once."""
    actions = dict(f.spf_actions)
    return replace(
        f,
        rcpt=key(f.rcpt),
        targets=tuple(dict.fromkeys(key(t) for t in f.targets if t)),
        spf_actions=tuple((r, actions[r]) for r in SPF_RESULTS if r in actions)
        + tuple(sorted((r, a) for r, a in actions.items() if r not in SPF_RESULTS)),
        trusted=tuple(dict.fromkeys(t.strip().lower() for t in f.trusted if t.strip())),
    )


def norm_record(r: MessageRecord) -> MessageRecord:
    return replace(r, srs=key(r.srs), rcpt=key(r.rcpt), target=key(r.target))


def norm_entry(e: HeldEntry) -> HeldEntry:
    return replace(
        e,
        target=key(e.target),
        rcpt=key(e.rcpt),
        srs=key(e.srs),
        alerted_to=tuple(dict.fromkeys(key(a) for a in e.alerted_to)),
    )


def _num(value: float) -> str:
    # repr() of a float reads back exactly; Redis shows it as typed.
    return repr(float(value))


def forward_fields(f: Forward) -> dict[str, str]:
    return {
        "rcpt": f.rcpt,
        "target": f.target,
        "contact": f.contact,
        "null_sender": f.null_sender,
        "moved_to": f.moved_to,
        "created": _num(f.created),
        "updated": _num(f.updated),
        "pending": f.pending,
        "pending_expires": _num(f.pending_expires),
        # "target" keeps the first target: what a one-target reader (and an
        # admin's redis-cli HGET) finds; "targets" is the whole list.
        "targets": join_addresses(f.targets),
        "spf_actions": " ".join(f"{r}={a}" for r, a in f.spf_actions),
        "rewrite": f.rewrite,
        "trusted": join_addresses(f.trusted),
    }


def record_fields(r: MessageRecord) -> dict[str, str]:
    return {
        "srs": r.srs,
        "record_id": r.record_id,
        "msg_id": r.msg_id,
        "state": r.state,
        "sender": r.sender,
        "rcpt": r.rcpt,
        "target": r.target,
        "created": _num(r.created),
        "instance": r.instance,
        "queue_id": r.queue_id,
        "held_id": r.held_id,
        "expires": _num(r.expires),
    }


def held_fields(e: HeldEntry) -> dict[str, str]:
    return {
        "target": e.target,
        "entry_id": e.entry_id,
        "state": e.state,
        "sender": e.sender,
        "rcpt": e.rcpt,
        "queue_id": e.queue_id,
        "host": e.host,
        "reason": e.reason,
        "held_at": _num(e.held_at),
        "srs": e.srs,
        "msg_id": e.msg_id,
        "contact": e.contact,
        "requeued_at": _num(e.requeued_at),
        "alerted": "1" if e.alerted else "0",
        "requeue_id": e.requeue_id,
        "alerted_to": join_addresses(e.alerted_to),
    }


class _Reader:
    """Typed access to one stored map; errors name ``where`` and the field."""

    def __init__(self, data: Mapping[str, object], where: str) -> None:
        self.data = data
        self.where = where

    def _raw(self, name: str, default: object) -> object:
        value = self.data.get(name, default)
        if value is None:
            if default is None:
                raise StoreSchemaError(f"{self.where}: field {name!r} is missing")
            return default
        return value

    def text(self, name: str, default: str | None = None) -> str:
        return str(self._raw(name, default))

    def number(self, name: str, default: float | None = None) -> float:
        value = self._raw(name, default)
        try:
            return float(cast("str | float", value))
        except (TypeError, ValueError):
            raise StoreSchemaError(
                f"{self.where}: field {name!r} is not a number: {value!r}"
            ) from None

    def flag(self, name: str) -> bool:
        return self.text(name, "0") not in ("0", "", "False", "false")

    def choice(self, name: str, allowed: frozenset[str], default: str | None = None) -> str:
        value = self.text(name, default)
        if value not in allowed:
            known = ", ".join(sorted(allowed))
            raise StoreSchemaError(
                f"{self.where}: field {name!r} is {value!r}, not one of {known}"
                " (written by a newer fwdmilter?)"
            )
        return value


def _spf_actions(r: _Reader) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for word in r.text("spf_actions", "").split():
        result, _, action = word.partition("=")
        if result not in SPF_RESULTS or action not in SPF_ACTIONS:
            raise StoreSchemaError(
                f"{r.where}: field 'spf_actions' holds {word!r}, not RESULT=ACTION"
                f" with a result of {', '.join(SPF_RESULTS)} and an action of"
                f" {', '.join(sorted(SPF_ACTIONS))} (written by a newer fwdmilter?)"
            )
        out.append((result, action))
    return tuple(out)


def forward_from(data: Mapping[str, object], where: str) -> Forward:
    r = _Reader(data, where)
    # Schema 3 kept one target, in "target"; schema 4 keeps every target in
    # "targets" and the first in "target" too.
    targets = split_addresses(r.text("targets", "")) or tuple(
        t for t in (r.text("target", ""),) if t
    )
    return Forward(
        rcpt=r.text("rcpt"),
        targets=targets,
        contact=r.text("contact", ""),
        null_sender=cast(
            NullSenderPolicy, r.choice("null_sender", NULL_SENDER_POLICIES, "forward")
        ),
        moved_to=r.text("moved_to", ""),
        created=r.number("created", 0.0),
        updated=r.number("updated", 0.0),
        pending=r.text("pending", ""),
        pending_expires=r.number("pending_expires", 0.0),
        spf_actions=_spf_actions(r),
        rewrite=cast(SenderRewrite, r.choice("rewrite", SENDER_REWRITES, "")),
        trusted=split_addresses(r.text("trusted", "")),
    )


def record_from(data: Mapping[str, object], where: str) -> MessageRecord:
    r = _Reader(data, where)
    return MessageRecord(
        srs=r.text("srs"),
        record_id=r.text("record_id"),
        msg_id=r.text("msg_id", ""),
        state=cast(MessageState, r.choice("state", MESSAGE_STATES)),
        sender=r.text("sender", ""),
        rcpt=r.text("rcpt", ""),
        target=r.text("target", ""),
        created=r.number("created", 0.0),
        instance=r.text("instance", ""),
        queue_id=r.text("queue_id", ""),
        held_id=r.text("held_id", ""),
        expires=r.number("expires", 0.0),
    )


def held_from(data: Mapping[str, object], where: str) -> HeldEntry:
    r = _Reader(data, where)
    return HeldEntry(
        target=r.text("target"),
        entry_id=r.text("entry_id"),
        state=cast(HeldState, r.choice("state", HELD_STATES)),
        sender=r.text("sender", ""),
        rcpt=r.text("rcpt", ""),
        queue_id=r.text("queue_id", ""),
        host=r.text("host", ""),
        reason=r.text("reason", ""),
        held_at=r.number("held_at", 0.0),
        srs=r.text("srs", ""),
        msg_id=r.text("msg_id", ""),
        contact=r.text("contact", ""),
        requeued_at=r.number("requeued_at", 0.0),
        alerted=r.flag("alerted"),
        requeue_id=r.text("requeue_id", ""),
        alerted_to=split_addresses(r.text("alerted_to", "")),
    )


def check_state(state: str) -> None:
    """ValueError unless ``state`` is a message state (a caller's bug)."""
    if state not in MESSAGE_STATES:
        raise ValueError(f"not a message state: {state!r}")


# -- web tokens (fwdweb) -------------------------------------------------------------

WEB_TOKEN_FIELDS: Final = ("kind", "digest", "rcpt", "name", "data", "created", "expires")
WEB_TOKEN_KINDS: Final[frozenset[str]] = frozenset({"confirm", "signin", "session", "api"})


def token_fields(t: WebToken) -> dict[str, str]:
    return {
        "kind": t.kind,
        "digest": t.digest,
        "rcpt": t.rcpt,
        "name": t.name,
        "data": t.data,
        "created": _num(t.created),
        "expires": _num(t.expires),
    }


def token_from(data: Mapping[str, object], where: str) -> WebToken:
    r = _Reader(data, where)
    return WebToken(
        kind=cast(WebTokenKind, r.choice("kind", WEB_TOKEN_KINDS)),
        digest=r.text("digest"),
        rcpt=r.text("rcpt"),
        name=r.text("name", ""),
        data=r.text("data", ""),
        created=r.number("created", 0.0),
        expires=r.number("expires", 0.0),
    )


def check_token_kind(kind: str) -> None:
    """ValueError unless ``kind`` is a web token kind (a caller's bug)."""
    if kind not in WEB_TOKEN_KINDS:
        raise ValueError(f"not a web token kind: {kind!r}")
