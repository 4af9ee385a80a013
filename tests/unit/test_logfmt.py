"""Log values from the outside cannot forge a key or split a line."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from fwdmilter import logfmt

_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)')


def _parse(line: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        assert m is not None, line[pos:]
        raw = m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        out.append((m.group(1), raw))
        pos = m.end() + 1
    return out


def test_tokens_stay_bare_and_text_is_quoted() -> None:
    assert logfmt.value("5.1.1") == "5.1.1"
    assert logfmt.value("<a@b.example>") == "<a@b.example>"
    assert logfmt.value("mailbox full") == '"mailbox full"'
    assert logfmt.value("") == '""'


def test_a_diagnostic_cannot_forge_a_key() -> None:
    line = logfmt.pairs([("reason", 'x" action=accept target="evil'), ("action", "hold")])
    assert [k for k, _ in _parse(line)] == ["reason", "action"]
    assert dict(_parse(line))["action"] == "hold"


def test_control_characters_never_reach_the_line() -> None:
    text = logfmt.value("a\r\nqueue_id=FORGED\x00")
    assert "\n" not in text and "\r" not in text and "\x00" not in text
    assert text == '"a\\x0d\\x0aqueue_id=FORGED\\x00"'


@given(st.lists(st.tuples(st.sampled_from(["reason", "rcpt", "to"]), st.text()), max_size=4))
def test_every_line_parses_back_into_its_keys(items: list[tuple[str, str]]) -> None:
    line = logfmt.pairs(items)
    assert "\n" not in line and "\r" not in line
    assert [k for k, _ in _parse(line)] == [k for k, _ in items]
