"""contrib/: the Grafana dashboard and the Prometheus rules, against the real endpoint.

A milter with ``metrics.listen`` serves a BORDER Postfix; mail goes through
it that makes every series the dashboard and the rules ask for (a forward,
an SPF failure, a forged bounce, a DNS timeout's 451, a held bounce and the
451 for its target). Then:

- every metric the queries name is on the endpoint, with the labels they
  match and group by, and every label value they match on is one the
  endpoint reports;
- a private Prometheus (Debian's) scrapes the endpoint, and each of the
  dashboard's queries answers with data;
- ``promtool check rules`` accepts the rules, and ``promtool test rules``
  runs the cases of contrib/prometheus/fwdmilter.rules.test.yml.
"""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import RuntimeDir
from tests.harness.proc import free_port, wait_until
from tests.harness.prometheus import (
    PrometheusServer,
    dashboard_queries,
    grouping_labels,
    instantiate,
    rule_queries,
    selectors,
)
from tests.harness.smtp import unique

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "contrib" / "prometheus"
#: Labels Prometheus gives every series it scrapes, and its own series.
TARGET_LABELS = frozenset({"instance", "job"})
PROMETHEUS_SERIES = frozenset({"up"})

Exported = dict[str, dict[str, set[str]]]  # series name -> label -> values


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def exported(text: str) -> Exported:
    series: Exported = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = series.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return series


@pytest.fixture(scope="module")
def endpoint(
    mail: MailWorld,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[int]:
    """The metrics port of a milter that has seen every kind of mail."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("dashboard")
    fm = FwdMilter(
        runtime.socket("dash"),
        workdir,
        dns_port=mail.dns.port,
        settings={"metrics": {"listen": f"127.0.0.1:{port}"}},
    )
    border = border_factory(milter=fm.spec, start=False, name="dash")
    fm.serve(border)
    border.start()
    try:
        tok = unique()
        rcpt, target = f"d{tok}@fwd.example", f"t{tok}@downstream.example"
        fm.fwdctl("forward", "set", rcpt, target)
        assert mail.send_from_outside(border, f"a{tok}@pass.example", [rcpt], "pass").accepted
        mail.wait_for(target)
        t = mail.send_from_outside(border, f"x{tok}@fail.example", [rcpt], "fail")
        assert t.rcpts[0][1].code == 550  # the SPF verdict, given at RCPT TO
        forged = f"SRS0=AAAA=AA=x.example=y{tok}@fwd.example"
        t = mail.send_from_outside(border, "", [forged], "forged")
        assert t.rcpts[0][1].code == 550
        t = mail.send_from_outside(border, f"s{tok}@slow.example", [rcpt], "slow")
        assert t.rcpts[0][1].code == 451
        # An unverified sender's mail that the next hop refuses: held.
        with mail.sink.refusing(target, "550 5.1.1 mailbox unknown"):
            assert mail.send_from_outside(border, f"u{tok}@none.example", [rcpt], "u").accepted
            wait_until(
                lambda: 'fwdmilter_held_entries{state="H"} 1.0' in scrape(port),
                30,
                "a held entry",
            )
        # ... and the 451 that unverified mail for that target gets now.
        t = mail.send_from_outside(border, f"v{tok}@none.example", [rcpt], "deferred")
        assert t.rcpt(rcpt).code == 451, t
        yield port
    finally:
        fm.stop()


def all_queries() -> list[tuple[str, str]]:
    return dashboard_queries() + rule_queries()


def test_every_query_names_exported_metrics_labels_and_values(endpoint: int) -> None:
    series = exported(scrape(endpoint))
    problems: list[str] = []
    for where, expr in all_queries():
        found = selectors(expr)
        if not found:
            problems.append(f"{where}: no metric in {expr!r}")
        names: set[str] = set()
        for sel in found:
            if sel.name in PROMETHEUS_SERIES:
                names |= TARGET_LABELS
                continue
            if sel.name not in series:
                problems.append(f"{where}: {sel.name} is not on the endpoint")
                continue
            labels = series[sel.name]
            names |= set(labels) | TARGET_LABELS
            for label, op, value in sel.matchers:
                if label in TARGET_LABELS:
                    continue
                if label not in labels:
                    problems.append(f"{where}: {sel.name} has no label {label}")
                elif op == "=" and value not in labels[label]:
                    problems.append(
                        f"{where}: {sel.name}{{{label}={value!r}}}: the endpoint has "
                        f"{sorted(labels[label])}"
                    )
        for label in grouping_labels(expr) - names:
            problems.append(f"{where}: groups by {label}, which none of its metrics has")
    assert not problems, "\n".join(problems)


def test_the_endpoint_exports_what_the_dashboard_shows(endpoint: int) -> None:
    """The other way round: no metric of the endpoint is missing from the dashboard."""
    shown = {s.name for _, expr in dashboard_queries() for s in selectors(expr)}
    families = {f.name for f in text_string_to_metric_families(scrape(endpoint))}
    # (prometheus_client's *_created series are the counters' start times.)
    ours = {f for f in families if f.startswith("fwdmilter_") and not f.endswith("_created")}
    base = {s.removesuffix("_bucket").removesuffix("_total") for s in shown}
    assert ours - base == set()


def test_a_private_prometheus_answers_every_dashboard_query(endpoint: int, tmp_path: Path) -> None:
    prom = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{endpoint}"])
    try:
        # rate() over 30 s needs two scrapes of each series.
        wait_until(
            lambda: (
                len(prom.query("fwdmilter_store_up[30s]")[:1]) == 1
                and len(prom.query("fwdmilter_store_up[30s]")[0]["values"]) >= 3
            ),
            30,
            "three scrapes",
        )
        empty = [
            f"{where}: {instantiate(expr)}"
            for where, expr in dashboard_queries()
            if not prom.query(instantiate(expr))
        ]
        assert empty == []
        assert prom.query('up{job="fwdmilter"}')[0]["value"][1] == "1"
    finally:
        prom.stop()


def test_promtool_checks_the_rules_and_runs_their_cases() -> None:
    for argv in (
        ["promtool", "check", "rules", "fwdmilter.rules.yml"],
        ["promtool", "test", "rules", "fwdmilter.rules.test.yml"],
    ):
        done = subprocess.run(
            argv, cwd=RULES_DIR, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout
    # The rules name every alert the docs promise.
    assert {name for name, _ in rule_queries()} == {
        "FwdmilterHeldMail",
        "FwdmilterHeldMailRising",
        "FwdmilterStoreDown",
        "Fwdmilter451Rate",
        "FwdmilterSlowStore",
    }
