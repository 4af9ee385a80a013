#!/usr/bin/env python3
"""Write the man pages of fwdmilter and fwdctl from their argument parsers.

    python3 scripts/gen_man.py OUTDIR      # OUTDIR/fwdmilter.8, fwdctl.8, fwdmilter-web.8

The Debian package runs this at build time (debian/rules), so the pages
list exactly the options and commands the installed programs take: the
SYNOPSIS and OPTIONS come from ``fwdmilter.daemon.build_parser()`` and
``fwdmilter.cli.build_parser()``, sub-command by sub-command; only the
prose around them (exit status, files, environment) is written here.
Options hidden with ``argparse.SUPPRESS`` stay hidden.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fwdmilter import __version__, cli, config, daemon  # noqa: E402
from fwdweb import app as web_app  # noqa: E402

SECTION: Final = "8"

#: Prose the parsers do not hold, per program: (heading, roff text).
EXTRA: Final[dict[str, list[tuple[str, str]]]] = {
    "fwdmilter": [
        (
            "DESCRIPTION",
            "A milter for Postfix and Sendmail that forwards mail with SRS, checks SPF "
            "(its verdict given per recipient at RCPT TO) and holds bounces of unverified "
            "mail instead of sending backscatter. "
            "It runs in the foreground and logs to standard error, one line per decision. "
            "SIGHUP re-reads the configuration and the SRS secrets; SIGTERM and SIGINT stop "
            "accepting connections and let running transactions finish for at most "
            "milter.shutdown_timeout seconds. Under systemd it runs as fwdmilter.service.",
        ),
        (
            "EXIT STATUS",
            ".TP\n.B 0\nstopped cleanly, or --check-config found nothing wrong.\n"
            f".TP\n.B {daemon.EX_CONFIG}\nthe configuration, the secrets or the store cannot be "
            "used (EX_CONFIG); the message names the key or file.\n"
            f".TP\n.B {daemon.EX_TEMPFAIL}\nthe store could not be reached at start (EX_TEMPFAIL).",
        ),
    ],
    "fwdctl": [
        (
            "DESCRIPTION",
            "Administers fwdmilter: the SRS addresses of this host, the forwarding table, "
            "held mail and the store. Without ADDR, the srs commands read one address per "
            "line from standard input.",
        ),
        (
            "EXIT STATUS",
            f".TP\n.B {cli.EXIT_OK}\ndone.\n"
            f".TP\n.B {cli.EXIT_REFUSED}\nsomething was refused or failed (each said on standard "
            "error).\n"
            f".TP\n.B {cli.EXIT_CONFIG}\nthe configuration, the store or the MTA cannot be used.",
        ),
    ],
    "fwdmilter-web": [
        (
            "DESCRIPTION",
            "The recipients' web service: a recipient signs in by mail and inquires, updates "
            "or deletes the record of their own forwarding address; new targets are confirmed "
            "by their owner. It reads the [web] settings of the milter's configuration and "
            "shares its store; it never reads the SRS secrets. Each change, sign-in and failed "
            "attempt is logged as one key=value line.",
        ),
        (
            "EXIT STATUS",
            ".TP\n.B 0\nstopped.\n.TP\n.B 2\nthe configuration or the store cannot be used.",
        ),
    ],
}

COMMON: Final = [
    (
        "ENVIRONMENT",
        ".TP\n.B FWDMILTER_CONFIG\nthe configuration file when --config is not given.",
    ),
    (
        "FILES",
        f".TP\n.I {config.DEFAULT_CONFIG_PATH}\nthe configuration "
        "(/usr/share/doc/fwdmilter/configuration.md describes every key).\n"
        ".TP\n.I /etc/fwdmilter/srs-secrets\nthe SRS secrets, newest first.\n"
        ".TP\n.I /var/lib/fwdmilter/state.db\nthe embedded store.",
    ),
    ("SEE ALSO", ".BR fwdmilter (8),\n.BR fwdctl (8),\n.BR postconf (5)"),
]


def esc(text: str) -> str:
    """Text as roff shows it literally: backslashes, hyphens, leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [("\\&" + line if line.startswith((".", "'")) else line) for line in text.split("\n")]
    return "\n".join(lines)


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                sub.description = sub.description or helps.get(name)
                yield name, sub


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage:").split())


def _options(parser: argparse.ArgumentParser, *, with_help: bool = True) -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if isinstance(action, argparse._HelpAction) and not with_help:
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                metavar = action.metavar or (
                    "{" + ",".join(action.choices) + "}" if action.choices else action.dest.upper()
                )
                names += f" {metavar}"
        else:
            names = str(action.metavar or action.dest)
        out += [".TP", f".B {esc(names)}", esc(action.help or "")]
    return out


def _commands(
    parser: argparse.ArgumentParser, prefix: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for name, sub in _subparsers(parser):
        path = f"{prefix} {name}".strip()
        children = list(_subparsers(sub))
        if children:
            yield from _commands(sub, path)
        else:
            yield path, sub


def page(parser: argparse.ArgumentParser, date: str) -> str:
    prog = parser.prog
    lines = [
        f'.TH {prog.upper()} {SECTION} "{date}" "fwdmilter {__version__}" "System Administration"',
        ".SH NAME",
        f"{prog} \\- {esc(parser.description or '')}",
        ".SH SYNOPSIS",
    ]
    commands = list(_commands(parser, ""))
    if commands:
        for _, sub in commands:
            lines += [".HP", esc(f"{prog} [--config PATH] " + _usage(sub).removeprefix(prog + " "))]
    else:
        lines += [".HP", esc(_usage(parser))]
    for heading, text in EXTRA.get(prog, [])[:1]:
        lines += [f".SH {heading}", text]
    lines += [".SH OPTIONS", *_options(parser)]
    if commands:
        lines.append(".SH COMMANDS")
        for path, sub in commands:
            lines += [f'.SS "{esc(path)}"', esc(sub.description or "")]
            opts = _options(sub, with_help=False)
            if opts:
                lines += [".RS", *opts, ".RE"]
    for heading, text in EXTRA.get(prog, [])[1:] + COMMON:
        lines += [f".SH {heading}", text]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    # A reproducible build dates the page by the changelog, not by the clock.
    stamp = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    when = datetime.datetime.fromtimestamp(stamp or 0, datetime.UTC) if stamp else None
    date = (when or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%d")
    for parser in (daemon.build_parser(), cli.build_parser(), web_app.build_parser()):
        (out / f"{parser.prog}.{SECTION}").write_text(page(parser, date))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
