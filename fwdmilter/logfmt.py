"""key=value log lines whose values cannot forge a key.

Values come from the outside (a DSN's diagnostic text, a header, an
address), so each is written as a bare token only when it is one; anything
else is a double-quoted string with ``\\`` and ``"`` escaped and control
characters (CR, LF...) shown as ``\\xNN``, so that a line always parses back
into the pairs it was written from. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

__all__ = ["value", "pairs"]

#: A value that needs no quotes: no space, no quote, no backslash, nothing
#: outside printable ASCII. "=" may stand in a value (SRS addresses have
#: it): a line is split at the first "=" of each space-separated pair.
_BARE: Final = re.compile(r"[!#-\[\]-~]+")
_NEEDS_ESCAPE: Final = re.compile(r'[\\"\x00-\x1f\x7f]|[^\x00-\x7f]')


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in '\\"':
        return "\\" + char
    if char.isprintable() and not char.isascii():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def value(text: str) -> str:
    """``text`` as a log value: bare if it is one token, else quoted."""
    if text and _BARE.fullmatch(text):
        return text
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'


def pairs(items: Iterable[tuple[str, str]]) -> str:
    """``key=value key=value``; keys are ours, values are quoted as needed."""
    return " ".join(f"{k}={value(v)}" for k, v in items)
