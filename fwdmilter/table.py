"""The forwarding table's rules, shared by every writer of it.

fwdctl (``forward set``, ``add-target``, ``import``...) and the web service
(fwdweb) change the table; the rules of what may be stored live here once,
so that no writer lets through what another refuses:

- a target is a mail address (bare, no white space), stored in the one
  normal form of :func:`fwdmilter.addr.key`; duplicates (in that form)
  collapse, first one kept;
- a target in ``forwarding.domains`` is refused: the milter replaces a
  recipient by its targets once, at end of message, so mail for a target
  that is itself a forwarding address would reach no table lookup;
- at most ``forwarding.max_targets`` targets per address;
- a trusted forwarder is a network (CIDR, stored in canonical form) or a
  domain (stored as a lower-case A-label);
- a recipient's SPF action is one of ``states.SPF_ACTIONS`` for one of
  ``states.SPF_RESULTS``, or ``inherit`` (drop it: the global one applies);
  a recipient's rewrite is one of ``states.SENDER_REWRITES`` or
  ``inherit`` (stored as ""). :func:`spf_actions` and :func:`rewrite`
  apply such changes to a record's values.

:func:`effective_policy` says what the milter applies to one recipient
and where each value comes from (``recipient``, ``global``: set in the
configuration file, or ``default``).

Pure: no store, no I/O (the keys the configuration file sets, for the
sources, are those config.load read). Every refusal is a
:class:`TableError` (a ``ValueError``) whose text says why, for the admin
or the recipient.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final, cast

import idna

from fwdmilter import addr
from fwdmilter.config import Config, SPFSettings
from fwdmilter.states import SENDER_REWRITES, SPF_ACTIONS, SPF_RESULTS, Forward, SenderRewrite

__all__ = [
    "TableError",
    "check_address",
    "check_targets",
    "check_count",
    "forwarder",
    "spf_actions",
    "rewrite",
    "INHERIT",
    "configured_keys",
    "effective_policy",
    "RECIPIENT",
    "GLOBAL",
    "DEFAULT",
]

RECIPIENT: Final = "recipient"
GLOBAL: Final = "global"
DEFAULT: Final = "default"
#: The value that drops a recipient's own SPF action or rewrite.
INHERIT: Final = "inherit"


class TableError(ValueError):
    """A value the forwarding table cannot take; the text says why."""


def check_address(value: str, what: str) -> str:
    """``value`` bare (no angle brackets), or TableError if it is no address."""
    bare = addr.strip_brackets(value)
    if addr.split(bare) is None or any(c.isspace() for c in bare) or addr.problem(bare):
        raise TableError(f"{what} {value!r} is not a mail address")
    return bare


def check_target(cfg: Config, rcpt: str, value: str) -> str:
    """One target in normal form, or TableError."""
    target = addr.key(check_address(value, "target"))
    domains = {d.lower().rstrip(".") for d in cfg.forwarding.domains}
    if addr.domain_of(target) in domains or target == addr.key(rcpt):
        raise TableError(
            f"target {target} is itself in forwarding.domains: forward to the final address instead"
        )
    return target


def check_count(cfg: Config, rcpt: str, count: int) -> None:
    """TableError if ``count`` targets are more than ``forwarding.max_targets``."""
    limit = cfg.forwarding.max_targets
    if count > limit:
        raise TableError(
            f"{rcpt}: {count} targets, more than forwarding.max_targets ({limit}) allows"
        )


def check_targets(cfg: Config, rcpt: str, values: Iterable[str]) -> tuple[str, ...]:
    """The targets in normal form, duplicates collapsed, checked and counted."""
    out: list[str] = []
    for value in values:
        target = check_target(cfg, rcpt, value)
        if target not in out:
            out.append(target)
    if not out:
        raise TableError(f"{rcpt}: no target given")
    check_count(cfg, rcpt, len(out))
    return tuple(out)


def forwarder(value: str) -> str:
    """A trusted forwarder in its stored form: a network in canonical CIDR
    form (``192.0.2.7/24`` -> ``192.0.2.0/24``, an address -> ``/32`` or
    ``/128``), or a domain as a lower-case A-label (IDNA, UTS 46)."""
    text = value.strip()
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        pass
    name = text.rstrip(".")
    if "/" in name or ":" in name:
        raise TableError(f"forwarder {value!r} is neither a network (CIDR) nor a domain")
    try:
        a_label = idna.encode(name, uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise TableError(f"forwarder {value!r} is neither a network (CIDR) nor a domain") from None
    if "." not in a_label or len(a_label) > 253 or a_label.rsplit(".", 1)[1].isdigit():
        raise TableError(f"forwarder {value!r}: a domain needs a dot and a name after it")
    return a_label.lower()


def spf_actions(
    current: Iterable[tuple[str, str]], changes: Mapping[str, object]
) -> tuple[tuple[str, str], ...]:
    """``current`` (SPF result, action) pairs with ``changes`` applied, in
    the order of ``SPF_RESULTS``: ``{"softfail": "reject", "fail": "inherit"}``
    sets one and drops the other."""
    actions = dict(current)
    for result, action in changes.items():
        if result not in SPF_RESULTS:
            raise TableError(
                f"SPF result {result!r}: a recipient's action is for one of "
                + ", ".join(SPF_RESULTS)
                + " (pass is always accepted)"
            )
        if action == INHERIT:
            actions.pop(result, None)
        elif isinstance(action, str) and action in SPF_ACTIONS:
            actions[result] = action
        else:
            raise TableError(
                f"SPF {result}: action {action!r} is not one of "
                + ", ".join(sorted(SPF_ACTIONS))
                + f", {INHERIT}"
            )
    return tuple((r, actions[r]) for r in SPF_RESULTS if r in actions)


def rewrite(value: object) -> SenderRewrite:
    """A recipient's sender rewrite as stored ("" for ``inherit``)."""
    if value == INHERIT:
        return ""
    if not isinstance(value, str) or not value or value not in SENDER_REWRITES:
        names = ", ".join(v for v in ("srs", "when-needed", "none") if v in SENDER_REWRITES)
        raise TableError(f"rewrite {value!r} is not one of {names}, {INHERIT}")
    return cast(SenderRewrite, value)


def configured_keys(cfg: Config) -> frozenset[str]:
    """The ``section.key`` names the configuration file sets (the ``global``
    sources of :func:`effective_policy`), as config.load read them; none for
    a configuration that came from no file."""
    return cfg.file_keys if cfg.path else frozenset()


def _global_source(configured: Collection[str], key: str) -> str:
    return GLOBAL if key in configured else DEFAULT


def effective_policy(cfg: Config, fwd: Forward, configured: Collection[str]) -> dict[str, Any]:
    """What the milter applies to ``fwd.rcpt``: each value with its source.

    ``configured`` holds the keys the configuration file sets
    (``"spf.fail"``...): a global value is ``global`` if set there,
    ``default`` if not. Rewrite values are in the recipient's vocabulary:
    the global ``srs.rewrite = "always"`` shows as ``srs``.
    """
    defaults = SPFSettings()
    spf: dict[str, dict[str, str]] = {}
    for result in SPF_RESULTS:
        own = fwd.spf_action(result)
        if own:
            spf[result] = {"value": own, "source": RECIPIENT}
        else:
            key = f"spf.{result}"
            value = cfg.spf.action(result)
            spf[result] = {"value": value, "source": _global_source(configured, key)}
            if key not in configured and value != defaults.action(result):
                spf[result]["source"] = GLOBAL  # set some other way than the file
    if fwd.rewrite:
        rewrite = {"value": fwd.rewrite, "source": RECIPIENT}
    else:
        value = "srs" if cfg.srs.rewrite == "always" else cfg.srs.rewrite
        rewrite = {"value": value, "source": _global_source(configured, "srs.rewrite")}
    if rewrite["value"] == "when-needed" and not cfg.srs.outbound_ips:
        rewrite["note"] = "acts as srs: srs.outbound_ips is empty"
    null_sender = {
        "value": fwd.null_sender,
        "source": RECIPIENT if fwd.null_sender != "forward" else DEFAULT,
    }
    return {
        "spf": spf,
        "rewrite": rewrite,
        "null_sender": null_sender,
        "trusted": {"value": list(fwd.trusted), "source": RECIPIENT if fwd.trusted else DEFAULT},
        "trusted_networks": {
            "value": list(cfg.trusted.networks),
            "source": _global_source(configured, "trusted.networks"),
        },
    }
