"""What a signed-in recipient may do with their own forwarding record.

The pages and the JSON API are two faces of these functions (as Mailman's
web UI is a client of its REST core): each takes the recipient's own
address, never one from the request, so nobody reaches another record.
Every change is logged on ``fwdweb.audit`` as ``key=value``, without tokens.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fwdmilter import addr, confirm
from fwdmilter.config import Config
from fwdmilter.store.base import Forward, Store

__all__ = ["BadRequest", "capabilities", "delete", "update", "view"]

log = logging.getLogger("fwdweb.audit")

API_VERSION = 1


class BadRequest(ValueError):
    """The recipient asked for something that cannot be: the text says why."""


def check_address(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a mail address")
    bare = addr.strip_brackets(value.strip())
    if len(bare) > 254 or addr.split(bare) is None or any(c.isspace() for c in bare):
        raise BadRequest(f"{what} {value!r} is not a mail address")
    return bare


def view(cfg: Config, store: Store, fwd: Forward, now: float) -> dict[str, Any]:
    """The record as the recipient sees it, held mail of its target included."""
    retention = cfg.held.retention_days * 86400
    held = []
    if fwd.target:
        for e in store.held(target=addr.key(fwd.target)):
            held.append(
                {
                    "id": e.entry_id,
                    "state": e.state,
                    "sender": e.sender,
                    "held_at": e.held_at,
                    "age_seconds": round(now - e.held_at),
                    "reason": e.reason,
                    "discard_at": e.held_at + retention,
                }
            )
    pending = fwd.pending_at(now)
    return {
        "address": fwd.rcpt,
        "target": fwd.target,
        "active": fwd.active,
        "contact": fwd.contact,
        "null_sender": fwd.null_sender,
        "moved_to": fwd.moved_to,
        "pending": ({"target": pending, "expires": fwd.pending_expires} if pending else None),
        "held": held,
        "created": fwd.created,
        "updated": fwd.updated,
    }


def update(
    cfg: Config,
    store: Store,
    fwd: Forward,
    changes: dict[str, Any],
    *,
    now: float,
    client: str,
) -> Forward:
    """Apply ``changes`` (target, contact, null_sender) to the recipient's
    record. A new target becomes pending and is mailed a confirmation link;
    the contact and the null-sender choice change at once."""
    unknown = set(changes) - {"target", "contact", "null_sender"}
    if unknown:
        raise BadRequest("unknown fields: " + ", ".join(sorted(unknown)))
    if fwd.moved_to:
        raise BadRequest("this forwarding address was deleted")
    new = fwd
    if "contact" in changes:
        raw = changes["contact"]
        contact = "" if raw in ("", None) else check_address(raw, "contact")
        new = dataclasses.replace(new, contact=contact)
    if "null_sender" in changes:
        choice = changes["null_sender"]
        if choice not in ("forward", "hold"):
            raise BadRequest("null_sender must be 'forward' or 'hold'")
        new = dataclasses.replace(new, null_sender=choice)
    target = ""
    if changes.get("target") not in (None, ""):
        target = check_address(changes["target"], "target")
        domains = {d.lower() for d in cfg.forwarding.domains}
        if addr.domain_of(target) in domains or addr.key(target) == fwd.rcpt:
            raise BadRequest(
                f"target {target} is itself a forwarding address here: give the final mailbox"
            )
        if addr.key(target) == addr.key(fwd.target):
            # The target it has: nothing to confirm, and a pending change is
            # withdrawn.
            target = ""
            if fwd.pending:
                new = dataclasses.replace(new, pending="", pending_expires=0.0)
                store.delete_tokens("confirm", fwd.rcpt)
    if new != fwd:
        new = dataclasses.replace(new, updated=now)
        store.put_forward(new)
        log.info(
            "event=update rcpt=%s contact=%s null_sender=%s client=%s",
            fwd.rcpt,
            new.contact or "-",
            new.null_sender,
            client,
        )
    if target:
        new = confirm.request_target(
            store, cfg, fwd.rcpt, target, requested_by="recipient", now=now, base=new
        )
    return new


def delete(store: Store, fwd: Forward, moved_to: str, *, now: float, client: str) -> str:
    """Stop forwarding; with ``moved_to``, mail is refused with 551 naming it.
    The recipient's sessions and API tokens end with the record."""
    moved = check_address(moved_to, "new address") if moved_to else ""
    store.delete_forward(fwd.rcpt, moved, now=now)
    for kind in ("session", "api", "confirm"):
        store.delete_tokens(kind, fwd.rcpt)
    log.info("event=delete rcpt=%s moved_to=%s client=%s", fwd.rcpt, moved or "-", client)
    return moved


def capabilities(cfg: Config) -> dict[str, Any]:
    """What this forwarder does, for scripts that walk a chain of forwarders."""
    return {
        "api_version": API_VERSION,
        "forwarding_domains": list(cfg.forwarding.domains),
        "srs": {"enabled": True, "domain": cfg.srs.domain, "max_age_days": cfg.srs.max_age_days},
        "spf": {
            "checked": True,
            "actions": {
                r: getattr(cfg.spf, r)
                for r in ("fail", "softfail", "neutral", "none", "permerror", "temperror")
            },
        },
        "held_mail": {
            "policy": "bounces of unverified mail are held, never sent to the sender;"
            " the target's unverified mail is deferred until the held mail is requeued",
            "retention_days": cfg.held.retention_days,
            # Requeue needs the SRS secrets, which this service never has.
            "recipient_requeue": False,
        },
        "targets_confirmed": True,
        "confirm_hours": cfg.web.confirm_hours,
        "sign_in": "a link mailed to the forward's current target",
    }
