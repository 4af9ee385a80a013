"""fwdctl: the admin's tool.

    fwdctl [--config PATH] srs forward|reverse [ADDR...]
    fwdctl forward set RCPT TARGET [--contact ADDR] [--null-sender forward|hold]
                                   [--confirm | --no-confirm]
    fwdctl forward show RCPT [--json]
    fwdctl forward list [--json]
    fwdctl forward delete RCPT [--moved-to ADDR]
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
from typing import Any, TextIO

from fwdmilter import __version__, addr, config
from fwdmilter.errors import FwdmilterError
from fwdmilter.runtime import make_srs
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
    bare = addr.strip_brackets(value)
    if addr.split(bare) is None or any(c.isspace() for c in bare):
        raise UsageError(f"{what} {value!r} is not a mail address")
    return bare


def _forward_dict(f: Forward) -> dict[str, Any]:
    # The JSON of schema 3 (one "target"), until fwdctl shows several targets.
    d = asdict(f) | {"active": f.active, "pending_active": bool(f.pending_at(time.time()))}
    for name in ("targets", "spf_actions", "rewrite", "trusted"):
        d.pop(name)
    return d | {"target": f.target}


def _forward_line(f: Forward) -> str:
    if f.moved_to:
        return f"{f.rcpt}  moved to {f.moved_to}"
    extra = f"  contact={f.contact}" if f.contact else ""
    extra += "  null-sender=hold" if f.null_sender == "hold" else ""
    if f.pending:
        state = "pending" if f.pending_expires > time.time() else "expired"
        extra += f"  {state}={f.pending} (until {_when(f.pending_expires)})"
    return f"{f.rcpt} -> {f.target or '(none)'}{extra}"


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
        rcpt = addr.key(_check_address(args.rcpt, "recipient"))
        if sub == "set":
            target = _check_address(args.target, "target")
            forwarding_domains = {d.lower() for d in cfg.forwarding.domains}
            if addr.domain_of(target) in forwarding_domains:
                # The milter replaces a recipient by its target once, at end
                # of message; mail for a target that is itself a forwarding
                # address would reach no table lookup.
                raise UsageError(
                    f"target {target} is itself in forwarding.domains: "
                    "forward to the final address instead"
                )
            contact = _check_address(args.contact, "contact") if args.contact else ""
            if addr.domain_of(rcpt) not in forwarding_domains:
                print(
                    f"fwdctl: warning: {rcpt} is not in forwarding.domains; the milter "
                    "will not look it up until its domain is",
                    file=sys.stderr,
                )
            now = time.time()
            old = store.get_forward(rcpt)
            confirm = cfg.forwarding.confirm_targets if args.confirm is None else args.confirm
            live = old if old is not None and not old.moved_to else None
            new = Forward(
                rcpt=rcpt,
                targets=(target,),
                contact=contact if args.contact is not None else (old.contact if old else ""),
                null_sender=args.null_sender or (old.null_sender if old else "forward"),
                created=old.created if old else now,
                updated=now,
            )
            if confirm and not (live is not None and live.target == target):
                # The target mail keeps going to until the new one confirms.
                kept = live.targets if live is not None else ()
                from fwdmilter import confirm as confirming  # noqa: PLC0415

                pending = confirming.request_target(
                    store,
                    cfg,
                    rcpt,
                    target,
                    requested_by="admin",
                    now=now,
                    base=dataclasses.replace(new, targets=kept),
                )
                print(_forward_line(pending))
                return EXIT_OK
            store.put_forward(new)
            if live is not None and live.pending:
                store.delete_tokens("confirm", rcpt)
            print(_forward_line(store.get_forward(rcpt) or Forward(rcpt, (target,))))
            return EXIT_OK
        if sub == "show":
            found = store.get_forward(rcpt)
            if found is None:
                print(f"fwdctl: {rcpt}: no such forwarding address", file=sys.stderr)
                return EXIT_REFUSED
            if args.json:
                _print_json(_forward_dict(found))
            else:
                print(_forward_line(found))
                print(f"  created {_when(found.created)}, updated {_when(found.updated)}")
            return EXIT_OK
        # delete
        moved = _check_address(args.moved_to, "moved-to address") if args.moved_to else ""
        if not store.delete_forward(rcpt, moved, now=time.time()):
            print(f"fwdctl: {rcpt}: no such forwarding address", file=sys.stderr)
            return EXIT_REFUSED
        print(
            f"{rcpt} deleted"
            + (f"; mail for it is refused with 551 naming {moved}" if moved else "")
        )
        return EXIT_OK
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

    p_fwd = sub.add_parser("forward", help="the forwarding table")
    fwd_sub = p_fwd.add_subparsers(
        dest="forward_command", required=True, metavar="set|show|list|delete"
    )
    p = fwd_sub.add_parser("set", help="forward RCPT's mail to TARGET")
    p.add_argument("rcpt", metavar="RCPT")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--contact", metavar="ADDR", help="alternate contact told when mail is held")
    p.add_argument(
        "--null-sender",
        choices=("forward", "hold"),
        help="what to do with bounces (null sender) for RCPT (default: forward)",
    )
    p.add_argument(
        "--confirm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mail TARGET a confirmation link; forward to it only once confirmed"
        " (default: forwarding.confirm_targets)",
    )
    p = fwd_sub.add_parser("show", help="show one forwarding address")
    p.add_argument("rcpt", metavar="RCPT")
    p.add_argument("--json", action="store_true")
    p = fwd_sub.add_parser("list", help="list every forwarding address")
    p.add_argument("--json", action="store_true")
    p = fwd_sub.add_parser("delete", help="stop forwarding RCPT")
    p.add_argument("rcpt", metavar="RCPT")
    p.add_argument("--moved-to", metavar="ADDR", help="refuse RCPT's mail with 551 naming ADDR")
    p_fwd.set_defaults(func=cmd_forward)

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
