"""The Postfix virtual map format (fwdmilter/virtual.py) and the table's rules
(fwdmilter/table.py): what import reads, what export writes, what is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwdmilter import config, table, virtual
from fwdmilter.states import Forward

CFG = config.loads(
    '[srs]\ndomain = "fwd.example"\n[forwarding]\ndomains = ["fwd.example"]\nmax_targets = 3\n'
)


def test_postmap_logical_lines_comments_and_separators() -> None:
    text = (
        "# a comment\n"
        "\n"
        "a@fwd.example\tx@one.example,y@two.example\n"
        "   # an indented comment does not continue anything\n"
        "b@fwd.example x@one.example ,\n"
        "\t y@two.example  z@three.example\n"
        "c@fwd.example x#y@one.example\n"
    )
    entries, errors = virtual.parse(text)
    assert errors == []
    assert entries == [
        virtual.Entry(3, "a@fwd.example", ("x@one.example", "y@two.example")),
        virtual.Entry(5, "b@fwd.example", ("x@one.example", "y@two.example", "z@three.example")),
        virtual.Entry(7, "c@fwd.example", ("x#y@one.example",)),  # '#' inside a line is data
    ]


@pytest.mark.parametrize(
    ("text", "lineno", "why"),
    [
        ("a@fwd.example\n", 1, "no target"),
        ("\n  x@one.example\n", 2, "continuation line with no line to continue"),
        ("a@fwd.example x@one.example,,y@two.example\n", 1, "empty target between commas"),
        ("a@fwd.example , x@one.example\n", 1, "empty target between commas"),
        ("a@fwd.example,b@fwd.example x@one.example\n", 1, "without a comma"),
    ],
)
def test_bad_lines_are_named(text: str, lineno: int, why: str) -> None:
    entries, errors = virtual.parse(text)
    assert entries == [] and [e.lineno for e in errors] == [lineno]
    assert why in str(errors[0]) and str(errors[0]).startswith(f"line {lineno}: ")


_local = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._+-#", min_size=1, max_size=12)
_address = st.builds(lambda u, d: f"{u}@{d}.example", _local, st.sampled_from(["one", "two"]))


@given(
    st.dictionaries(
        st.builds(lambda u: f"{u}@fwd.example", _local),
        st.lists(_address, min_size=1, max_size=5, unique=True),
        max_size=8,
    )
)
def test_format_then_parse_is_the_identity(table_: dict[str, list[str]]) -> None:
    writable = {k: v for k, v in table_.items() if not virtual.unwritable(k, key=True)}
    text = virtual.format_entries(sorted(writable.items()), header="exported\nby a test")
    entries, errors = virtual.parse(text)
    assert errors == []
    assert {e.key: list(e.targets) for e in entries} == writable


def test_what_a_map_cannot_hold() -> None:
    assert virtual.unwritable("#x@fwd.example", key=True) == "a line starting with # is a comment"
    assert virtual.unwritable("#x@one.example") == ""  # a target may start with #
    assert "comma" in virtual.unwritable("a,b@one.example")


def test_targets_normalised_collapsed_checked_and_capped() -> None:
    got = table.check_targets(
        CFG, "bob@fwd.example", ["A@X.example", "<a@x.example>", "b@y.example"]
    )
    assert got == ("a@x.example", "b@y.example")
    with pytest.raises(table.TableError, match=r"itself in forwarding\.domains"):
        table.check_targets(CFG, "bob@fwd.example", ["a@x.example", "carol@Fwd.Example"])
    with pytest.raises(
        table.TableError, match=r"4 targets, more than forwarding.max_targets \(3\)"
    ):
        table.check_targets(CFG, "bob@fwd.example", [f"t{i}@x.example" for i in range(4)])
    with pytest.raises(table.TableError, match="no target"):
        table.check_targets(CFG, "bob@fwd.example", [])
    with pytest.raises(table.TableError, match="not a mail address"):
        table.check_targets(CFG, "bob@fwd.example", ["a b@x.example"])


@pytest.mark.parametrize(
    ("given_", "stored"),
    [
        ("192.0.2.7", "192.0.2.7/32"),
        ("192.0.2.7/24", "192.0.2.0/24"),
        ("2001:DB8::1/64", "2001:db8::/64"),
        ("Alumni.Example.ORG.", "alumni.example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_forwarders_are_stored_in_one_form(given_: str, stored: str) -> None:
    assert table.forwarder(given_) == stored


@pytest.mark.parametrize(
    "bad", ["", "localhost", "a b.example", "-x.example", "192.0.2.0/33", "x.example/24", "1.2.3"]
)
def test_forwarders_that_are_neither_network_nor_domain(bad: str) -> None:
    with pytest.raises(table.TableError, match="forwarder"):
        table.forwarder(bad)


def test_effective_policy_names_each_source() -> None:
    cfg = config.loads(
        '[srs]\ndomain = "fwd.example"\nrewrite = "when-needed"\noutbound_ips = ["192.0.2.1"]\n'
        '[spf]\nsoftfail = "tempfail"\n'
    )
    fwd = Forward("bob@fwd.example", ("a@x.example",), spf_actions=(("fail", "accept"),))
    p = table.effective_policy(cfg, fwd, {"spf.softfail", "srs.rewrite"})
    assert p["spf"]["fail"] == {"value": "accept", "source": "recipient"}
    assert p["spf"]["softfail"] == {"value": "tempfail", "source": "global"}
    assert p["spf"]["none"] == {"value": "accept", "source": "default"}
    assert p["rewrite"] == {"value": "when-needed", "source": "global"}
    assert p["trusted"] == {"value": [], "source": "default"}
    own = Forward("bob@fwd.example", ("a@x.example",), rewrite="none", trusted=("192.0.2.0/24",))
    p = table.effective_policy(config.loads('[srs]\ndomain = "fwd.example"\n'), own, ())
    assert p["rewrite"] == {"value": "none", "source": "recipient"}
    assert p["trusted"] == {"value": ["192.0.2.0/24"], "source": "recipient"}
