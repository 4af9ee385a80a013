"""Envelope addresses: brackets, source routes, what cannot be used."""

from __future__ import annotations

import pytest

from fwdmilter import addr


@pytest.mark.parametrize(
    ("raw", "bare"),
    [
        ("<a@b.example>", "a@b.example"),
        ("<>", ""),
        ("", ""),
        (" < a@b.example > ", "a@b.example"),
        ("<@relay.example:a@b.example>", "a@b.example"),  # RFC 5321 4.1.2 source route
        ("<@r1.example,@r2.example:a@b.example>", "a@b.example"),
        ('<"a@b"@c.example>', '"a@b"@c.example'),
        ("postmaster", "postmaster"),
    ],
)
def test_strip_brackets(raw: str, bare: str) -> None:
    assert addr.strip_brackets(raw) == bare


def test_split_at_the_last_at() -> None:
    assert addr.split('"a@b"@c.example') == ('"a@b"', "c.example")
    assert addr.split("@b") is None and addr.split("a@") is None and addr.split("") is None
    assert addr.domain_of("x@Bücher.Example.") == "bücher.example"


@pytest.mark.parametrize(
    ("bare", "problem"),
    [
        ("alice@pass.example", None),
        ("", None),
        ("josé@bücher.example", None),
        ('"a b"@c.example', None),
        ("a\udcff@pass.example", "not UTF-8"),  # pymilter's surrogateescape
        ("a\ud800@pass.example", "not UTF-8"),
        ("a\r\n@pass.example", "control character"),
        ("a\0@pass.example", "control character"),
        ("a\x7f@pass.example", "control character"),
        ("a" * 1020 + "@b.ex", "too long"),
        ("é" * 512 + "@b", "too long"),  # octets count, not characters
    ],
)
def test_problem(bare: str, problem: str | None) -> None:
    assert addr.problem(bare) == problem


def test_printable() -> None:
    assert addr.printable("a\udcff\r\\b@x") == "a\\xff\\x0d\\x5cb@x"
    assert addr.printable("josé@x") == "josé@x"
    assert addr.printable("x" * 300, limit=5) == "xxxxx..."
