"""Running the docs' commands against a sandbox, and judging their output.

The docs are written for a real host: ``/etc/fwdmilter/fwdmilter.toml``,
``/etc/postfix``, a Redis on ``127.0.0.1:6379``, the domain
``fwd.example.net``. The sandbox has its own of each. A small, explicit
:class:`Substitutions` table maps the doc's values onto the sandbox's before
a command runs and before its output is compared; values that only exist
once the sandbox runs (a queue id, an SRS address) are learned from the
output that first shows them and substituted in later commands, so a doc
can show ``postcat -q 4B7C21E0F3A`` after ``postqueue`` printed that id.

Output matches "in substance" (:func:`match_output`): the same lines, with
the values that differ from run to run (queue ids, SRS hashes and time
stamps, times, ages, process ids) allowed to differ, ``...`` standing for
any lines (alone on a line) or any text (within a line), and large numbers
(TTLs) allowed to differ by 0.1%.

Before anything runs, :meth:`Sandbox.check_safe` refuses a command that
could reach outside the sandbox: a program not in :data:`RUNNABLE`, a
Postfix tool without ``-c`` naming the sandbox's Postfix, a ``redis-cli``
that does not name a private server, an absolute path outside the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.docs.markdown import Command

__all__ = [
    "RUNNABLE",
    "Substitutions",
    "Mismatch",
    "match_output",
    "run_in_pty",
    "Sandbox",
]

#: Programs a doc may have the sandbox run, and what each must name.
RUNNABLE: Final = frozenset(
    {
        "fwdctl",
        "fwdmilter",  # --check-config only
        "redis-cli",  # -p or -u naming a private server
        "postconf",  # -c naming the sandbox's Postfix, never -e
        "postqueue",  # -c likewise
        "postcat",  # -c likewise
        "jq",
        "grep",
        "sed",
        "cp",
        "wc",
        "head",
        "curl",  # the sandbox's metrics endpoint only
        "python",  # the virtual environment's (/opt/fwdmilter/bin/python)
    }
)
_POSTFIX_TOOLS: Final = frozenset({"postconf", "postqueue", "postcat"})


class Substitutions:
    """Doc values -> sandbox values, longest first, then learned ones."""

    def __init__(self, table: Iterable[tuple[str, str]]) -> None:
        self.table = sorted(table, key=lambda kv: -len(kv[0]))
        self.learned: list[tuple[str, str]] = []

    def apply(self, text: str) -> str:
        for doc, real in self.table:
            text = text.replace(doc, real)
        for doc, real in sorted(self.learned, key=lambda kv: -len(kv[0])):
            text = text.replace(doc, real)
        return text

    def learn(self, pairs: Iterable[tuple[str, str]]) -> None:
        known = {d for d, _ in self.learned}
        for doc, real in pairs:
            if doc != real and doc not in known:
                self.learned.append((doc, real))
                known.add(doc)


# -- output in substance -------------------------------------------------------

#: Values that differ from run to run, by class; the first that matches wins.
_VOLATILE: Final = (
    ("srs", r"(?i:SRS0)=[A-Za-z0-9+/]{4}=[A-Za-z0-9]{2}=[^\s<>\"',]+@[A-Za-z0-9.-]*[A-Za-z0-9]"),
    ("time", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"),
    ("date", r"[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}"),
    ("syslog", r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d"),
    (
        "json",
        r"\"(?:held_at|age_seconds|created|updated|requeued_at|expires|arrival_time"
        r"|message_size)\": [\d.]+",
    ),
    ("unixtime", r"(?<![\w.])1[6-9]\d{8}(?:\.\d+)?(?![\w.])"),
    ("qid", r"(?<![\w=.-])[0-9A-F]{10,12}(?![\w.-])"),
    ("msgid", r"(?<![\w=.-])[a-z2-7]{16}(?![a-z0-9])"),
    ("pid", r"\[\d+\]"),
    ("age", r"(?<![\w.])\d+[mhd](?![\w])"),
    ("bignum", r"(?<![\w.:/])\d{4,}(?![\w.])"),
)
_CLASSES: Final = re.compile("|".join(f"(?P<v{i}>{rx})" for i, (_, rx) in enumerate(_VOLATILE)))
#: Classes whose values are learned as substitutions for later commands.
_LEARNED: Final = frozenset({"srs", "qid", "msgid"})


def _class_pattern(kind: str, token: str) -> str:
    if kind == "srs":
        # Hash and time stamp vary; the rest of the address must be the same.
        head, _hash, _stamp, rest = token.split("=", 3)
        return re.escape(head) + r"=[A-Za-z0-9+/]{4}=[A-Za-z0-9]{2}=" + re.escape(rest)
    if kind == "json":
        key = token.split(":", maxsplit=1)[0]
        return re.escape(key) + r": [\d.]+"
    if kind == "pid":
        return r"\[\d+\]"
    if kind == "bignum":
        return r"\d+"
    if kind == "unixtime":
        return r"\d+(?:\.\d+)?"
    if kind == "age":
        return r"\d+[mhd]"
    return dict((k, rx) for k, rx in _VOLATILE)[kind]


def _line_regex(expected: str) -> tuple[re.Pattern[str], list[tuple[str, str]]]:
    parts: list[str] = []
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in re.finditer(r"\.\.\.|" + _CLASSES.pattern, expected):
        parts.append(re.escape(expected[pos : m.start()]))
        if m.group(0) == "...":
            parts.append(".*?")
        else:
            kind = next(_VOLATILE[int(k[1:])][0] for k, v in m.groupdict().items() if v)
            parts.append("(" + _class_pattern(kind, m.group(0)) + ")")
            tokens.append((kind, m.group(0)))
        pos = m.end()
    parts.append(re.escape(expected[pos:]))
    return re.compile("".join(parts)), tokens


def _line_match(expected: str, actual: str) -> list[tuple[str, str]] | None:
    """The (doc token, actual token) pairs learned if the lines match, else None."""
    if expected == actual:
        return []
    regex, tokens = _line_regex(expected)
    m = regex.fullmatch(actual)
    if m is None:
        return None
    learned: list[tuple[str, str]] = []
    for (kind, doc), real in zip(tokens, m.groups(), strict=True):
        if kind == "bignum":
            a, b = int(doc), int(real)
            if abs(a - b) > max(a, b) * 0.001:
                return None
        if kind in _LEARNED:
            learned.append((doc, real))
    return learned


@dataclass
class Mismatch:
    """Why an output did not match."""

    expected: list[str]
    actual: list[str]

    def __str__(self) -> str:
        return (
            "the doc shows:\n"
            + "\n".join("    " + x for x in self.expected)
            + "\nthe sandbox printed:\n"
            + "\n".join("    " + x for x in self.actual)
        )


def _match_lines(
    exp: Sequence[str], act: Sequence[str], i: int = 0, j: int = 0
) -> list[tuple[str, str]] | None:
    if i == len(exp):
        return [] if j == len(act) else None
    if exp[i].strip() == "...":
        for k in range(j, len(act) + 1):
            rest = _match_lines(exp, act, i + 1, k)
            if rest is not None:
                return rest
        return None
    if j < len(act):
        here = _line_match(exp[i], act[j])
        if here is not None:
            rest = _match_lines(exp, act, i + 1, j + 1)
            if rest is not None:
                return here + rest
    return None


def _clean(text: str) -> list[str]:
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).replace("\r", "")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def match_output(
    expected: Sequence[str], actual: str, *, unordered: bool = False
) -> list[tuple[str, str]] | Mismatch:
    """Learned pairs if ``actual`` shows what ``expected`` does, else why not.

    ``unordered``: the lines may come in any order (redis-cli's SCAN and
    SMEMBERS); the list numbering redis-cli adds is ignored then.
    """
    exp = [line.rstrip() for line in expected]
    act = _clean(actual)
    if unordered:

        def items(lines: Sequence[str]) -> list[str]:
            return sorted(re.sub(r"^(\s*\d+\)\s*)+", "", line).strip() for line in lines)

        exp, act = items(exp), items(act)
    found = _match_lines(exp, act)
    if found is None:
        return Mismatch(exp, act)
    return found


# -- running ------------------------------------------------------------------------


def run_in_pty(
    script: str, *, env: dict[str, str], cwd: Path, timeout: float = 60.0
) -> tuple[int, str]:
    """Run ``script`` with bash, its output on a terminal (as an admin sees
    it: redis-cli, for one, prints differently to a pipe); (status, output)."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                raise TimeoutError(f"took longer than {timeout}s: {script}")
            ready, _, _ = select.select([primary], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(primary, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(primary)
    status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    return status, b"".join(chunks).decode("utf-8", "replace")


@dataclass
class Sandbox:
    """Where the docs' commands run: substitutions, environment, limits."""

    substitutions: Substitutions
    env: dict[str, str]
    cwd: Path
    #: Absolute paths a command may name (prefixes), after substitution.
    allowed_paths: list[Path]
    postfix_config: Path
    redis_ports: list[int] = field(default_factory=list)
    http_ports: list[int] = field(default_factory=list)
    ran: list[Command] = field(default_factory=list)
    #: Called with each command after it ran (for the scenario's bookkeeping).
    observers: list[Callable[[Command, str], None]] = field(default_factory=list)

    def check_safe(self, cmd: Command, script: str) -> None:
        from tests.docs.markdown import simple_commands  # noqa: PLC0415

        problems: list[str] = []
        for words in simple_commands(script.split("\n", 1)[0]):
            prog = Path(words[0]).name
            if prog not in RUNNABLE:
                problems.append(f"{words[0]!r} is not a program the sandbox runs")
                continue
            args = words[1:]
            if prog in _POSTFIX_TOOLS:
                if "-c" not in args or args[args.index("-c") + 1] != str(self.postfix_config):
                    problems.append(f"{prog} without -c naming the sandbox's Postfix")
                if prog == "postconf" and "-e" in args:
                    problems.append("postconf -e edits a Postfix: a host command (sh-host)")
            if prog == "fwdmilter" and "--check-config" not in args:
                problems.append("fwdmilter runs in the sandbox with --check-config only")
            if prog == "redis-cli" and not any(
                f"{port}" in " ".join(args) for port in self.redis_ports
            ):
                problems.append("redis-cli without -p or -u naming the sandbox's Redis")
            if prog == "curl" and not any(
                f"127.0.0.1:{port}" in " ".join(args) for port in self.http_ports
            ):
                problems.append("curl of something other than the sandbox's endpoints")
            for word in words:
                m = re.match(r"(?:-[-\w]*=|sqlite://)?(/.*)", word)
                path = m.group(1) if m else ""
                if not path or path == "/dev/null":
                    continue
                if not any(Path(path).is_relative_to(p) for p in self.allowed_paths):
                    problems.append(f"{path} is outside the sandbox")
        if problems:
            raise AssertionError(f"{cmd.where}: not run: {'; '.join(problems)}\n    {script}")

    def run(self, cmd: Command) -> tuple[int, str]:
        script = self.substitutions.apply(cmd.script)
        self.check_safe(cmd, script)
        status, output = run_in_pty(script, env=self.env, cwd=self.cwd)
        self.ran.append(cmd)
        for observe in self.observers:
            observe(cmd, output)
        return status, output

    def check(self, cmd: Command) -> None:
        """Run ``cmd``; fail unless it exits as the doc says and prints what
        the doc shows."""
        status, output = self.run(cmd)
        shown = f"\n    {cmd.text}\nprinted:\n{output}"
        if status != cmd.status:
            raise AssertionError(f"{cmd.where}: exit status {status}, not {cmd.status}:{shown}")
        if not cmd.shows_output:
            return
        expected = [self.substitutions.apply(line) for line in cmd.output]
        unordered = bool(re.search(r"\bredis-cli\b.*\s(SCAN|SMEMBERS)\s", cmd.text))
        result = match_output(expected, output, unordered=unordered)
        if isinstance(result, Mismatch):
            raise AssertionError(f"{cmd.where}: {cmd.text}\n{result}")
        self.substitutions.learn(result)
