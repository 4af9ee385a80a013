"""A private Prometheus (Debian's ``prometheus``) scraping one endpoint, and
the PromQL of contrib/: the dashboard's and the rules' queries.

API::

    prom = PrometheusServer(folder, targets=["127.0.0.1:9426"], scrape_interval="1s")
    prom.query('rate(fwdmilter_srs_total[30s])')       # the API's "result" list
    prom.query_range(expr, start, end, step)
    prom.stop()

    dashboard_queries()   # [(panel title, expr)] of contrib/grafana/fwdmilter.json
    rule_queries()        # [(alert name, expr)] of contrib/prometheus/fwdmilter.rules.yml
    selectors(expr)       # the metric selectors of an expression
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tests.harness.proc import Process, free_port, wait_until

__all__ = [
    "PrometheusServer",
    "Selector",
    "dashboard_queries",
    "grouping_labels",
    "instantiate",
    "rule_queries",
    "selectors",
]

_REPO: Final = Path(__file__).resolve().parents[2]
DASHBOARD: Final = _REPO / "contrib" / "grafana" / "fwdmilter.json"
RULES: Final = _REPO / "contrib" / "prometheus" / "fwdmilter.rules.yml"

#: PromQL's words that look like metric names but are not.
_KEYWORDS: Final = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"and", "or", "unless", "bool", "offset"}
)
_FUNCTION_OR_NAME: Final = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?")
_MATCHER: Final = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING: Final = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Selector:
    """``name{label op "value", ...}`` in an expression."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]


def selectors(expr: str) -> list[Selector]:
    """Every metric selector of ``expr``: names not followed by "(" (those are
    functions), nor keywords, nor inside a grouping clause or braces."""
    found: list[Selector] = []
    i = 0
    text = re.sub(r"\[[^\]]*\]", "", _GROUPING.sub("", expr))
    while i < len(text):
        if text[i] == "{":  # a selector without a name: {__name__=...}
            i = text.index("}", i) + 1
            continue
        if text[i] == '"':
            i = text.index('"', i + 1) + 1
            continue
        m = _FUNCTION_OR_NAME.match(text, i)
        if m is None or (i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_.")):
            i += 1
            continue
        name, call = m.group(1), m.group(2)
        i = m.end()
        if call or name in _KEYWORDS or re.fullmatch(r"[0-9.e]+", name):
            continue
        matchers: tuple[tuple[str, str, str], ...] = ()
        rest = text[i:].lstrip()
        if rest.startswith("{"):
            close = rest.index("}")
            matchers = tuple(_MATCHER.findall(rest[1:close]))
            i = len(text) - len(rest) + close + 1
        found.append(Selector(name, matchers))
    return found


def grouping_labels(expr: str) -> set[str]:
    """The labels of every ``by (...)``, ``without (...)``, ``on (...)`` clause."""
    labels: set[str] = set()
    for group in _GROUPING.findall(expr):
        labels |= {w.strip() for w in group.split(",") if w.strip()}
    return labels


def instantiate(expr: str, rate_interval: str = "30s") -> str:
    """A dashboard expression with Grafana's variables as Prometheus takes it."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", ".*")


def dashboard_queries() -> list[tuple[str, str]]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    out = [
        (panel["title"], target["expr"])
        for panel in dash["panels"]
        for target in panel.get("targets", [])
    ]
    for var in dash["templating"]["list"]:
        query = var["query"]["query"]
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert m, f"variable {var['name']}: {query}"
        out.append((f"variable {var['name']}", f"group by ({m.group(2)}) ({m.group(1)})"))
    return out


def rule_queries() -> list[tuple[str, str]]:
    """The rules' expressions, read without a YAML library: each ``expr:`` is
    one line, or a folded block (``expr: >``) of the lines indented below it."""
    out: list[tuple[str, str]] = []
    lines = RULES.read_text().split("\n")
    name = ""
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("- alert:", "- record:")):
            name = stripped.split(":", 1)[1].strip()
        if not stripped.startswith("expr:"):
            continue
        value = stripped[len("expr:") :].strip()
        if value in (">", "|", ">-", "|-"):
            indent = len(line) - len(line.lstrip())
            body = []
            for more in lines[n + 1 :]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                body.append(more.strip())
            value = " ".join(b for b in body if b)
        out.append((name, value))
    return out


class PrometheusServer:
    """``prometheus`` on a free 127.0.0.1 port, scraping ``targets`` as job fwdmilter."""

    def __init__(
        self, folder: Path, targets: Sequence[str], *, scrape_interval: str = "1s"
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            "scrape_configs:\n"
            "  - job_name: fwdmilter\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(list(targets))}\n"
        )
        self.proc = Process(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            folder / "prometheus.log",
        )
        try:
            wait_until(self._ready, 30, "prometheus is ready")
        except TimeoutError:
            self.stop()
            raise TimeoutError("prometheus did not start:\n" + self.proc.output()) from None

    def _ready(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError("prometheus died:\n" + self.proc.output())
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:  # noqa: S310 (http:// of ours)
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _api(self, path: str, params: dict[str, str]) -> Any:
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}?{query}"
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (http:// of ours)
            answer = json.loads(r.read())
        if answer.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {answer}")
        return answer["data"]["result"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._api("query", {"query": expr})
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        result: list[dict[str, Any]] = self._api("query_range", params)
        return result

    def stop(self) -> None:
        self.proc.stop()
