"""fwdmilter.table's rules for a recipient's own SPF actions and sender
rewrite, which fwdweb applies (fwdctl's argparse choices are the same sets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwdmilter import config, table


def test_spf_actions_set_and_drop_in_the_order_of_the_results() -> None:
    current = (("temperror", "accept"), ("fail", "tempfail"))
    got = table.spf_actions(current, {"softfail": "reject", "fail": "inherit"})
    assert got == (("softfail", "reject"), ("temperror", "accept"))
    assert table.spf_actions((), {"none": "inherit"}) == ()


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"pass": "reject"}, r"SPF result 'pass'.*pass is always accepted"),
        ({"fail": "drop"}, r"SPF fail: action 'drop' is not one of accept, reject, tempfail"),
        ({"fail": 1}, r"action 1 is not one of"),
    ],
)
def test_spf_actions_refuse_what_fwdctl_refuses(changes: dict[str, object], text: str) -> None:
    with pytest.raises(table.TableError, match=text):
        table.spf_actions((), changes)


def test_rewrite_is_stored_as_the_milter_reads_it() -> None:
    assert [table.rewrite(v) for v in ("srs", "when-needed", "none", "inherit")] == [
        "srs",
        "when-needed",
        "none",
        "",
    ]
    for bad in ("", "always", None, "SRS"):
        with pytest.raises(table.TableError, match="is not one of srs, when-needed, none, inherit"):
            table.rewrite(bad)


def test_configured_keys_are_those_the_file_sets(tmp_path: Path) -> None:
    path = tmp_path / "fwdmilter.toml"
    path.write_text('[srs]\ndomain = "fwd.example"\n[spf]\nsoftfail = "reject"\n')
    cfg = config.load(path)
    assert table.configured_keys(cfg) == {"srs.domain", "spf.softfail"}
    assert table.configured_keys(config.loads('[srs]\ndomain = "fwd.example"\n')) == frozenset()
