"""The milter's I/O objects, built once from the configuration.

A :class:`Runtime` holds everything a connection needs: the configuration,
the policy's settings (with the SRS rewriter), the store, the SPF checker
and the metrics. The daemon builds one at start-up and a new one on SIGHUP;
each connection keeps the runtime it started with, so a reload never
changes the rules in the middle of a transaction.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fwdmilter import config, metrics, policy
from fwdmilter.secrets import load_secrets
from fwdmilter.spf import SPFChecker
from fwdmilter.store import open_store
from fwdmilter.store.base import Store
from srs import SRS

__all__ = ["Runtime", "build", "make_srs", "policy_settings"]


def make_srs(cfg: config.Config) -> SRS:
    """The SRS rewriter the configuration describes (reads the secrets file)."""
    s = cfg.srs
    return SRS(
        secrets=load_secrets(s.secrets_file),
        domain=s.domain,
        hash_length=s.hash_length,
        hash_min_length=s.hash_min_length,
        max_age_days=s.max_age_days,
        separator=s.separator,
        hash_alphabet="base64url" if s.hash_alphabet == "base64url" else "base64",
    )


@dataclass(frozen=True, slots=True)
class Runtime:
    cfg: config.Config
    settings: policy.Settings
    store: Store
    spf: SPFChecker
    metrics: metrics.Metrics


def policy_settings(cfg: config.Config) -> policy.Settings:
    """The policy's view of the configuration (reads the secrets file)."""
    return policy.Settings(
        srs=make_srs(cfg),
        hostname=cfg.milter.hostname,
        forwarding_domains=frozenset(d.lower().rstrip(".") for d in cfg.forwarding.domains),
        spf_actions={
            "fail": cfg.spf.fail,
            "softfail": cfg.spf.softfail,
            "neutral": cfg.spf.neutral,
            "none": cfg.spf.none,
            "permerror": cfg.spf.permerror,
            "temperror": cfg.spf.temperror,
        },
        trusted=tuple(ipaddress.ip_network(n, strict=False) for n in cfg.trusted.networks),
        loop_limit=cfg.milter.loop_limit,
        rewrite="when-needed" if cfg.srs.rewrite == "when-needed" else "always",
        max_age_days=cfg.srs.max_age_days,
        instance=cfg.milter.instance,
        max_entries_per_bounce=cfg.held.max_entries_per_bounce,
    )


def build(
    cfg: config.Config,
    *,
    store: Store | None = None,
    metrics_: metrics.Metrics | None = None,
) -> Runtime:
    """A runtime for ``cfg``; reuses ``store`` and ``metrics_`` if given (a
    reload that keeps the store URL keeps its connections)."""
    settings = policy_settings(cfg)
    if store is None:
        store = open_store(cfg.store, instance=cfg.milter.instance)
    return Runtime(
        cfg=cfg,
        settings=settings,
        store=store,
        spf=SPFChecker(cfg.dns),
        metrics=metrics_ if metrics_ is not None else metrics.create(cfg.metrics, store.stats),
    )
