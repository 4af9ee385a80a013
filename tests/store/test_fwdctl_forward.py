"""fwdctl's forwarding-table commands, run in process on SQLite and on Redis.

``fwdctl forward set/add-target/remove-target/policy/trust/untrust/show/
list/import/export`` each against a real store of both backends (a private
Redis server of the harness), the confirmation mails through a real SMTP
listener (tests/harness/sink.py), and ``postmap`` (Postfix) reading what
``export`` wrote.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fwdmilter import cli, confirm
from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import Forward, Store
from tests.harness.sink import Sink
from tests.store.conftest import make_backend


@dataclass
class Run:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Fwdctl:
    """``fwdctl --config FILE ...`` in this process, on one fresh store."""

    def __init__(
        self,
        tmp: Path,
        settings: StoreSettings,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        extra: str = "",
    ) -> None:
        self.settings = settings
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.config = tmp / "fwdmilter.toml"
        self.config.write_text(
            '[srs]\ndomain = "fwd.example"\nsecrets_file = "/nonexistent"\n'
            '[forwarding]\ndomains = ["fwd.example"]\nmax_targets = 3\n'
            '[spf]\nsoftfail = "accept"\n'
            f'[store]\nurl = "{settings.url}"\nprefix = "{settings.prefix}"\n' + extra
        )

    def __call__(self, *args: str, stdin: str = "") -> Run:
        self.capsys.readouterr()
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        rc = cli.main(["--config", str(self.config), *args])
        out, err = self.capsys.readouterr()
        return Run(rc, out, err)

    def ok(self, *args: str, stdin: str = "") -> Run:
        done = self(*args, stdin=stdin)
        assert done.rc == 0, (args, done)
        return done

    def forward(self, rcpt: str) -> Forward | None:
        store = self.store()
        try:
            return store.get_forward(rcpt)
        finally:
            store.close()

    def store(self) -> Store:
        return open_store(self.settings, instance="tests")


@pytest.fixture(params=["sqlite", "redis"])
def fwdctl(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Fwdctl:
    backend = make_backend(request.param, request, tmp_path)
    return Fwdctl(tmp_path, backend.new_settings(), capsys, monkeypatch)


BOB = "bob@fwd.example"


# -- several targets ------------------------------------------------------------------


def test_set_takes_several_targets_collapsing_duplicates(fwdctl: Fwdctl) -> None:
    done = fwdctl.ok("forward", "set", BOB, "a@x.example", "B@Y.example", "<A@X.example>")
    assert done.out == f"{BOB} -> a@x.example, b@y.example\n"
    shown = fwdctl.ok("forward", "show", BOB, "--json").json()
    assert shown["targets"] == ["a@x.example", "b@y.example"]
    assert shown["target"] == "a@x.example"  # the one-target field stays: the first
    assert shown["active"] is True and shown["rcpt"] == BOB
    listed = fwdctl.ok("forward", "list", "--json").json()
    assert [(f["rcpt"], f["targets"], f["target"]) for f in listed] == [
        (BOB, ["a@x.example", "b@y.example"], "a@x.example")
    ]
    assert fwdctl.ok("forward", "list").out == f"{BOB} -> a@x.example, b@y.example\n"


def test_one_target_set_keeps_working_with_its_options(fwdctl: Fwdctl) -> None:
    done = fwdctl.ok(
        "forward", "set", BOB, "a@x.example", "--contact", "bob@mobile.example",
        "--null-sender", "hold",
    )  # fmt: skip
    assert done.out == f"{BOB} -> a@x.example  contact=bob@mobile.example  null-sender=hold\n"
    # Only the target changes when only the target is given.
    fwdctl.ok("forward", "set", BOB, "c@z.example")
    f = fwdctl.forward(BOB)
    assert f is not None
    assert (f.targets, f.contact, f.null_sender) == (("c@z.example",), "bob@mobile.example", "hold")


def test_every_target_is_checked_and_nothing_is_stored_on_refusal(fwdctl: Fwdctl) -> None:
    fwdctl.ok("forward", "set", BOB, "a@x.example")
    looped = fwdctl("forward", "set", BOB, "c@z.example", "alice@FWD.example")
    assert looped.rc == 1 and "alice@fwd.example is itself in forwarding.domains" in looped.err
    bad = fwdctl("forward", "set", BOB, "c@z.example", "not-an-address")
    assert bad.rc == 1 and "'not-an-address' is not a mail address" in bad.err
    many = fwdctl("forward", "set", BOB, "a@1.example", "a@2.example", "a@3.example", "a@4.example")
    assert many.rc == 1 and "4 targets, more than forwarding.max_targets (3)" in many.err
    f = fwdctl.forward(BOB)
    assert f is not None and f.targets == ("a@x.example",)


def test_add_and_remove_targets(fwdctl: Fwdctl) -> None:
    fwdctl.ok("forward", "set", BOB, "a@x.example")
    added = fwdctl.ok("forward", "add-target", BOB, "b@y.example", "A@x.example")
    assert added.out == f"{BOB} -> a@x.example, b@y.example\n"
    full = fwdctl("forward", "add-target", BOB, "c@z.example", "d@z.example")
    assert full.rc == 1 and "more than forwarding.max_targets (3)" in full.err
    removed = fwdctl.ok("forward", "remove-target", BOB, "A@X.example")
    assert removed.out == f"{BOB} -> b@y.example\n"
    unknown = fwdctl("forward", "remove-target", BOB, "q@q.example")
    assert unknown.rc == 1 and "not a target of it: q@q.example" in unknown.err
    last = fwdctl("forward", "remove-target", BOB, "b@y.example")
    assert last.rc == 1 and f"fwdctl forward delete {BOB}" in last.err
    f = fwdctl.forward(BOB)
    assert f is not None and f.targets == ("b@y.example",)
    nobody = fwdctl("forward", "add-target", "nobody@fwd.example", "b@y.example")
    assert nobody.rc == 1 and "no such forwarding address" in nobody.err


# -- policy and trusted forwarders ----------------------------------------------------------


def _policy(fwdctl: Fwdctl) -> dict[str, Any]:
    out: dict[str, Any] = fwdctl.ok("forward", "show", BOB, "--json").json()["policy"]
    return out


def test_policy_overrides_and_inherits_with_sources(fwdctl: Fwdctl) -> None:
    fwdctl.ok("forward", "set", BOB, "a@x.example")
    p = _policy(fwdctl)
    assert p["spf"]["softfail"] == {"value": "accept", "source": "global"}  # in the file
    assert p["spf"]["fail"] == {"value": "reject", "source": "default"}
    assert p["rewrite"] == {"value": "srs", "source": "default"}
    assert p["null_sender"] == {"value": "forward", "source": "default"}
    assert p["trusted_networks"] == {"value": ["127.0.0.0/8", "::1/128"], "source": "default"}
    done = fwdctl.ok("forward", "policy", BOB, "--spf-softfail", "reject", "--rewrite", "none")
    assert "  spf softfail: reject (recipient)" in done.out.splitlines()
    p = _policy(fwdctl)
    assert p["spf"]["softfail"] == {"value": "reject", "source": "recipient"}
    assert p["rewrite"] == {"value": "none", "source": "recipient"}
    f = fwdctl.forward(BOB)
    assert f is not None and f.spf_actions == (("softfail", "reject"),) and f.rewrite == "none"
    # Changing the targets keeps the policy.
    fwdctl.ok("forward", "set", BOB, "c@z.example", "d@z.example")
    assert _policy(fwdctl)["spf"]["softfail"]["source"] == "recipient"
    fwdctl.ok("forward", "policy", BOB, "--spf-softfail", "inherit", "--rewrite", "inherit")
    p = _policy(fwdctl)
    assert p["spf"]["softfail"]["source"] == "global" and p["rewrite"]["source"] == "default"
    shown = fwdctl.ok("forward", "show", BOB).out.splitlines()
    assert "  spf softfail: accept (global)" in shown
    assert "  trusted.networks: 127.0.0.0/8, ::1/128 (default)" in shown


def test_rewrite_when_needed_warns_without_outbound_ips(fwdctl: Fwdctl) -> None:
    fwdctl.ok("forward", "set", BOB, "a@x.example")
    done = fwdctl.ok("forward", "policy", BOB, "--rewrite", "when-needed")
    assert "acts as srs while srs.outbound_ips is empty" in done.err
    assert _policy(fwdctl)["rewrite"]["note"] == "acts as srs: srs.outbound_ips is empty"
    quiet = fwdctl.ok("forward", "policy", BOB, "--null-sender", "hold")
    assert "warning" in quiet.err  # still when-needed, still no outbound_ips
    assert _policy(fwdctl)["null_sender"] == {"value": "hold", "source": "recipient"}


def test_trust_normalises_and_untrust_refuses_a_stranger(fwdctl: Fwdctl) -> None:
    fwdctl.ok("forward", "set", BOB, "a@x.example")
    fwdctl.ok("forward", "trust", BOB, "192.0.2.7/24")
    fwdctl.ok("forward", "trust", BOB, "Bücher.Example.")
    again = fwdctl.ok("forward", "trust", BOB, "192.0.2.0/24")
    assert again.out == f"{BOB} trusted forwarders: 192.0.2.0/24, xn--bcher-kva.example\n"
    assert _policy(fwdctl)["trusted"] == {
        "value": ["192.0.2.0/24", "xn--bcher-kva.example"],
        "source": "recipient",
    }
    for bad in ("not a domain", "-bad-.example", "localhost", "192.0.2.0/33"):
        refused = fwdctl("forward", "trust", BOB, "--", bad)
        assert refused.rc == 1 and "forwarder" in refused.err, bad
    stranger = fwdctl("forward", "untrust", BOB, "2001:db8::1")
    assert stranger.rc == 1 and "2001:db8::1/128 is not one of its trusted" in stranger.err
    done = fwdctl.ok("forward", "untrust", BOB, "192.0.2.99/24")
    assert done.out == f"{BOB} trusted forwarders: xn--bcher-kva.example\n"


# -- import and export -------------------------------------------------------------------

VIRTUAL = """\
# forwarding addresses of fwd.example
bob@fwd.example     a@x.example, b@y.example
carol@fwd.example   c@z.example
    C2@z.example,d@z.example
Dave@FWD.example    dave@example.com # not a comment: # is data, as for postmap
"""


def test_import_dry_run_then_import_then_nothing_to_do(fwdctl: Fwdctl, tmp_path: Path) -> None:
    path = tmp_path / "virtual"
    path.write_text(VIRTUAL.replace(" # not a comment: # is data, as for postmap", ""))
    fwdctl.ok("forward", "set", BOB, "old@x.example", "--contact", "bob@mobile.example")
    dry = fwdctl.ok("forward", "import", str(path), "--dry-run")
    assert dry.out.splitlines() == [
        "dry run: changed bob@fwd.example: old@x.example -> a@x.example, b@y.example",
        "dry run: added carol@fwd.example -> c@z.example, c2@z.example, d@z.example",
        "dry run: added dave@fwd.example -> dave@example.com",
        "dry run: 2 added, 1 changed, 0 unchanged (nothing was changed)",
    ]
    f = fwdctl.forward(BOB)
    assert f is not None and f.targets == ("old@x.example",)
    assert fwdctl.forward("carol@fwd.example") is None
    done = fwdctl.ok("forward", "import", str(path))
    assert done.out.splitlines()[-1] == "2 added, 1 changed, 0 unchanged"
    f = fwdctl.forward(BOB)
    assert f is not None and f.targets == ("a@x.example", "b@y.example")
    assert f.contact == "bob@mobile.example"  # only the targets change
    carol = fwdctl.forward("carol@fwd.example")
    assert carol is not None and carol.targets == ("c@z.example", "c2@z.example", "d@z.example")
    again = fwdctl.ok("forward", "import", "-", stdin=path.read_text())
    assert again.out == "0 added, 0 changed, 3 unchanged\n"


def test_import_is_all_or_nothing_and_names_the_lines(fwdctl: Fwdctl, tmp_path: Path) -> None:
    path = tmp_path / "virtual"
    path.write_text(
        VIRTUAL
        + "@fwd.example catchall@example.com\n"
        + "frank@other.example frank@example.com\n"
        + "gina@fwd.example gina\n"
        + "bob@fwd.example again@example.com\n"
        + "henry@fwd.example henry@fwd.example\n"
        + "ida@fwd.example\n"
    )
    done = fwdctl("forward", "import", str(path))
    assert done.rc == 1 and done.out == ""
    err = done.err.splitlines()
    assert [re.sub(r"^fwdctl: \S+: (line \d+):.*", r"\1", line) for line in err] == [
        "line 5",  # a target that is not an address ("#")
        "line 6",  # catch-all
        "line 7",  # outside forwarding.domains
        "line 8",  # a local name
        "line 9",  # bob twice
        "line 10",  # a loop
        "line 11",  # no target
        "fwdctl: virtual: nothing imported: 7 bad line(s)".replace("virtual", str(path)),
    ]
    assert "catch-all" in err[1] and "line 2" in err[4]
    assert fwdctl.forward(BOB) is None
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4] + lines[5:8]) + "\n")
    skipped = fwdctl.ok("forward", "import", str(path), "--skip-unsupported")
    assert skipped.err.count("skipped:") == 3
    assert skipped.out.splitlines()[-1] == "2 added, 0 changed, 0 unchanged"


def test_export_round_trips_and_postmap_reads_it(fwdctl: Fwdctl, tmp_path: Path) -> None:
    fwdctl.ok("forward", "set", BOB, "a@x.example", "b@y.example")
    fwdctl.ok("forward", "set", "alice@fwd.example", "alice@example.com")
    fwdctl.ok("forward", "set", "carol@fwd.example", "carol@example.com")
    fwdctl.ok("forward", "delete", "carol@fwd.example", "--moved-to", "carol@new.example")
    exported = fwdctl.ok("forward", "export").out
    entries = [line for line in exported.splitlines() if not line.startswith("#")]
    assert entries == [
        "alice@fwd.example alice@example.com",
        "bob@fwd.example a@x.example, b@y.example",
    ]  # sorted; the moved one is not there
    assert "moved recipients" in exported
    again = fwdctl.ok("forward", "import", "-", stdin=exported)
    assert again.out == "0 added, 0 changed, 2 unchanged\n"
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\n")
    table = tmp_path / "virtual"
    table.write_text(exported)
    subprocess.run(["postmap", "-c", str(tmp_path), f"hash:{table}"], check=True)
    got = subprocess.run(
        ["postmap", "-c", str(tmp_path), "-q", BOB, f"hash:{table}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert got.strip() == "a@x.example, b@y.example"


# -- confirmation of new targets ------------------------------------------------------------


@pytest.fixture
def mailed(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Fwdctl, Sink]]:
    """fwdctl with confirmation on, its mails to a real SMTP listener."""
    sink = Sink()
    port = sink.add_listener("submit")
    backend = make_backend("sqlite", request, tmp_path)
    extra = f'[mta]\nsubmit = "127.0.0.1:{port}"\n[web]\nbase_url = "https://fwd.example"\n'
    run = Fwdctl(tmp_path, backend.new_settings(), capsys, monkeypatch, extra)
    text = run.config.read_text().replace(
        "max_targets = 3\n", "max_targets = 3\nconfirm_targets = true\n"
    )
    run.config.write_text(text)
    try:
        yield run, sink
    finally:
        sink.stop()


def _secret(sink: Sink, to: str) -> str:
    body = sink.wait_for(to, timeout=10).email.get_body()
    assert body is not None
    found = re.search(r"/confirm/(\S+)", body.get_content())
    assert found is not None
    return found.group(1)


def test_confirmation_adds_or_replaces_one_target(mailed: tuple[Fwdctl, Sink]) -> None:
    fwdctl, sink = mailed
    two = fwdctl("forward", "set", BOB, "a@x.example", "b@y.example")
    assert two.rc == 1 and "2 new targets" in two.err and "add-target" in two.err
    first = fwdctl.ok("forward", "set", BOB, "a@x.example")
    assert first.out.startswith(f"{BOB} -> (none)  pending=a@x.example")
    store = fwdctl.store()
    try:
        assert confirm.answer(store, _secret(sink, "a@x.example"), True, 0.0)[0] == "confirmed"
        # add-target: the new one joins the others once confirmed.
        fwdctl.ok("forward", "add-target", BOB, "b@y.example")
        f = store.get_forward(BOB)
        assert f is not None and (f.targets, f.pending) == (("a@x.example",), "b@y.example")
        outcome, f = confirm.answer(store, _secret(sink, "b@y.example"), True, 0.0)
        assert outcome == "confirmed" and f is not None
        assert f.targets == ("a@x.example", "b@y.example") and f.pending == ""
        # set keeping one: the dropped one goes at once, the new one joins on confirmation.
        fwdctl.ok("forward", "set", BOB, "b@y.example", "c@z.example")
        f = store.get_forward(BOB)
        assert f is not None and (f.targets, f.pending) == (("b@y.example",), "c@z.example")
        confirm.answer(store, _secret(sink, "c@z.example"), True, 0.0)
        f = store.get_forward(BOB)
        assert f is not None and f.targets == ("b@y.example", "c@z.example")
        # set keeping none: mail goes to the old ones until the new one replaces them.
        fwdctl.ok("forward", "set", BOB, "d@w.example")
        f = store.get_forward(BOB)
        assert f is not None and (f.targets, f.pending) == (
            ("b@y.example", "c@z.example"),
            "d@w.example",
        )
        confirm.answer(store, _secret(sink, "d@w.example"), True, 0.0)
        f = store.get_forward(BOB)
        assert f is not None and f.targets == ("d@w.example",)
        # The pending target can be withdrawn with remove-target.
        fwdctl.ok("forward", "add-target", BOB, "e@v.example")
        fwdctl.ok("forward", "remove-target", BOB, "e@v.example")
        f = store.get_forward(BOB)
        assert f is not None and (f.targets, f.pending) == (("d@w.example",), "")
        assert store.tokens("confirm", BOB, 0.0) == []
    finally:
        store.close()
