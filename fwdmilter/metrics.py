"""What the milter counts, for the optional Prometheus endpoint.

The milter calls a :class:`Metrics` object at each decision; the default
one does nothing. :func:`create` returns the Prometheus implementation when
``[metrics] listen`` is set (prometheus_client is then required: the
``metrics`` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from fwdmilter.config import MetricsSettings
from fwdmilter.errors import ConfigError
from fwdmilter.store.base import Stats

__all__ = ["Metrics", "NullMetrics", "create"]

log = logging.getLogger(__name__)


class Metrics(Protocol):
    def decision(self, stage: str, action: str) -> None:
        """A transaction decision: stage mail/rcpt/eom, action accept/reject/..."""

    def spf_result(self, result: str) -> None: ...

    def srs(self, event: str) -> None:
        """forward, reverse, refused"""

    def held(self, event: str) -> None:
        """held (a bounce held, or held again), released (a requeued
        message delivered). Requeue and expiry happen in fwdctl, which serves
        no metrics: the held-entry gauges show their effect."""

    def store_latency(self, operation: str, seconds: float) -> None: ...

    def dns_latency(self, seconds: float) -> None: ...

    def close(self) -> None: ...


class NullMetrics:
    """Counts nothing."""

    def decision(self, stage: str, action: str) -> None:
        pass

    def spf_result(self, result: str) -> None:
        pass

    def srs(self, event: str) -> None:
        pass

    def held(self, event: str) -> None:
        pass

    def store_latency(self, operation: str, seconds: float) -> None:
        pass

    def dns_latency(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass


def create(settings: MetricsSettings, stats: Callable[[], Stats] | None = None) -> Metrics:
    """The metrics the settings ask for; ``stats`` feeds the held-entry gauges."""
    if not settings.listen:
        return NullMetrics()
    try:
        from fwdmilter.prometheus import PrometheusMetrics  # noqa: PLC0415 - optional extra
    except ImportError as exc:
        raise ConfigError(
            f"metrics.listen: needs prometheus_client (pip install 'fwdmilter[metrics]'): {exc}"
        ) from None
    made: Metrics = PrometheusMetrics(settings.listen, stats)
    return made
