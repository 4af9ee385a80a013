"""The Postfix ``virtual`` map format, read and written (``fwdctl forward import/export``).

Pure: text in, entries out, and the reverse; no store, no I/O.

The input is read as postmap(1) reads a table source (postmap(5),
virtual(5)): a logical line starts with a non-blank character; a line
that starts with white space continues the previous logical line; a line
whose first non-blank character is ``#`` is a comment, and blank lines are
ignored. A ``#`` elsewhere is data, as in postmap. The first word of a
logical line is the key (the forwarding address), the rest its targets,
separated by commas and/or white space.

Syntax is all this module checks (a key, at least one target, no empty
field between commas); what an address may be is the forwarding table's
rule (:mod:`fwdmilter.table`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["Entry", "VirtualError", "parse", "format_entries", "unwritable"]

_SEPARATORS: Final = re.compile(r"[,\s]+")
_KEY: Final = re.compile(r"(\S+)\s*(.*)", re.DOTALL)


class VirtualError(ValueError):
    """A line of a virtual map that cannot be read: ``lineno`` is its first line."""

    def __init__(self, lineno: int, text: str) -> None:
        super().__init__(f"line {lineno}: {text}")
        self.lineno = lineno
        self.text = text


@dataclass(frozen=True, slots=True)
class Entry:
    """One logical line: ``key`` and its ``targets`` in the order written."""

    lineno: int
    key: str
    targets: tuple[str, ...]


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    start = 0
    parts: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace():
            if not parts:
                # postmap says "unexpected input" and skips it: refuse, since
                # an import that drops a line the admin wrote is not idempotent
                # with intent.
                yield number, raw
                continue
            parts.append(stripped)
            continue
        if parts:
            yield start, " ".join(parts)
        start, parts = number, [stripped]
    if parts:
        yield start, " ".join(parts)


def parse(text: str) -> tuple[list[Entry], list[VirtualError]]:
    """Every entry of ``text``, and every line that cannot be read.

    Both lists are in file order; a caller that wants all or nothing checks
    that the second is empty.
    """
    entries: list[Entry] = []
    errors: list[VirtualError] = []
    for lineno, line in _logical_lines(text):
        if line[0].isspace():
            errors.append(VirtualError(lineno, "a continuation line with no line to continue"))
            continue
        found = _KEY.match(line)
        if found is None:  # a logical line starts with a non-blank character
            continue
        key, rest = found.group(1), found.group(2).strip()
        if "," in key:
            errors.append(VirtualError(lineno, f"{key!r}: a key is one address, without a comma"))
            continue
        if not rest:
            errors.append(VirtualError(lineno, f"{key}: no target"))
            continue
        fields = [f for f in _SEPARATORS.split(rest) if f]
        if not fields or rest.startswith(",") or re.search(r",\s*,", rest):
            errors.append(VirtualError(lineno, f"{key}: an empty target between commas"))
            continue
        entries.append(Entry(lineno, key, tuple(fields)))
    return entries, errors


def unwritable(address: str, key: bool = False) -> str:
    """Why ``address`` cannot be written in a virtual map, or "".

    A comma or white space would split it; a key starting with ``#`` would
    make its line a comment.
    """
    if not address or any(c == "," or c.isspace() for c in address):
        return "a comma or white space in it would split it"
    if key and address.startswith("#"):
        return "a line starting with # is a comment"
    return ""


def format_entries(entries: Iterable[tuple[str, Iterable[str]]], header: str = "") -> str:
    """``KEY TARGET, TARGET`` lines in the order given, after ``header``
    (each of its lines made a comment). The caller leaves out what
    :func:`unwritable` refuses."""
    out = [f"# {line}".rstrip() for line in header.splitlines()]
    for key, targets in entries:
        out.append(f"{key} {', '.join(targets)}")
    return "".join(line + "\n" for line in out)
