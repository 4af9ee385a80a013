"""Hypothesis strategies for hostile mail input, shared by the fuzz tests.

Text strategies include what pymilter hands the milter for octets that are
not UTF-8: lone surrogates U+DC80-DCFF (``surrogateescape``).
"""

from __future__ import annotations

import os

from hypothesis import strategies as st

#: Examples per fuzz test are multiplied by this (default 1: a few seconds
#: each); e.g. FWDMILTER_FUZZ_SCALE=20 for a long search by hand.
SCALE = max(1, int(os.environ.get("FWDMILTER_FUZZ_SCALE", "1")))

#: Characters a hostile client can put in a field, as pymilter decodes them.
hostile_char = st.one_of(
    st.sampled_from(list(' \t\r\n;()"\\<>@:,=/+[]{}x.\x00\x7f')),
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),  # undecodable octets
    st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
)
hostile_text = st.text(alphabet=hostile_char, max_size=60)


def _undecoded(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


#: An octet string as pymilter decodes it.
octets_text = st.binary(max_size=60).map(_undecoded)

local = st.one_of(
    st.from_regex(r"\A[a-z0-9.+=_-]{1,12}\Z"),
    st.from_regex(r'\A"[a-z @\\"]{0,8}"\Z'),
    hostile_text,
)
domain = st.one_of(
    st.sampled_from(
        [
            "fwd.example",
            "FWD.Example",
            "pass.example",
            "inner.example",
            "bücher.example",
            "xn--bcher-kva.example",
            "xn--zz.example",  # an A-label that does not decode
            "a..b",
            "-bad-.example",
            "x" * 70 + ".example",
            "[127.0.0.1]",
            "",
        ]
    ),
    hostile_text,
)
address = st.one_of(
    st.builds(lambda lp, d: f"{lp}@{d}", local, domain),
    st.sampled_from(["", "<>", "postmaster", "@", "a@", "@b", "<@relay.example:a@b.example>"]),
    hostile_text,
    octets_text,
)
#: An address as the client writes it in MAIL FROM or RCPT TO.
path = st.one_of(
    address.map(lambda a: f"<{a}>"),
    address,
    st.builds(lambda r, a: f"<@{r}:{a}>", domain, address),
)
