"""Alerts about held mail, to the admin and to the recipient's alternate contact.

When a bounce is held (the message's sender was not verified, so it must not
receive it), someone has to act: the downstream's admin must fix it, then
the forwarder's admin requeues. The alert says what is held, for which
target, why, and how to release it. It goes through the MTA like any mail,
from the null sender (RFC 3834 section 3.3: an automatic notice must not
cause notices in return), with From: ``held.alert_from`` or
postmaster@<srs.domain>.

Sending happens on a background thread, so a slow MTA never delays a milter
callback. Entries of one target held within :data:`COALESCE_SECONDS` of each
other get one alert (a downstream that fails refuses many messages at once).

Each recipient has its own outcome: one the MTA refuses (a bad contact, 5xx)
is logged and skipped, the others still get the alert; the store notes who
is dealt with (``HeldEntry.alerted_to``: told, or refused for good). An
alert that could not reach someone for a temporary reason stays unfinished;
``fwdctl held expire`` (daily) sends it again, to those recipients only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formatdate, make_msgid

from fwdmilter.addr import key
from fwdmilter.config import Config
from fwdmilter.errors import FwdmilterError
from fwdmilter.logfmt import pairs
from fwdmilter.store.base import HeldEntry, Store
from fwdmilter.submit import submit_each

__all__ = [
    "COALESCE_SECONDS",
    "AlertResult",
    "build_alert",
    "alert_recipients",
    "pending_recipients",
    "AlertSender",
    "send_alert",
    "send_alerts",
    "resend_alerts",
]

#: Entries of one target held this close together share one alert.
COALESCE_SECONDS = 2.0

log = logging.getLogger(__name__)


def _when(t: float) -> str:
    return format_datetime(datetime.fromtimestamp(t, UTC))


def build_alert(
    cfg: Config, entry: HeldEntry | Sequence[HeldEntry], recipients: Sequence[str]
) -> EmailMessage:
    """The alert message for the held entries of one target."""
    entries = [entry] if isinstance(entry, HeldEntry) else list(entry)
    first = entries[0]
    target = first.target
    author = cfg.held.alert_from or f"postmaster@{cfg.srs.domain}"
    expires = min(e.held_at for e in entries) + cfg.held.retention_days * 86400
    msg = EmailMessage()
    msg["From"] = f"fwdmilter on {cfg.milter.hostname} <{author}>"
    msg["To"] = ", ".join(recipients)
    if len(entries) > 1:
        msg["Subject"] = f"{len(entries)} messages for {target} are held: their delivery failed"
    else:
        msg["Subject"] = f"Mail for {target} is held: its delivery failed"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=cfg.srs.domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 section 5
    msg["X-Fwdmilter-Held"] = " ".join([target, *(e.entry_id for e in entries)])
    listing = "\n\n".join(
        f"  From {e.sender or '<>'}, for {e.rcpt or 'a forwarding address'}, held as\n"
        f"  {e.entry_id} since {_when(e.held_at)}:\n"
        f"      {e.reason}"
        for e in entries
    )
    senders = "Their senders" if len(entries) > 1 else "Its sender"
    # U mail waits for the whole forwarding address, every target of it
    # (docs/states.md: the milter can hold a message only whole).
    addresses = ", ".join(dict.fromkeys(e.rcpt for e in entries if e.rcpt)) or target
    msg.set_content(
        f"""\
The mail forwarder {cfg.milter.hostname} forwarded mail to {target},
and the delivery failed:

{listing}

{senders} could not be verified, so the failure was not reported back (it
could be a forged address: a bounce would be backscatter). Until it is dealt
with, new mail from unverified senders for {addresses} is deferred (4xx),
not lost: while one target of a forwarding address refuses mail, mail for
all its targets waits.

What to do:
  1. The admin of {target.partition("@")[2] or target} fixes the delivery problem above.
  2. The admin of {cfg.milter.hostname} then sends the held mail again:

       fwdctl held requeue --target {target}

Held mail that nobody releases is discarded after {cfg.held.retention_days} days,
from {_when(expires)}.
"""
    )
    return msg


def alert_recipients(cfg: Config, contact: str) -> list[str]:
    """The admin addresses, and the alternate contact if there is one."""
    out = list(cfg.held.alert_to)
    if contact and contact.lower() not in (a.lower() for a in out):
        out.append(contact)
    return out


def _contact(store: Store, entry: HeldEntry) -> str:
    if entry.contact or not entry.rcpt:
        return entry.contact
    fwd = store.get_forward(entry.rcpt)
    return fwd.contact if fwd else ""


def pending_recipients(cfg: Config, contact: str, entry: HeldEntry) -> list[str]:
    """Who still has to hear of ``entry``: everyone not in ``alerted_to``."""
    told = {key(a) for a in entry.alerted_to}
    return [r for r in alert_recipients(cfg, contact) if key(r) not in told]


@dataclass(frozen=True, slots=True)
class AlertResult:
    """One alert: who was told, who refused it for good, who failed for now."""

    target: str
    told: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed


def _log_alert(result: AlertResult, entries: Sequence[HeldEntry]) -> None:
    ids = ",".join(e.queue_id for e in entries)
    if result.told:
        log.info(
            "queue_id=%s %s",
            ids,
            pairs([("alert", "sent"), ("target", result.target), ("to", ",".join(result.told))]),
        )
    for rcpt, reply in result.refused.items():
        log.warning(
            "queue_id=%s %s",
            ids,
            pairs(
                [("alert", "refused"), ("target", result.target), ("to", rcpt), ("reply", reply)]
            ),
        )
    for rcpt, reply in result.failed.items():
        log.warning(
            "queue_id=%s %s",
            ids,
            pairs([("alert", "failed"), ("target", result.target), ("to", rcpt), ("error", reply)]),
        )


def send_alert(cfg: Config, store: Store, entry: HeldEntry | Sequence[HeldEntry]) -> AlertResult:
    """Send one alert for held entries of one target now, to whoever has
    not been told yet, and note in the store who was. A refused recipient
    is skipped (the others get it); MTAError only if the MTA could not be
    reached (nobody was told; the caller tries again)."""
    entries = [entry] if isinstance(entry, HeldEntry) else list(entry)
    target = entries[0].target
    contact = next((c for c in (_contact(store, e) for e in entries) if c), "")
    pending = {(e.target, e.entry_id): pending_recipients(cfg, contact, e) for e in entries}
    recipients = list(dict.fromkeys(r for rs in pending.values() for r in rs))
    if not recipients:
        if not any(e.alerted_to for e in entries):
            log.warning(
                "queue_id=%s alert=none target=%s reason=no recipients", entries[0].queue_id, target
            )
        for e in entries:
            store.mark_alerted(e.target, e.entry_id)
        return AlertResult(target)
    message = build_alert(cfg, entries, recipients)
    try:
        done = submit_each(
            cfg.mta.submit,
            cfg.held.alert_from,  # "" is the null sender
            recipients,
            message.as_bytes(),
            timeout=cfg.mta.submit_timeout,
            helo=cfg.milter.hostname,
        )
    except FwdmilterError as exc:
        _log_alert(AlertResult(target, failed={r: str(exc) for r in recipients}), entries)
        raise
    refused = {r: t for r, t in done.refused.items() if r in done.permanent}
    failed = {r: t for r, t in done.refused.items() if r not in done.permanent}
    result = AlertResult(target, done.accepted, refused, failed)
    _log_alert(result, entries)
    for e in entries:
        mine = pending[(e.target, e.entry_id)]
        # Refused for good is dealt with too: a bad contact is not tried
        # daily for ever (its log line says so); a temporary failure is.
        told = [r for r in mine if r in done.accepted or r in refused]
        store.mark_alerted(e.target, e.entry_id, told, complete=not any(r in failed for r in mine))
    return result


def send_alerts(cfg: Config, store: Store, entries: Iterable[HeldEntry]) -> list[AlertResult]:
    """One alert per target for ``entries``."""
    by_target: dict[str, list[HeldEntry]] = {}
    for e in entries:
        by_target.setdefault(e.target, []).append(e)
    return [send_alert(cfg, store, group) for group in by_target.values()]


def resend_alerts(
    cfg: Config, store: Store, instance: str | None = None
) -> list[tuple[HeldEntry, bool, str]]:
    """Send the alerts that did not reach everyone when mail was held:
    one per target, to the recipients not yet told. (entry, done, text)."""
    me = instance or cfg.milter.instance
    due = [e for e in store.held() if e.state == "H" and not e.alerted and e.host in (me, "")]
    by_target: dict[str, list[HeldEntry]] = {}
    for e in due:
        by_target.setdefault(e.target, []).append(e)
    out: list[tuple[HeldEntry, bool, str]] = []
    for group in by_target.values():
        try:
            result = send_alert(cfg, store, group)
        except FwdmilterError as exc:
            out += [(e, False, f"alert failed: {exc}") for e in group]
            continue
        text = "alert sent" + (f" to {', '.join(result.told)}" if result.told else "")
        if result.refused:
            text += "; refused by " + ", ".join(result.refused)
        if result.failed:
            text += "; failed for " + ", ".join(result.failed) + " (tried again daily)"
        out += [(e, result.complete, text) for e in group]
    return out


class AlertSender:
    """Sends alerts on a background thread, a few attempts each; entries of
    one target that arrive within ``coalesce`` seconds share one alert."""

    def __init__(
        self,
        cfg_of: Callable[[], Config],
        store_of: Callable[[], Store],
        *,
        attempts: int = 3,
        backoff: float = 5.0,
        coalesce: float = COALESCE_SECONDS,
    ) -> None:
        self._cfg_of = cfg_of
        self._store_of = store_of
        self._attempts = attempts
        self._backoff = backoff
        self._coalesce = coalesce
        self._queue: queue.Queue[HeldEntry | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fwdmilter-alerts", daemon=True)
        self._thread.start()

    def enqueue(self, entry: HeldEntry) -> None:
        self._queue.put(entry)

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued (within ``timeout``) and stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _gather(self, first: HeldEntry) -> tuple[list[HeldEntry], bool]:
        """``first`` and what else arrives within the coalescing window;
        True if the queue said stop meanwhile."""
        batch = [first]
        deadline = time.monotonic() + self._coalesce
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            by_target: dict[str, list[HeldEntry]] = {}
            for e in batch:
                by_target.setdefault(e.target, []).append(e)
            for group in by_target.values():
                self._send(group)
            if stop:
                return

    def _send(self, group: list[HeldEntry]) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                send_alert(self._cfg_of(), self._store_of(), group)
                return
            except FwdmilterError as exc:
                log.warning(
                    "queue_id=%s alert=failed target=%s attempt=%d error=%s",
                    group[0].queue_id,
                    group[0].target,
                    attempt,
                    exc,
                )
                time.sleep(self._backoff * attempt)
            except Exception:  # a bug must not kill the alert thread
                log.exception(
                    "queue_id=%s alert=error target=%s", group[0].queue_id, group[0].target
                )
                return
