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

from fwdmilter import addr, confirm, table
from fwdmilter.config import Config
from fwdmilter.store.base import Forward, Store

__all__ = ["FIELDS", "BadRequest", "capabilities", "delete", "update", "view"]

log = logging.getLogger("fwdweb.audit")

API_VERSION = 1

#: The fields :func:`update` takes (the page's forms and the API's PATCH).
FIELDS = (
    "target",
    "add_target",
    "remove_target",
    "contact",
    "null_sender",
    "spf_actions",
    "rewrite",
    "add_trusted",
    "remove_trusted",
)


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
    """The record as the recipient sees it, held mail of its targets included.

    ``target`` (the first target) is the field of the one-target version;
    ``targets`` lists them all. ``policy`` is the effective policy with each
    value's source, the object of ``fwdctl forward show --json``.
    """
    retention = cfg.held.retention_days * 86400
    held = []
    for target in fwd.targets:
        for e in store.held(target=addr.key(target)):
            held.append(
                {
                    "id": e.entry_id,
                    "target": e.target,
                    "state": e.state,
                    "sender": e.sender,
                    "held_at": e.held_at,
                    "age_seconds": round(now - e.held_at),
                    "reason": e.reason,
                    "discard_at": e.held_at + retention,
                }
            )
    pending = fwd.pending_at(now)
    policy = table.effective_policy(cfg, fwd, table.configured_keys(cfg))
    return {
        "address": fwd.rcpt,
        "target": fwd.target,
        "targets": list(fwd.targets),
        "active": fwd.active,
        "contact": fwd.contact,
        "null_sender": fwd.null_sender,
        "moved_to": fwd.moved_to,
        "pending": ({"target": pending, "expires": fwd.pending_expires} if pending else None),
        "held": held,
        "policy": policy,
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
    """Apply ``changes`` to the recipient's record (docs/web.md, "The record").

    ``target``: the one target mail should go to, instead of all it has: a
    new one becomes pending (mail keeps going to the current targets until
    it is confirmed, then goes to it alone); one of the current targets is
    kept alone at once. ``add_target``: a new target that joins the others
    once confirmed. ``remove_target``: one of the targets (or the pending
    one) goes at once; never the last. One new target at a time (the store
    keeps one pending): ``target`` and ``add_target`` together are refused.
    ``contact`` and ``null_sender`` change at once, and so does the
    recipient's policy (the rules of :mod:`fwdmilter.table`, as fwdctl's):
    ``spf_actions`` (SPF result -> action or "inherit"), ``rewrite`` (or
    "inherit"), ``add_trusted`` and ``remove_trusted`` (one forwarder each).
    """
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise BadRequest("unknown fields: " + ", ".join(sorted(unknown)))
    if fwd.moved_to:
        raise BadRequest("this forwarding address was deleted")
    wanted = {k: changes.get(k) for k in ("target", "add_target", "remove_target")}
    wanted = {k: v for k, v in wanted.items() if v not in (None, "")}
    if "target" in wanted and "add_target" in wanted:
        raise BadRequest("one new target at a time: give target or add_target, not both")
    new = fwd
    if "remove_target" in wanted:
        new = _without(new, wanted["remove_target"])
    if "contact" in changes:
        raw = changes["contact"]
        contact = "" if raw in ("", None) else check_address(raw, "contact")
        new = dataclasses.replace(new, contact=contact)
    if "null_sender" in changes:
        choice = changes["null_sender"]
        if choice not in ("forward", "hold"):
            raise BadRequest("null_sender must be 'forward' or 'hold'")
        new = dataclasses.replace(new, null_sender=choice)
    new = _policy(new, changes)
    target = ""
    mode: confirm.Mode = "add" if "add_target" in wanted else "replace"
    if "target" in wanted or "add_target" in wanted:
        field = "target" if mode == "replace" else "add_target"
        target = _new_target(cfg, fwd.rcpt, wanted[field], field)
        if target in new.targets:
            # One it has: nothing to confirm, and a pending change is
            # withdrawn; "target" keeps it alone.
            if mode == "replace":
                new = dataclasses.replace(new, targets=(target,))
            new = dataclasses.replace(new, pending="", pending_expires=0.0)
            target = ""
        elif mode == "add" and len(new.targets) + 1 > cfg.forwarding.max_targets:
            raise BadRequest(f"at most {cfg.forwarding.max_targets} targets: remove one first")
    if new != fwd:
        new = dataclasses.replace(new, updated=now)
        store.put_forward(new)
        if fwd.pending and not new.pending:
            store.delete_tokens("confirm", fwd.rcpt)
        log.info(
            "event=update rcpt=%s contact=%s null_sender=%s targets=%s spf=%s rewrite=%s"
            " trusted=%s client=%s",
            fwd.rcpt,
            new.contact or "-",
            new.null_sender,
            ",".join(new.targets) or "-",
            ",".join(f"{r}:{a}" for r, a in new.spf_actions) or "-",
            new.rewrite or "-",
            ",".join(new.trusted) or "-",
            client,
        )
    if target:
        new = confirm.request_target(
            store, cfg, fwd.rcpt, target, requested_by="recipient", now=now, base=new, mode=mode
        )
    return new


def _policy(fwd: Forward, changes: dict[str, Any]) -> Forward:
    """``fwd`` with the recipient's own SPF actions, rewrite and trusted
    forwarders changed as asked; every value checked by :mod:`fwdmilter.table`."""
    try:
        if "spf_actions" in changes:
            wanted = changes["spf_actions"]
            if not isinstance(wanted, dict):
                raise BadRequest(
                    'spf_actions must be an object: {"softfail": "reject", "fail": "inherit"}'
                )
            fwd = dataclasses.replace(fwd, spf_actions=table.spf_actions(fwd.spf_actions, wanted))
        if changes.get("rewrite") not in (None, ""):
            fwd = dataclasses.replace(fwd, rewrite=table.rewrite(changes["rewrite"]))
        trusted = fwd.trusted
        gone = changes.get("remove_trusted")
        if gone not in (None, ""):
            if not isinstance(gone, str):
                raise BadRequest("remove_trusted must be one forwarder (a network or a domain)")
            forwarder = table.forwarder(gone)
            if forwarder not in trusted:
                raise BadRequest(
                    f"{forwarder} is not one of your trusted forwarders"
                    f" ({', '.join(trusted) or 'you have none'})"
                )
            trusted = tuple(t for t in trusted if t != forwarder)
        more = changes.get("add_trusted")
        if more not in (None, ""):
            if not isinstance(more, str):
                raise BadRequest("add_trusted must be one forwarder (a network or a domain)")
            forwarder = table.forwarder(more)
            if forwarder not in trusted:
                trusted = (*trusted, forwarder)
    except table.TableError as exc:
        raise BadRequest(str(exc)) from None
    return dataclasses.replace(fwd, trusted=trusted)


def _without(fwd: Forward, value: object) -> Forward:
    """``fwd`` without the target (or the pending one) ``value``; never the last."""
    gone = addr.key(check_address(value, "remove_target"))
    if gone == fwd.pending and gone not in fwd.targets:
        return dataclasses.replace(fwd, pending="", pending_expires=0.0)
    if gone not in fwd.targets:
        raise BadRequest(f"{gone} is not one of the targets")
    if len(fwd.targets) == 1:
        raise BadRequest(
            "that is the only target: give another one first, or delete the forwarding"
        )
    return dataclasses.replace(fwd, targets=tuple(t for t in fwd.targets if t != gone))


def _new_target(cfg: Config, rcpt: str, value: object, field: str) -> str:
    bare = check_address(value, field)
    try:
        return table.check_target(cfg, rcpt, bare)
    except table.TableError:
        raise BadRequest(
            f"target {bare} is itself a forwarding address here: give the final mailbox"
        ) from None


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
        # What a recipient may set for its own address (PATCH's fields).
        "recipient_policy": ["spf_actions", "rewrite", "null_sender", "trusted"],
        "max_targets": cfg.forwarding.max_targets,
        "confirm_hours": cfg.web.confirm_hours,
        "sign_in": "a link mailed to the forward's current targets",
    }
