"""fwdctl: the admin's tool.

    fwdctl [--config PATH] srs forward|reverse [ADDR...]
    fwdctl forward set RCPT TARGET [TARGET...] [--contact ADDR]
                       [--null-sender forward|hold] [--confirm | --no-confirm]
    fwdctl forward add-target RCPT TARGET... [--confirm | --no-confirm]
    fwdctl forward remove-target RCPT TARGET...
    fwdctl forward policy RCPT [--spf-RESULT reject|tempfail|accept|inherit]...
                       [--rewrite srs|when-needed|none|inherit] [--null-sender forward|hold]
    fwdctl forward trust|untrust RCPT FORWARDER
    fwdctl forward show RCPT [--json]
    fwdctl forward list [--json]
    fwdctl forward delete RCPT [--moved-to ADDR]
    fwdctl forward import FILE|- [--dry-run] [--skip-unsupported]
    fwdctl forward export
    fwdctl held list [--target ADDR | --domain DOMAIN] [--state H|R|N] [--json]
    fwdctl held show ID [--json]
    fwdctl held requeue --target ADDR | --domain DOMAIN | --id ID [--dry-run]
    fwdctl held drop --target ADDR | --id ID [--dry-run]
    fwdctl held expire [--dry-run]
    fwdctl held release [--dry-run]
    fwdctl held check [--fix] [--json]
    fwdctl explain --client IP --helo NAME --from SENDER [--auth USER] [--json] RCPT...
    fwdctl stats [--json]
    fwdctl store migrate --to URL

Without ADDR, the srs commands read one address per line from standard
input; results go to standard output, one line each, and a refusal prints
an error line naming the address and the reason to standard error.

Every ``held`` command takes ``--instance NAME``: act on the entries of
that milter instance (``milter.instance`` of a host that was renamed or no
longer runs) instead of this host's. ``ID`` is the entry id that ``held
list`` prints (``INSTANCE/QUEUEID``).

Exit status: 0 done; 1 something was refused or failed (each said on
standard error), or ``held check`` found something to mend; 2 the
configuration, the store or the MTA cannot be used. No error prints a
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final, TextIO

from fwdmilter import __version__, addr, config, table, virtual
from fwdmilter import confirm as confirming
from fwdmilter.errors import FwdmilterError
from fwdmilter.runtime import make_srs
from fwdmilter.states import SPF_RESULTS
from fwdmilter.store.base import Forward, HeldEntry, Store
from srs import ALIAS_HOST, SRSError, alias_key, local_part_too_long

__all__ = ["main"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2


class UsageError(FwdmilterError):
    """The command line asks for something that cannot be done."""


def _inputs(args: Sequence[str], stdin: TextIO) -> Iterable[str]:
    if args:
        yield from args
        return
    for line in stdin:
        if item := line.strip():
            yield item


def _map_addresses(fn: Callable[[str], str], addrs: Iterable[str], out: TextIO, err: TextIO) -> int:
    status = EXIT_OK
    for address in addrs:
        try:
            out.write(fn(address) + "\n")
        except SRSError as exc:
            err.write(f"fwdctl: {address}: {type(exc).__name__}: {exc}\n")
            status = EXIT_REFUSED
    return status


def _store(cfg: config.Config) -> Store:
    from fwdmilter.store import open_store  # noqa: PLC0415 - srs commands need no store

    return open_store(cfg.store, instance=cfg.milter.instance)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400 * 2:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")


# -- srs -------------------------------------------------------------------------


def cmd_srs(args: argparse.Namespace, cfg: config.Config) -> int:
    rewriter = make_srs(cfg)
    store: Store | None = None

    def forward(sender: str) -> str:
        # As the milter writes it: the short form where the standard one
        # would pass 64 octets of local part (RFC 5321 section 4.5.3.1.1).
        srs = rewriter.forward(sender)
        if local_part_too_long(srs):
            srs = rewriter.forward(f"{alias_key(sender)}@{ALIAS_HOST}")
        return srs

    def reverse(address: str) -> str:
        nonlocal store
        parsed = rewriter.parse(address)
        if parsed.host != ALIAS_HOST:
            return rewriter.reverse(address)
        # A short form names its sender only in the message records.
        if store is None:
            store = _store(cfg)
        for rec in store.messages(addr.key(address)):
            if rec.sender and alias_key(rec.sender) == parsed.user.upper():
                return rec.sender
        raise SRSError(
            "a short form, whose sender only the message records know, and no record of it"
            " is kept (expired, or no message went out with it)"
        )

    try:
        fn = forward if args.srs_command == "forward" else reverse
        return _map_addresses(fn, _inputs(args.addresses, sys.stdin), sys.stdout, sys.stderr)
    finally:
        if store is not None:
            store.close()


# -- forward -----------------------------------------------------------------------


def _check_address(value: str, what: str) -> str:
    try:
        return table.check_address(value, what)
    except table.TableError as exc:
        raise UsageError(str(exc)) from None


def _forward_dict(f: Forward) -> dict[str, Any]:
    # ``target`` (the first target) is the field of the one-target version.
    return asdict(f) | {
        "target": f.target,
        "active": f.active,
        "pending_active": bool(f.pending_at(time.time())),
    }


def _forward_line(f: Forward) -> str:
    if f.moved_to:
        return f"{f.rcpt}  moved to {f.moved_to}"
    extra = f"  contact={f.contact}" if f.contact else ""
    extra += "  null-sender=hold" if f.null_sender == "hold" else ""
    if f.pending:
        state = "pending" if f.pending_expires > time.time() else "expired"
        extra += f"  {state}={f.pending} (until {_when(f.pending_expires)})"
    return f"{f.rcpt} -> {', '.join(f.targets) or '(none)'}{extra}"


def _policy_lines(policy: dict[str, Any]) -> list[str]:
    lines = [f"spf {r}: {v['value']} ({v['source']})" for r, v in policy["spf"].items()]
    rewrite = policy["rewrite"]
    note = f"; {rewrite['note']}" if "note" in rewrite else ""
    lines.append(f"rewrite: {rewrite['value']} ({rewrite['source']}{note})")
    lines.append(
        f"null sender: {policy['null_sender']['value']} ({policy['null_sender']['source']})"
    )
    for name, key in (("trusted forwarders", "trusted"), ("trusted.networks", "trusted_networks")):
        value = ", ".join(policy[key]["value"]) or "none"
        lines.append(f"{name}: {value} ({policy[key]['source']})")
    return lines


def _warn_rewrite(cfg: config.Config, fwd: Forward) -> None:
    if fwd.rewrite == "when-needed" and not cfg.srs.outbound_ips:
        print(
            f"fwdctl: warning: {fwd.rcpt}: rewrite when-needed acts as srs while"
            " srs.outbound_ips is empty (the milter cannot tell which senders permit this host)",
            file=sys.stderr,
        )


def _live(store: Store, rcpt: str) -> Forward:
    found = store.get_forward(rcpt)
    if found is None or found.moved_to:
        raise UsageError(f"{rcpt}: no such forwarding address (fwdctl forward set makes one)")
    return found


def _base(old: Forward | None, rcpt: str, now: float) -> Forward:
    """The entry a write starts from: the stored one (its contact, policy and
    trusted forwarders kept), or a new one; never a moved one."""
    if old is None:
        return Forward(rcpt, created=now, updated=now)
    return dataclasses.replace(old, moved_to="", updated=now)


def _one_new(new: Sequence[str], rcpt: str) -> None:
    if len(new) > 1:
        raise UsageError(
            f"{rcpt}: {len(new)} new targets ({', '.join(new)}) while confirmation is on:"
            " each new target confirms on its own, so add them one at a time"
            " (fwdctl forward add-target RCPT TARGET), or give --no-confirm"
        )


def _request(
    store: Store, cfg: config.Config, base: Forward, target: str, mode: confirming.Mode, now: float
) -> int:
    table.check_count(cfg, base.rcpt, len(base.targets) + 1 if mode == "add" else 1)
    pending = confirming.request_target(
        store, cfg, base.rcpt, target, requested_by="admin", now=now, base=base, mode=mode
    )
    print(_forward_line(pending))
    return EXIT_OK


def _put(store: Store, new: Forward, old: Forward | None) -> None:
    """Store ``new``; withdraw the confirmation link of a pending target it dropped."""
    store.put_forward(new)
    if old is not None and old.pending and not new.pending:
        store.delete_tokens("confirm", new.rcpt)


def _forward_set(args: argparse.Namespace, cfg: config.Config, store: Store, rcpt: str) -> int:
    targets = table.check_targets(cfg, rcpt, args.targets)
    contact = _check_address(args.contact, "contact") if args.contact else ""
    if addr.domain_of(rcpt) not in {d.lower() for d in cfg.forwarding.domains}:
        print(
            f"fwdctl: warning: {rcpt} is not in forwarding.domains; the milter "
            "will not look it up until its domain is",
            file=sys.stderr,
        )
    now = time.time()
    old = store.get_forward(rcpt)
    base = _base(old, rcpt, now)
    if args.contact is not None:
        base = dataclasses.replace(base, contact=contact)
    if args.null_sender:
        base = dataclasses.replace(base, null_sender=args.null_sender)
    confirm = cfg.forwarding.confirm_targets if args.confirm is None else args.confirm
    if confirm:
        current = base.targets
        new = [t for t in targets if t not in current]
        _one_new(new, rcpt)
        if new:
            # What stays of the current targets stays at once (removing needs
            # no confirmation) and the new one joins it once confirmed; if
            # nothing stays, mail keeps going to the current targets until the
            # new one replaces them.
            kept = tuple(t for t in targets if t in current)
            mode: confirming.Mode = "add" if kept else "replace"
            return _request(
                store, cfg, dataclasses.replace(base, targets=kept or current), new[0], mode, now
            )
    fresh = dataclasses.replace(base, targets=targets, pending="", pending_expires=0.0)
    _put(store, fresh, old)
    print(_forward_line(store.get_forward(rcpt) or fresh))
    return EXIT_OK


def _forward_add(args: argparse.Namespace, cfg: config.Config, store: Store, rcpt: str) -> int:
    live = _live(store, rcpt)
    wanted = table.check_targets(cfg, rcpt, args.targets)
    new = [t for t in wanted if t not in live.targets]
    if not new:
        print(f"fwdctl: {rcpt}: {', '.join(wanted)} already forwarded to", file=sys.stderr)
        print(_forward_line(live))
        return EXIT_OK
    now = time.time()
    confirm = cfg.forwarding.confirm_targets if args.confirm is None else args.confirm
    if confirm:
        _one_new(new, rcpt)
        return _request(store, cfg, dataclasses.replace(live, updated=now), new[0], "add", now)
    targets = (*live.targets, *new)
    table.check_count(cfg, rcpt, len(targets))
    store.put_forward(dataclasses.replace(live, targets=targets, updated=now))
    print(_forward_line(store.get_forward(rcpt) or live))
    return EXIT_OK


def _forward_remove(args: argparse.Namespace, cfg: config.Config, store: Store, rcpt: str) -> int:
    live = _live(store, rcpt)
    gone = [addr.key(_check_address(t, "target")) for t in args.targets]
    unknown = [t for t in gone if t not in live.targets and t != live.pending]
    if unknown:
        raise UsageError(
            f"{rcpt}: not a target of it: {', '.join(unknown)}"
            f" (its targets: {', '.join(live.targets) or 'none'})"
        )
    left = tuple(t for t in live.targets if t not in gone)
    if not left:
        raise UsageError(
            f"{rcpt}: that would leave it no target; to stop forwarding it, use"
            f" fwdctl forward delete {rcpt} (with --moved-to ADDR if it has a new address)"
        )
    new = dataclasses.replace(live, targets=left, updated=time.time())
    if live.pending in gone:
        new = dataclasses.replace(new, pending="", pending_expires=0.0)
    _put(store, new, live)
    print(_forward_line(store.get_forward(rcpt) or new))
    return EXIT_OK


def _forward_policy(args: argparse.Namespace, cfg: config.Config, store: Store, rcpt: str) -> int:
    live = _live(store, rcpt)
    actions = dict(live.spf_actions)
    for result in SPF_RESULTS:
        choice = getattr(args, f"spf_{result}")
        if choice == "inherit":
            actions.pop(result, None)
        elif choice:
            actions[result] = choice
    new = dataclasses.replace(
        live,
        spf_actions=tuple((r, actions[r]) for r in SPF_RESULTS if r in actions),
    )
    if args.rewrite:
        new = dataclasses.replace(new, rewrite="" if args.rewrite == "inherit" else args.rewrite)
    if args.null_sender:
        new = dataclasses.replace(new, null_sender=args.null_sender)
    if new != live:
        new = dataclasses.replace(new, updated=time.time())
        store.put_forward(new)
        new = store.get_forward(rcpt) or new
    _warn_rewrite(cfg, new)
    print(_forward_line(new))
    for line in _policy_lines(table.effective_policy(cfg, new, table.configured_keys(cfg))):
        print(f"  {line}")
    return EXIT_OK


def _forward_trust(args: argparse.Namespace, cfg: config.Config, store: Store, rcpt: str) -> int:
    live = _live(store, rcpt)
    forwarder = table.forwarder(args.forwarder)
    if args.forward_command == "trust":
        trusted = live.trusted if forwarder in live.trusted else (*live.trusted, forwarder)
    else:
        if forwarder not in live.trusted:
            raise UsageError(
                f"{rcpt}: {forwarder} is not one of its trusted forwarders"
                f" ({', '.join(live.trusted) or 'it has none'})"
            )
        trusted = tuple(t for t in live.trusted if t != forwarder)
    if trusted != live.trusted:
        store.put_forward(dataclasses.replace(live, trusted=trusted, updated=time.time()))
        trusted = (store.get_forward(rcpt) or live).trusted
    print(f"{rcpt} trusted forwarders: {', '.join(trusted) or 'none'}")
    return EXIT_OK


def _forward_show(args: argparse.Namespace, cfg: config.Config, store: Store, rcpt: str) -> int:
    found = store.get_forward(rcpt)
    if found is None:
        print(f"fwdctl: {rcpt}: no such forwarding address", file=sys.stderr)
        return EXIT_REFUSED
    policy = table.effective_policy(cfg, found, table.configured_keys(cfg))
    if args.json:
        _print_json(_forward_dict(found) | {"policy": policy})
        return EXIT_OK
    print(_forward_line(found))
    print(f"  created {_when(found.created)}, updated {_when(found.updated)}")
    if not found.moved_to:
        for line in _policy_lines(policy):
            print(f"  {line}")
    return EXIT_OK


def _forward_delete(args: argparse.Namespace, cfg: config.Config, store: Store, rcpt: str) -> int:
    moved = _check_address(args.moved_to, "moved-to address") if args.moved_to else ""
    if not store.delete_forward(rcpt, moved, now=time.time()):
        print(f"fwdctl: {rcpt}: no such forwarding address", file=sys.stderr)
        return EXIT_REFUSED
    print(
        f"{rcpt} deleted" + (f"; mail for it is refused with 551 naming {moved}" if moved else "")
    )
    return EXIT_OK


#: The header of ``forward export``, a comment that import skips.
EXPORT_HEADER: Final = (
    "The forwarding table of fwdmilter (fwdctl forward export), Postfix virtual(5) format.\n"
    "Only the targets: not the contacts, policies and trusted forwarders, nor pending\n"
    "targets; moved recipients (refused with 551) are not listed."
)


def _forward_export(args: argparse.Namespace, cfg: config.Config, store: Store) -> int:
    active = sorted((f for f in store.list_forwards() if f.active), key=lambda f: f.rcpt)
    written: list[Forward] = []
    for f in active:
        why = virtual.unwritable(f.rcpt, key=True) or next(
            (f"target {t}: {w}" for t in f.targets if (w := virtual.unwritable(t))), ""
        )
        if why:
            print(f"fwdctl: {f.rcpt}: not exported: {why}", file=sys.stderr)
        else:
            written.append(f)
    sys.stdout.write(virtual.format_entries(((f.rcpt, f.targets) for f in written), EXPORT_HEADER))
    return EXIT_OK if len(written) == len(active) else EXIT_REFUSED


def _import_plan(
    cfg: config.Config, text: str, skip_unsupported: bool
) -> tuple[list[tuple[int, str, tuple[str, ...]]], list[str], list[str]]:
    """(line, recipient, targets) to import, the bad lines, the skipped ones."""
    entries, errors = virtual.parse(text)
    bad = [(e.lineno, e.text) for e in errors]
    skipped: list[tuple[int, str]] = []
    plan: list[tuple[int, str, tuple[str, ...]]] = []
    first: dict[str, int] = {}
    domains = {d.lower().rstrip(".") for d in cfg.forwarding.domains}
    for e in entries:
        unsupported = ""
        if e.key.startswith("@"):
            unsupported = (
                f"{e.key}: a catch-all (@domain) has no place in the forwarding table,"
                " which forwards addresses one by one"
            )
        elif "@" not in e.key:
            unsupported = (
                f"{e.key}: a key without @ (a local name, or a virtual alias domain line)"
                " is no forwarding address"
            )
        elif addr.domain_of(e.key) not in domains:
            unsupported = f"{e.key}: not in forwarding.domains, so the milter never looks it up"
        elif local := [t for t in e.targets if "@" not in t]:
            unsupported = (
                f"{e.key}: target {local[0]} is a local name (no @), which only the MTA"
                " could resolve"
            )
        if unsupported:
            (skipped if skip_unsupported else bad).append((e.lineno, unsupported))
            continue
        try:
            rcpt = addr.key(table.check_address(e.key, "recipient"))
            targets = table.check_targets(cfg, rcpt, e.targets)
        except table.TableError as exc:
            bad.append((e.lineno, str(exc)))
            continue
        if rcpt in first:
            bad.append((e.lineno, f"{rcpt}: given already on line {first[rcpt]}"))
            continue
        first[rcpt] = e.lineno
        plan.append((e.lineno, rcpt, targets))
    return (
        plan,
        [f"line {n}: {text}" for n, text in sorted(bad)],
        [f"line {n}: skipped: {text}" for n, text in sorted(skipped)],
    )


def _forward_import(args: argparse.Namespace, cfg: config.Config, store: Store) -> int:
    name = "standard input" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not UTF-8") from None
    plan, bad, skipped = _import_plan(cfg, text, args.skip_unsupported)
    for line in skipped:
        print(f"fwdctl: {name}: {line}", file=sys.stderr)
    if bad:
        for line in bad:
            print(f"fwdctl: {name}: {line}", file=sys.stderr)
        print(f"fwdctl: {name}: nothing imported: {len(bad)} bad line(s)", file=sys.stderr)
        return EXIT_REFUSED
    now = time.time()
    counts = {"added": 0, "changed": 0, "unchanged": 0}
    prefix = "dry run: " if args.dry_run else ""
    for _, rcpt, targets in plan:
        old = store.get_forward(rcpt)
        if old is not None and not old.moved_to and old.targets == targets:
            counts["unchanged"] += 1
            continue
        if old is None or old.moved_to:
            counts["added"] += 1
            print(f"{prefix}added {rcpt} -> {', '.join(targets)}")
        else:
            counts["changed"] += 1
            before = ", ".join(old.targets) or "(none)"
            print(f"{prefix}changed {rcpt}: {before} -> {', '.join(targets)}")
        if args.dry_run:
            continue
        new = dataclasses.replace(_base(old, rcpt, now), targets=targets)
        if new.pending in targets:
            new = dataclasses.replace(new, pending="", pending_expires=0.0)
        _put(store, new, old)
    summary = ", ".join(f"{n} {what}" for what, n in counts.items())
    print(f"{prefix}{summary}" + (" (nothing was changed)" if args.dry_run else ""))
    return EXIT_OK


_FORWARD_COMMANDS: Final[
    dict[str, Callable[[argparse.Namespace, config.Config, Store, str], int]]
] = {
    "set": _forward_set,
    "add-target": _forward_add,
    "remove-target": _forward_remove,
    "policy": _forward_policy,
    "trust": _forward_trust,
    "untrust": _forward_trust,
    "show": _forward_show,
    "delete": _forward_delete,
}


def cmd_forward(args: argparse.Namespace, cfg: config.Config) -> int:
    store = _store(cfg)
    try:
        sub = args.forward_command
        if sub == "list":
            forwards = store.list_forwards()
            if args.json:
                _print_json([_forward_dict(f) for f in forwards])
            else:
                for f in forwards:
                    print(_forward_line(f))
            return EXIT_OK
        if sub == "export":
            return _forward_export(args, cfg, store)
        if sub == "import":
            return _forward_import(args, cfg, store)
        rcpt = addr.key(_check_address(args.rcpt, "recipient"))
        return _FORWARD_COMMANDS[sub](args, cfg, store, rcpt)
    except table.TableError as exc:
        # The table's rules refuse what was asked: its text says why.
        raise UsageError(str(exc)) from None
    finally:
        store.close()


# -- held --------------------------------------------------------------------------


def _held_dict(e: HeldEntry, now: float) -> dict[str, Any]:
    return asdict(e) | {"age_seconds": round(now - e.held_at)}


def _held_line(e: HeldEntry, now: float) -> str:
    where = "" if e.entry_id == f"{e.host}/{e.queue_id}" else f"  queue {e.host}/{e.queue_id}"
    return (
        f"{e.state}  {_age(now - e.held_at):>4}  {e.target}  from <{e.sender}>  "
        f"id {e.entry_id}{where}  {e.reason}"
    )


def _selected(store: Store, args: argparse.Namespace) -> list[HeldEntry]:
    target = addr.key(args.target) if getattr(args, "target", None) else None
    domain = args.domain.lower().rstrip(".") if getattr(args, "domain", None) else None
    entries = store.held(target=target, domain=domain)
    if getattr(args, "id", None):
        entries = [e for e in entries if _is(e, args.id)]
    if getattr(args, "state", None):
        entries = [e for e in entries if e.state == args.state]
    return entries


def _is(entry: HeldEntry, wanted: str) -> bool:
    """``wanted`` names the entry: its id, or HOST/QUEUEID of its held message."""
    return wanted in (entry.entry_id, f"{entry.host}/{entry.queue_id}")


def _by_id(store: Store, wanted: str) -> list[HeldEntry]:
    found = [e for e in store.held() if _is(e, wanted)]
    if not found:
        raise UsageError(f"{wanted}: no such held entry (see fwdctl held list)")
    return found


def _report(outcomes: Sequence[Any], dry_run: bool = False) -> int:
    status = EXIT_OK
    for o in outcomes:
        line = f"{o.entry.target} {o.entry.entry_id}: {o.message}"
        if o.done:
            print(("dry run: " if dry_run else "") + line)
        else:
            print(f"fwdctl: {line}", file=sys.stderr)
            status = EXIT_REFUSED
    return status


def _show(e: HeldEntry, now: float) -> None:
    print(f"{e.entry_id}  {e.state}  {e.target}")
    for name, value in (
        ("sender", f"<{e.sender}>"),
        ("recipient", e.rcpt or "-"),
        ("held message", f"{e.host}/{e.queue_id}"),
        ("reason", e.reason),
        ("held", f"{_when(e.held_at)} ({_age(now - e.held_at)} ago)"),
        ("requeued", _when(e.requeued_at)),
        ("requeued as", e.requeue_id or "-"),
        ("srs", e.srs or "-"),
        ("contact", e.contact or "-"),
        (
            "alerted",
            ("yes" if e.alerted else "not yet")
            + (" (" + ", ".join(e.alerted_to) + ")" if e.alerted_to else ""),
        ),
    ):
        print(f"  {name + ':':<13} {value}")


def cmd_held(args: argparse.Namespace, cfg: config.Config) -> int:
    from fwdmilter import held  # noqa: PLC0415
    from fwdmilter.mta import open_mta  # noqa: PLC0415

    store = _store(cfg)
    try:
        now = args.now if getattr(args, "now", None) is not None else time.time()
        instance = getattr(args, "instance", None) or cfg.milter.instance
        dry_run = bool(getattr(args, "dry_run", False))
        sub = args.held_command
        if sub == "list":
            entries = _selected(store, args)
            if args.instance:
                entries = [e for e in entries if e.host == args.instance]
            if args.json:
                _print_json([_held_dict(e, now) for e in entries])
                return EXIT_OK
            if not entries:
                print("nothing is held")
            for e in entries:
                print(_held_line(e, now))
            return EXIT_OK
        if sub == "show":
            found = _by_id(store, args.entry)
            if args.json:
                _print_json([_held_dict(e, now) for e in found])
            else:
                for e in found:
                    _show(e, now)
            return EXIT_OK
        mta = open_mta(cfg.mta)
        if sub == "requeue":
            if not (args.target or args.domain or args.id):
                raise UsageError("held requeue needs --target ADDR, --domain DOMAIN or --id ID")
            entries = (
                _by_id(store, args.id) if args.id and not args.target else _selected(store, args)
            )
            outcomes = held.requeue(
                cfg, store, mta, make_srs(cfg), entries, now, instance=instance, dry_run=dry_run
            )
            if not outcomes:
                print("nothing is held for that")
        elif sub == "drop":
            if not (args.target or args.id):
                raise UsageError("held drop needs --target ADDR or --id ID")
            entries = (
                _by_id(store, args.id) if args.id and not args.target else _selected(store, args)
            )
            outcomes = held.drop(cfg, store, mta, entries, instance=instance, dry_run=dry_run)
            if not outcomes:
                print("nothing is held for that")
        elif sub == "release":
            outcomes = held.release(cfg, store, mta, instance=instance, dry_run=dry_run)
        elif sub == "check":
            return _check(cfg, store, mta, now, instance, args)
        else:  # expire
            outcomes = held.expire(cfg, store, mta, now, instance=instance, dry_run=dry_run)
            if not dry_run:
                outcomes += [
                    held.Outcome(e, ok, text)
                    for e, ok, text in held.resend_alerts(cfg, store, instance)
                ]
        return _report(outcomes, dry_run)
    finally:
        store.close()


def _check(
    cfg: config.Config,
    store: Store,
    mta: Any,
    now: float,
    instance: str,
    args: argparse.Namespace,
) -> int:
    from fwdmilter import held  # noqa: PLC0415

    report, outcomes = held.check(cfg, store, mta, now, instance=instance, fix=args.fix)
    if args.json:
        _print_json(
            {
                "instance": instance,
                "missing": [e.entry_id for e in report.missing],
                "orphans": list(report.orphans),
                "fixed": [
                    o.entry.entry_id for o in outcomes if o.done and o.entry in report.missing
                ],
                "released": [o.entry.entry_id for o in outcomes if o.done and o.entry.state == "R"],
            }
        )
    else:
        for q in report.orphans:
            print(
                f"fwdctl: held message {instance}/{q} is listed by no entry: left in the hold"
                f" queue (look at it with the MTA's tools; delete it there if it is not needed)",
                file=sys.stderr,
            )
        status = _report(outcomes)
        if not (report.orphans or report.missing or outcomes):
            print(f"the hold queue of {instance} and the store agree")
        if status != EXIT_OK:
            return status
    mended = args.fix and not report.orphans
    return EXIT_OK if mended or not (report.orphans or report.missing) else EXIT_REFUSED


# -- stats and store -----------------------------------------------------------------


def cmd_stats(args: argparse.Namespace, cfg: config.Config) -> int:
    store = _store(cfg)
    try:
        stats = store.stats()
    finally:
        store.close()
    if args.json:
        data = asdict(stats)
        data["held_by_target"] = {t: {"H": h, "R": r} for t, (h, r) in stats.held_by_target.items()}
        _print_json(data)
        return EXIT_OK
    print(f"forwarding addresses: {stats.forwards} active, {stats.moved} moved")
    states = ", ".join(f"{k}={v}" for k, v in sorted(stats.messages.items())) or "none"
    print(f"message records: {states}")
    held_states = ", ".join(f"{k}={v}" for k, v in sorted(stats.held.items())) or "none"
    print(f"held entries: {held_states}")
    for target, (h, r) in sorted(stats.held_by_target.items()):
        print(f"  {target}: H={h} R={r}")
    return EXIT_OK


def cmd_store(args: argparse.Namespace, cfg: config.Config) -> int:
    from fwdmilter.store import open_store  # noqa: PLC0415
    from fwdmilter.store.migrate import migrate  # noqa: PLC0415

    dst_settings = config.with_store_url(cfg.store, args.to)
    src = _store(cfg)
    try:
        dst = open_store(dst_settings, instance=cfg.milter.instance)
        try:
            counts = migrate(src, dst)
        finally:
            dst.close()
    finally:
        src.close()
    print(
        "copied "
        + ", ".join(f"{n} {what}" for what, n in counts.items())
        + f" from {config.mask_url(cfg.store.url)} to {config.mask_url(args.to)}"
    )
    return EXIT_OK


# -- explain -----------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace, cfg: config.Config) -> int:
    from fwdmilter.explain import explain  # noqa: PLC0415 - needs DNS and the store
    from fwdmilter.runtime import policy_settings  # noqa: PLC0415
    from fwdmilter.spf import SPFChecker  # noqa: PLC0415

    sender = "" if args.sender in ("", "<>") else _check_address(args.sender, "sender")
    rcpts = [_check_address(r, "recipient") for r in args.rcpts]
    store = _store(cfg)
    try:
        stages = explain(
            policy_settings(cfg),
            store,
            SPFChecker(cfg.dns),
            client=args.client,
            helo=args.helo,
            sender=sender,
            rcpts=rcpts,
            auth_user=args.auth or "",
            outbound_ips=cfg.srs.outbound_ips,
        )
    finally:
        store.close()
    if args.json:
        _print_json([asdict(s) for s in stages])
        return EXIT_OK
    for s in stages:
        print(f"{s.command}: {s.reply}")
        for line in s.why:
            print(f"    {line}")
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------


def _add_explain(sub: Any) -> None:
    p_explain = sub.add_parser(
        "explain", help="what the milter would answer at each stage, and why (sends nothing)"
    )
    p_explain.add_argument("--client", required=True, metavar="IP", help="the client's address")
    p_explain.add_argument("--helo", required=True, metavar="NAME", help="its HELO name")
    p_explain.add_argument(
        "--from", dest="sender", required=True, metavar="SENDER", help="MAIL FROM ('' for <>)"
    )
    p_explain.add_argument("--auth", metavar="USER", help="as if the client authenticated")
    p_explain.add_argument("--json", action="store_true")
    p_explain.add_argument("rcpts", nargs="+", metavar="RCPT")
    p_explain.set_defaults(func=cmd_explain)


def _held_parser(sub: Any) -> None:
    p_held = sub.add_parser("held", help="mail held instead of bounced to unverified senders")
    held_sub = p_held.add_subparsers(
        dest="held_command",
        required=True,
        metavar="list|show|requeue|drop|expire|release|check",
    )

    def held_command(name: str, text: str, dry_run: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = held_sub.add_parser(name, help=text)
        p.add_argument(
            "--instance",
            metavar="NAME",
            help="act on the entries of this milter instance (default: milter.instance)",
        )
        if dry_run:
            p.add_argument(
                "--dry-run", action="store_true", help="say what would be done; change nothing"
            )
        return p

    for name, text in (
        ("list", "list held and requeued mail"),
        ("requeue", "send held mail again, once the target is fixed"),
        ("drop", "discard held mail now (nobody is told)"),
    ):
        p = held_command(name, text, dry_run=name != "list")
        group = p.add_mutually_exclusive_group()
        group.add_argument("--target", metavar="ADDR", help="only mail for this target")
        if name != "drop":
            group.add_argument("--domain", metavar="DOMAIN", help="only mail for targets in DOMAIN")
        else:
            p.set_defaults(domain=None)
        p.add_argument("--id", metavar="ID", help="only this entry (its id, as listed)")
        if name == "list":
            p.add_argument("--state", choices=("H", "R", "N"), help="only entries in this state")
            p.add_argument("--json", action="store_true")
    p = held_command("show", "everything about one held entry", dry_run=False)
    p.add_argument("entry", metavar="ID", help="the entry's id, as listed")
    p.add_argument("--json", action="store_true")
    p = held_command("expire", "discard held mail older than held.retention_days")
    p.add_argument("--now", type=float, metavar="UNIXTIME", help=argparse.SUPPRESS)
    held_command("release", "release requeued mail the MTA has delivered")
    p = held_command("check", "compare the MTA's hold queue with the store", dry_run=False)
    p.add_argument("--fix", action="store_true", help="drop the entries whose held message is gone")
    p.add_argument("--json", action="store_true")
    p.add_argument("--now", type=float, metavar="UNIXTIME", help=argparse.SUPPRESS)
    p_held.set_defaults(func=cmd_held)


def _forward_parser(sub: Any) -> None:
    p_fwd = sub.add_parser("forward", help="the forwarding table")
    fwd_sub = p_fwd.add_subparsers(
        dest="forward_command",
        required=True,
        metavar="set|add-target|remove-target|policy|trust|untrust|show|list|delete|import|export",
    )

    def confirm_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--confirm",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="mail a new target a confirmation link; forward to it only once confirmed"
            " (one new target at a time; default: forwarding.confirm_targets)",
        )

    null_sender = {
        "choices": ("forward", "hold"),
        "help": "what to do with bounces (null sender) for RCPT (default: forward)",
    }
    p = fwd_sub.add_parser("set", help="forward RCPT's mail to TARGET (or to several)")
    p.add_argument("rcpt", metavar="RCPT")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="the targets, replacing any before")
    p.add_argument("--contact", metavar="ADDR", help="alternate contact told when mail is held")
    p.add_argument("--null-sender", **null_sender)
    confirm_option(p)
    p = fwd_sub.add_parser("add-target", help="forward RCPT's mail to more targets")
    p.add_argument("rcpt", metavar="RCPT")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    confirm_option(p)
    p = fwd_sub.add_parser("remove-target", help="stop forwarding RCPT's mail to some targets")
    p.add_argument("rcpt", metavar="RCPT")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p = fwd_sub.add_parser(
        "policy", help="RCPT's own SPF actions, sender rewrite and null-sender choice"
    )
    p.add_argument("rcpt", metavar="RCPT")
    for result in SPF_RESULTS:
        p.add_argument(
            f"--spf-{result}",
            choices=("reject", "tempfail", "accept", "inherit"),
            help=f"the action for SPF {result} (inherit: spf.{result})",
        )
    p.add_argument(
        "--rewrite",
        choices=("srs", "when-needed", "none", "inherit"),
        help="the envelope sender of verified mail (U mail is always rewritten;"
        " inherit: srs.rewrite)",
    )
    p.add_argument("--null-sender", **null_sender)
    for name, text in (
        ("trust", "let RCPT's mail from FORWARDER skip the sender's SPF verdict"),
        ("untrust", "stop trusting FORWARDER for RCPT"),
    ):
        p = fwd_sub.add_parser(name, help=text)
        p.add_argument("rcpt", metavar="RCPT")
        p.add_argument("forwarder", metavar="FORWARDER", help="a network (CIDR) or a domain")
    p = fwd_sub.add_parser("show", help="one forwarding address and its effective policy")
    p.add_argument("rcpt", metavar="RCPT")
    p.add_argument("--json", action="store_true")
    p = fwd_sub.add_parser("list", help="list every forwarding address")
    p.add_argument("--json", action="store_true")
    p = fwd_sub.add_parser("delete", help="stop forwarding RCPT")
    p.add_argument("rcpt", metavar="RCPT")
    p.add_argument("--moved-to", metavar="ADDR", help="refuse RCPT's mail with 551 naming ADDR")
    p = fwd_sub.add_parser("import", help="set targets from a Postfix virtual(5) map")
    p.add_argument("file", metavar="FILE", help="the map's source text (- for standard input)")
    p.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    p.add_argument(
        "--skip-unsupported",
        action="store_true",
        help="skip (with a warning) the lines the table cannot hold: catch-alls, local"
        " names, addresses outside forwarding.domains; without it they refuse the import",
    )
    fwd_sub.add_parser("export", help="print the active forwards as a Postfix virtual(5) map")
    p_fwd.set_defaults(func=cmd_forward)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwdctl", description="Administer fwdmilter: SRS, forwarding table, held mail."
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"configuration file (default: $FWDMILTER_CONFIG or {config.DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--version", action="version", version=f"fwdctl {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="log each change (entry requeued, released, dropped) to standard error;"
        " the default when run by systemd (the lines go to the journal)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_srs = sub.add_parser("srs", help="rewrite or reverse addresses with this host's SRS secrets")
    srs_sub = p_srs.add_subparsers(dest="srs_command", required=True, metavar="forward|reverse")
    for name, text in (
        ("forward", "print the SRS address for each sender"),
        ("reverse", "print where a bounce to each SRS address goes"),
    ):
        p = srs_sub.add_parser(name, help=text)
        p.add_argument("addresses", nargs="*", metavar="ADDR", help="addresses (default: stdin)")
    p_srs.set_defaults(func=cmd_srs)

    _forward_parser(sub)

    _held_parser(sub)

    _add_explain(sub)

    p_stats = sub.add_parser("stats", help="counts per state and per target")
    p_stats.add_argument("--json", action="store_true")
    p_stats.set_defaults(func=cmd_stats)

    p_store = sub.add_parser("store", help="the store itself")
    store_sub = p_store.add_subparsers(dest="store_command", required=True, metavar="migrate")
    p = store_sub.add_parser("migrate", help="copy everything to another store")
    p.add_argument("--to", required=True, metavar="URL", help="the store to copy to")
    p_store.set_defaults(func=cmd_store)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose or os.environ.get("JOURNAL_STREAM"):
        # The log lines of fwdmilter.held (key=value, one per change).
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = config.load(args.config)
        status: int = args.func(args, cfg)
    except UsageError as exc:
        print(f"fwdctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except FwdmilterError as exc:
        print(f"fwdctl: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        # A value the store or a parser refuses (an address that cannot be
        # stored...): the command asked for something that cannot be done.
        print(f"fwdctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"fwdctl: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
