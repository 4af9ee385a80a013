"""fwdctl: the admin's tool.

    fwdctl [--config PATH] srs forward ADDR...      SRS addresses for senders
    fwdctl [--config PATH] srs reverse ADDR...      where bounces to them go

Without ADDR, the srs commands read one address per line from standard
input. Results go to standard output, one line each; a refusal prints an
error line naming the address and the reason to standard error, and the exit
status is 1 if anything was refused. A configuration that cannot be used
exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TextIO

from fwdmilter import __version__, config
from fwdmilter.errors import FwdmilterError
from fwdmilter.secrets import load_secrets
from srs import SRS, SRSError

__all__ = ["main", "make_srs"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2


def make_srs(cfg: config.Config) -> SRS:
    """The SRS rewriter the configuration describes (reads the secrets file)."""
    s = cfg.srs
    return SRS(
        secrets=load_secrets(s.secrets_file),
        domain=s.domain,
        hash_length=s.hash_length,
        hash_min_length=s.hash_min_length,
        max_age_days=s.max_age_days,
        separator=s.separator,
    )


def _inputs(args: Sequence[str], stdin: TextIO) -> Iterable[str]:
    if args:
        yield from args
        return
    for line in stdin:
        if addr := line.strip():
            yield addr


def _map_addresses(fn: Callable[[str], str], addrs: Iterable[str], out: TextIO, err: TextIO) -> int:
    status = EXIT_OK
    for addr in addrs:
        try:
            out.write(fn(addr) + "\n")
        except SRSError as exc:
            err.write(f"fwdctl: {addr}: {type(exc).__name__}: {exc}\n")
            status = EXIT_REFUSED
    return status


def cmd_srs(args: argparse.Namespace, cfg: config.Config) -> int:
    rewriter = make_srs(cfg)
    fn = rewriter.forward if args.srs_command == "forward" else rewriter.reverse
    return _map_addresses(fn, _inputs(args.addresses, sys.stdin), sys.stdout, sys.stderr)


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config)
        status: int = args.func(args, cfg)
    except FwdmilterError as exc:
        print(f"fwdctl: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return status


if __name__ == "__main__":
    sys.exit(main())
