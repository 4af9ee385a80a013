"""Properties of the SRS codec over generated addresses (hypothesis)."""

from __future__ import annotations

import contextlib
import string

from hypothesis import assume, given
from hypothesis import strategies as st

from srs import SRS, SRSError

NOW = 20780 * 86400 + 43200
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"

atom = st.text(alphabet=ATEXT, min_size=1, max_size=12)
utf8_atom = st.text(
    alphabet=st.one_of(
        st.sampled_from(ATEXT), st.characters(min_codepoint=0xA0, max_codepoint=0x2FFF)
    ),
    min_size=1,
    max_size=8,
).filter(lambda a: not a.isspace())
local_part = st.lists(st.one_of(atom, utf8_atom), min_size=1, max_size=4).map(".".join)
label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z").filter(
    lambda x: "--" not in x[2:4]
)
domain = st.lists(label, min_size=1, max_size=4).map(lambda labels: ".".join([*labels, "example"]))
address = st.builds(lambda lp, d: f"{lp}@{d}", local_part, domain)
secret = st.text(min_size=1, max_size=40)
days = st.integers(min_value=0, max_value=21)


@given(address, secret, days)
def test_reverse_undoes_forward(addr: str, key: str, age: int) -> None:
    s = SRS([key], "fwd.example.net")
    assert s.reverse(s.forward(addr, now=NOW), now=NOW + age * 86400) == addr


@given(address, secret, secret)
def test_reverse_undoes_forward_across_a_key_rotation(addr: str, old: str, new: str) -> None:
    before = SRS([old], "fwd.example.net")
    after = SRS([new, old], "fwd.example.net")
    assert after.reverse(before.forward(addr, now=NOW), now=NOW) == addr
    assert after.reverse(after.forward(addr, now=NOW), now=NOW) == addr


@given(address, secret)
def test_srs0_of_another_forwarder_becomes_srs1_that_reverses_to_it(addr: str, key: str) -> None:
    first = SRS(["first"], "first.example")
    second = SRS([key], "second.example")
    srs0 = first.forward(addr, now=NOW)
    srs1 = second.forward(srs0, now=NOW)
    assert srs1.lstrip('"').startswith("SRS1=")
    assert second.reverse(srs1, now=NOW) == srs0
    assert first.reverse(second.reverse(srs1, now=NOW), now=NOW) == addr


# Ten hash characters: a mutation that happened to verify would be a
# 1-in-2^45 event, so the property is about the scheme, not about luck.
LONG = {"hash_length": 10, "hash_min_length": 10}


@given(address, st.data())
def test_no_mutated_field_ever_reverses(addr: str, data: st.DataObject) -> None:
    s = SRS(["k1", "k2"], "fwd.example.net", **LONG)
    out = s.forward(addr, now=NOW)
    quoted = out.startswith('"')
    local, _, host = out.rpartition("@")
    body = local.strip('"')
    fields = body[5:].split("=", 3)  # hash, stamp, host, user
    which = data.draw(st.integers(min_value=0, max_value=3))
    field = fields[which]
    pos = data.draw(st.integers(min_value=0, max_value=len(field) - 1))
    alphabet = string.ascii_letters + string.digits + "+/" if which == 0 else ATEXT + "."
    new_char = data.draw(st.sampled_from(alphabet))
    # A change of letter case is not a change: the scheme folds case.
    assume(new_char.lower() != field[pos].lower())
    fields[which] = field[:pos] + new_char + field[pos + 1 :]
    mutated_local = body[:5] + "=".join(fields)
    mutated = (f'"{mutated_local}"' if quoted else mutated_local) + "@" + host
    try:
        reversed_ = s.reverse(mutated, now=NOW)
    except SRSError:
        return
    raise AssertionError(f"{mutated!r} reversed to {reversed_!r}")


@given(address, st.integers(min_value=22, max_value=1023))
def test_stamps_outside_the_window_never_reverse(addr: str, age: int) -> None:
    s = SRS(["k"], "fwd.example.net")
    out = s.forward(addr, now=NOW)
    try:
        s.reverse(out, now=NOW + age * 86400)
    except SRSError:
        return
    raise AssertionError(f"{out!r} reversed {age} days later")


@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    s = SRS(["k"], "fwd.example.net")
    for fn in (s.forward, s.reverse):
        with contextlib.suppress(SRSError):
            fn(text, now=NOW)
