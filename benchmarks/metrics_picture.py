"""A picture of the dashboard's main panels, from a private Prometheus
scraping fwdmilter under a short load (docs/operations.md#metrics).

Run from the repository root as root::

    .venv/bin/python -m benchmarks.metrics_picture [--seconds 150] [--out docs/metrics.png]

The set-up is benchmarks.milter_rate's ``fwd-unix`` variant (a private
Postfix relaying to smtp-sink, fwdmilter on its SQLite store, the harness's
DNS server) with ``metrics.listen`` on; a private Prometheus (Debian's
``prometheus``) scrapes it every 2 s. For ``--seconds`` the load goes in
waves: batches of forwarded mail from ``bench@pass.example`` (SPF pass),
mail from ``fail.example`` (SPF fail: 550 at RCPT TO) and, in the middle
third, some from ``slow.example``, whose DNS never answers (SPF temperror
after ``dns.timeout``: 451). Every few seconds, too: null-sender mail to a
forged SRS address (refused at RCPT) and, more rarely, to a real one
(reversed at RCPT; being plain text, no delivery status notification, it is
then held); and, after the first quarter, unverified mail (``none.example``)
to a new target at ``refuse.example``, whose next hop (a second smtp-sink)
refuses every RCPT, so Postfix's bounce of it is held (Postfix passes its
own bounces through ``non_smtpd_milters`` here); unverified mail for a held
target gets 451. Then each main panel's queries of
contrib/grafana/fwdmilter.json are asked of Prometheus's query API over the
run (``$__rate_interval`` as 20 s), and /usr/bin/python3 with Debian's
matplotlib (``python3-matplotlib``) draws them (benchmarks/plot_metrics.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.milter_rate import HELO, RCPT, BenchError, Setup, send_batch, started
from tests.harness.proc import Process, free_port
from tests.harness.prometheus import DASHBOARD, PrometheusServer, instantiate

REPO = Path(__file__).resolve().parents[1]
PANELS = (
    "Decisions per stage",
    "SPF results at MAIL FROM",
    "SRS forward, reverse, refused",
    "Held entries by state",
    "Store latency",
    "DNS (SPF) latency",
)
STEP = 2.0
REFUSING = "refuse.example"


def refusing_next_hop(setup: Setup, folder: Path) -> Process:
    """Route REFUSING to an smtp-sink that refuses every RCPT, and let
    Postfix's own bounces through the milter."""
    port = free_port()
    proc = Process(
        ["smtp-sink", "-u", "root", "-f", "rcpt", f"127.0.0.1:{port}", "100"],
        folder / "refusing-sink.log",
    )
    pf = setup.postfix
    fm = setup.fwd_milters["fwd-unix"]
    routes = {REFUSING: f"smtp:[127.0.0.1]:{port}", "*": f"smtp:[127.0.0.1]:{setup.sink.port}"}
    pf.set_main(
        transport_maps=pf.write_map("transport", routes),
        non_smtpd_milters=fm.spec,
        internal_mail_filter_classes="bounce",
    )
    return proc


def smtp(setup: Setup, sender: str, rcpt: str) -> None:
    """One message by smtplib; a refusal is part of the load."""
    with (
        smtplib.SMTP("127.0.0.1", setup.ports["fwd-unix"], timeout=30) as client,
        contextlib.suppress(smtplib.SMTPException),
    ):
        client.sendmail(sender, [rcpt], f"Subject: picture\r\n\r\n{rcpt}\r\n")


def source(setup: Setup, sender: str, messages: int, sessions: int) -> None:
    """smtp-source mail that fwdmilter refuses (no delivery to wait for)."""
    subprocess.run(
        [
            "smtp-source",
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-N",
            "-f",
            sender,
            "-t",
            RCPT,
            "-M",
            HELO,
            f"127.0.0.1:{setup.ports['fwd-unix']}",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )


def load(setup: Setup, seconds: float) -> None:
    """Waves of forwarded and refused mail for ``seconds``."""
    fm = setup.fwd_milters["fwd-unix"]
    srs = fm.fwdctl("srs", "forward", "alice@pass.example").stdout.strip()
    start = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        n += 1
        # A wave every 30 s: from 10 to 80 messages a batch and back.
        size = 10 + int(70 * abs(((elapsed / 30) % 2) - 1))
        send_batch(setup, "fwd-unix", size, 5, 120)
        source(setup, f"x{n}@fail.example", max(2, size // 8), 2)
        if seconds / 3 < elapsed < 2 * seconds / 3 and n % 2 == 0:
            source(setup, f"s{n}@slow.example", 2, 2)
        if n % 3 == 0:
            smtp(setup, "", f"SRS0=AAAA=AA=x.example=y{n}@fwd.example")
        if n % 9 == 0:
            smtp(setup, "", srs)
        if elapsed > seconds / 4 and n % 4 == 0:
            held = f"h{n}@fwd.example"
            fm.fwdctl("forward", "set", held, f"t{n}@{REFUSING}")
            smtp(setup, f"u{n}@none.example", held)
            smtp(setup, f"v{n}@none.example", f"h{n - 4}@fwd.example")
        print(f"{elapsed:6.1f}s batch {n}: {size} forwarded", file=sys.stderr)


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def collect(prom: PrometheusServer, start: float, end: float) -> dict[str, Any]:
    dash = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in dash["panels"]}
    out: dict[str, Any] = {"start": start, "panels": []}
    for title in PANELS:
        panel = panels[title]
        lines = []
        for target in panel["targets"]:
            expr = instantiate(target["expr"], "20s")
            for series in prom.query_range(expr, start, end, STEP):
                points = [(float(t) - start, float(v)) for t, v in series["values"]]
                lines.append({"label": legend(target["legendFormat"], series["metric"]),
                              "points": points})
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        out["panels"].append({"title": title, "unit": unit, "lines": lines})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="length of the load")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "metrics.png")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    for tool in ("smtp-source", "prometheus", "postfix", "dnsmasq"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on the PATH")
    folder = Path(tempfile.mkdtemp(prefix="fwdmilter-metrics-picture-"))
    port = free_port()
    try:
        settings = {"metrics": {"listen": f"127.0.0.1:{port}"}, "dns": {"timeout": 1.0}}
        with started(folder, ["fwd-unix"], 200, fwd_settings=settings) as setup:
            refusing = refusing_next_hop(setup, folder)
            prom = PrometheusServer(
                folder / "prometheus", [f"127.0.0.1:{port}"], scrape_interval="2s"
            )
            try:
                start = time.time()
                time.sleep(6)  # a few scrapes of the idle milter first
                load(setup, args.seconds)
                time.sleep(6)
                data = collect(prom, start, time.time())
            finally:
                prom.stop()
                refusing.stop()
        data_file = folder / "metrics.json"
        data_file.write_text(json.dumps(data))
        subprocess.run(
            ["/usr/bin/python3", str(REPO / "benchmarks" / "plot_metrics.py"), str(data_file),
             str(args.out)],
            check=True,
        )
    except BenchError as exc:
        print(f"metrics_picture: {exc}\nwork folder: {folder}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
