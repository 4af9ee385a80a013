"""The Prometheus endpoint (``[metrics] listen``), with prometheus_client.

Counters for every decision, SPF result and SRS event; histograms of store
and DNS latency; and, read from the store when scraped, the number of held
entries per state (H, R, N). Everything lives in a registry of its own, so
that nothing else in the process shows up on the endpoint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fwdmilter.errors import ConfigError, FwdmilterError
from fwdmilter.store.base import Stats

__all__ = ["PrometheusMetrics"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _HeldCollector(Collector):
    """Held entries per state, asked of the store at each scrape."""

    def __init__(self, stats: Callable[[], Stats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        held = GaugeMetricFamily(
            "fwdmilter_held_entries", "Held entries in the store, by state", labels=["state"]
        )
        up = GaugeMetricFamily("fwdmilter_store_up", "1 if the store answered the last scrape")
        try:
            stats = self._stats()
        except FwdmilterError as exc:
            log.warning("metrics: store stats unavailable: %s", exc)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for state in ("H", "R", "N"):
                held.add_metric([state], stats.held.get(state, 0))
        yield held
        yield up


class PrometheusMetrics:
    """Serves the metrics on ``listen`` ("HOST:PORT") from a thread."""

    def __init__(self, listen: str, stats: Callable[[], Stats] | None = None) -> None:
        host, _, port = listen.rpartition(":")
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._decisions = Counter(
            "fwdmilter_decisions", "Transaction decisions", ["stage", "action"], registry=r
        )
        self._spf = Counter(
            "fwdmilter_spf_results", "SPF results at MAIL FROM", ["result"], registry=r
        )
        self._srs = Counter(
            "fwdmilter_srs", "SRS addresses made, reversed and refused", ["event"], registry=r
        )
        self._held = Counter(
            "fwdmilter_held_events", "Bounces held, released and held again", ["event"], registry=r
        )
        self._store = Histogram(
            "fwdmilter_store_seconds",
            "Store latency per milter operation",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._dns = Histogram(
            "fwdmilter_spf_seconds",
            "Time of one SPF evaluation",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        if stats is not None:
            r.register(_HeldCollector(stats))
        try:
            started: Any = start_http_server(int(port), addr=host.strip("[]"), registry=r)
        except OSError as exc:
            raise ConfigError(
                f"metrics.listen: cannot listen on {listen}: {exc.strerror}"
            ) from None
        self._server = started[0] if isinstance(started, tuple) else None
        self._lock = threading.Lock()
        log.info("metrics on http://%s/metrics", listen)

    def decision(self, stage: str, action: str) -> None:
        self._decisions.labels(stage, action).inc()

    def spf_result(self, result: str) -> None:
        self._spf.labels(result).inc()

    def srs(self, event: str) -> None:
        self._srs.labels(event).inc()

    def held(self, event: str) -> None:
        self._held.labels(event).inc()

    def store_latency(self, operation: str, seconds: float) -> None:
        self._store.labels(operation).observe(seconds)

    def dns_latency(self, seconds: float) -> None:
        self._dns.observe(seconds)

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
