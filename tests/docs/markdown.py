"""The code blocks of the admin docs, and the shell commands in them.

Every fenced block of README.md and docs/*.md carries a tag (the first word
of its info string) that says what it is and how the tests check it:

============  ===============================================================
tag           what the tests do with it
============  ===============================================================
``console``   ``$ COMMAND`` lines and the output they print: each command is
              run in the sandbox (tests/docs/sandbox.py), in the order the
              doc gives them, and must print that output in substance
``sh``        commands run in the sandbox that print nothing worth showing;
              each must exit 0 (or the status of a ``# exit status N``
              comment at its end)
``http``      ``$ curl`` lines against fwdmilter-web and the JSON they print:
              run in order by tests/e2e/test_web_docs.py against the real
              service (docs/web.md)
``sh-host``   commands that need a real host (apt-get, systemctl,
              journalctl, install, editing the system Postfix...): checked
              statically (tests/docs/test_docs_static.py)
``main.cf``   Postfix main.cf settings: compared with the harness's BORDER
              and with every ``postconf -e`` of the docs, and used to build
              the sandbox's Postfix
``master.cf`` Postfix master.cf lines: their services and options are known
``toml``      fwdmilter configuration: must load (unknown keys, bad values
              fail)
``acl``       a Redis ACL line: must be the one the store tests run as
``zone``      DNS records (no check beyond this table)
``text``      anything else that is no command: trees, log lines, mail
============  ===============================================================

More words after the tag are ``key=value`` attributes, which Markdown
renderers do not show: ``after=EVENT`` makes the sandbox bring about EVENT
(a bounce held, the milter stopped...) before the block's commands run;
``check=NAME`` has a non-command block compared with what the sandbox
produced (an alert, log lines). A block without a tag, or with a tag not in
the table, fails the tests: a command cannot slip into the docs untested.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = [
    "REPO",
    "DOCS",
    "RUN_TAGS",
    "HOST_TAGS",
    "DATA_TAGS",
    "WEB_TAGS",
    "TAGS",
    "Block",
    "Command",
    "blocks",
    "all_blocks",
    "commands",
    "simple_commands",
    "substitutions_in",
    "inline_code",
]

REPO: Final = Path(__file__).resolve().parents[2]
#: The admin docs: the README and every page in docs/.
DOCS: Final = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

RUN_TAGS: Final = frozenset({"console", "sh"})
HOST_TAGS: Final = frozenset({"sh-host"})
#: Run by tests/e2e/test_web_docs.py against a real fwdmilter-web.
WEB_TAGS: Final = frozenset({"http"})
DATA_TAGS: Final = frozenset({"main.cf", "master.cf", "toml", "acl", "zone", "text", "m4"})
TAGS: Final = RUN_TAGS | HOST_TAGS | DATA_TAGS | WEB_TAGS

_FENCE: Final = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_HEADING: Final = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_STATUS: Final = re.compile(r"#\s*exit status (\d+)\s*$")
_HEREDOC: Final = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a doc."""

    path: Path
    line: int  # of the opening fence, 1-based
    tag: str
    attrs: dict[str, str]
    text: str
    heading: str  # the nearest heading above, for messages

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line} ({self.heading or 'top'})"


@dataclass(frozen=True)
class Command:
    """One shell command of a block, with what the doc says it prints."""

    block: Block
    line: int  # in the doc, 1-based
    text: str  # the command as the admin types it (continuations joined)
    heredoc: str = ""  # the here-document's lines, if any
    output: tuple[str, ...] = ()  # console blocks: the lines shown after it
    status: int = 0
    shows_output: bool = False
    words: list[list[str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.block.path.relative_to(REPO)}:{self.line}"

    @property
    def script(self) -> str:
        """The text to hand to a shell."""
        return self.text + ("\n" + self.heredoc if self.heredoc else "")


def _headings_and_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    heading = ""
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            h = _HEADING.match(lines[i])
            if h:
                heading = h.group(1)
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(fence[0] * len(fence)) and not close.strip(fence[0]):
                break
            line = lines[i]
            body.append(line[indent:] if line[:indent].strip() == "" else line)
            i += 1
        else:
            raise ValueError(f"{path}:{start + 1}: code block never closed")
        words = info.split()
        tag = words[0] if words else ""
        attrs: dict[str, str] = {}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep:
                raise ValueError(f"{path}:{start + 1}: {word!r} is not key=value")
            attrs[key] = value
        yield Block(path, start + 1, tag, attrs, "\n".join(body), heading)
        i += 1


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, in order."""
    return list(_headings_and_blocks(path))


def all_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks(path)]


def _logical_lines(block: Block) -> Iterator[tuple[int, str, list[str]]]:
    """(doc line, text, here-document lines) of a shell block: continuations
    joined, comment lines and blank lines skipped."""
    lines = block.text.split("\n")
    i = 0
    while i < len(lines):
        first = i
        text = lines[i]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i].strip()
        i += 1
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        heredoc: list[str] = []
        m = _HEREDOC.search(stripped)
        if m:
            end = m.group(2)
            while i < len(lines) and lines[i].strip() != end:
                heredoc.append(lines[i])
                i += 1
            heredoc.append(end)
            i += 1
        yield block.line + 1 + first, stripped, heredoc


def _status(text: str) -> int:
    m = _STATUS.search(text)
    return int(m.group(1)) if m else 0


def commands(block: Block) -> list[Command]:
    """The commands of a ``console``, ``sh`` or ``sh-host`` block."""
    out: list[Command] = []
    if block.tag in ("console", "http"):
        current: tuple[int, str] | None = None
        shown: list[str] = []
        lines = block.text.split("\n")
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("$ "):
                if current is not None:
                    out.append(_command(block, current, shown))
                first = i
                text = line[2:]
                while text.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text = text[:-1] + " " + lines[i].strip()
                current, shown = (block.line + 1 + first, text.strip()), []
            elif current is None:
                if line.strip():
                    raise ValueError(f"{block.where}: output before the first $ command")
            else:
                shown.append(line)
            i += 1
        if current is not None:
            out.append(_command(block, current, shown))
        return out
    for number, text, heredoc in _logical_lines(block):
        out.append(
            Command(
                block,
                number,
                text,
                heredoc="\n".join(heredoc),
                status=_status(text),
                words=simple_commands(text),
            )
        )
    return out


def _command(block: Block, current: tuple[int, str], shown: list[str]) -> Command:
    while shown and not shown[-1].strip():
        shown.pop()
    line, text = current
    return Command(
        block,
        line,
        text,
        output=tuple(shown),
        status=_status(text),
        shows_output=True,
        words=simple_commands(text),
    )


_OPERATORS: Final = frozenset({"&&", "||", "|", ";", "&", "(", ")", ";;"})


def simple_commands(text: str) -> list[list[str]]:
    """The simple commands of a command line, each as its words (quotes
    removed; redirections kept as ``>`` followed by the target), including
    those inside ``$( ... )``. Variable assignments before a command and the
    ``!`` of a negation are dropped."""
    found: list[list[str]] = []
    for inner in re.findall(r"\$\(([^()]*)\)", text):
        found.extend(simple_commands(inner))
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    current: list[str] = []
    for token in lexer:
        if token in _OPERATORS:
            if current:
                found.append(current)
            current = []
            continue
        if not current and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token) or token == "!"):
            continue
        current.append(token)
    if current:
        found.append(current)
    # "2>&1" comes out as "2", ">&", "1": keep the operator, drop the fd numbers.
    cleaned: list[list[str]] = []
    for words in found:
        kept: list[str] = []
        for i, word in enumerate(words):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            prev = words[i - 1] if i else ""
            if word.isdigit() and (nxt in (">", ">>", ">&", "<") or prev == ">&"):
                continue
            kept.append(word)
        cleaned.append(kept)
    return cleaned


def substitutions_in(text: str) -> list[str]:
    """The ``$( ... )`` command substitutions of a command line."""
    return re.findall(r"\$\(([^()]*)\)", text)


_INLINE: Final = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def inline_code(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every inline code span outside fenced blocks."""
    out: list[tuple[int, str]] = []
    in_block = False
    fence = ""
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        m = _FENCE.match(line)
        if m and not in_block:
            in_block, fence = True, m["fence"]
            continue
        if in_block:
            close = line.strip()
            if close.startswith(fence) and not close.strip(fence[0]):
                in_block = False
            continue
        out.extend((n, span) for span in _INLINE.findall(line))
    return out
