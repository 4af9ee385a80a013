"""Alerts about held mail, to the admin and to the recipient's alternate contact.

When a bounce is held (the message's sender was not verified, so it must not
receive it), someone has to act: the downstream's admin must fix it, then
the forwarder's admin requeues. The alert says what is held, for which
target, why, and how to release it. It goes through the MTA like any mail,
from the null sender (RFC 3834 section 3.3: an automatic notice must not
cause notices in return), with From: ``held.alert_from`` or
postmaster@<srs.domain>.

Sending happens on a background thread, so a slow MTA never delays a milter
callback. An alert that cannot be sent stays marked unsent in the store;
``fwdctl held expire`` (daily) sends it again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formatdate, make_msgid

from fwdmilter.config import Config
from fwdmilter.errors import FwdmilterError
from fwdmilter.store.base import HeldEntry, Store
from fwdmilter.submit import submit

__all__ = ["build_alert", "alert_recipients", "AlertSender", "send_alert"]

log = logging.getLogger(__name__)


def _when(t: float) -> str:
    return format_datetime(datetime.fromtimestamp(t, UTC))


def build_alert(cfg: Config, entry: HeldEntry, recipients: Sequence[str]) -> EmailMessage:
    """The alert message for one held entry."""
    author = cfg.held.alert_from or f"postmaster@{cfg.srs.domain}"
    expires = entry.held_at + cfg.held.retention_days * 86400
    msg = EmailMessage()
    msg["From"] = f"fwdmilter on {cfg.milter.hostname} <{author}>"
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = f"Mail for {entry.target} is held: its delivery failed"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=cfg.srs.domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 section 5
    msg["X-Fwdmilter-Held"] = f"{entry.target} {entry.entry_id}"
    msg.set_content(
        f"""\
The mail forwarder {cfg.milter.hostname} forwarded a message to {entry.target}
(for {entry.rcpt or "a forwarding address"}), and that delivery failed:

    {entry.reason}

The message's sender, {entry.sender or "<>"}, could not be verified, so the
failure was not reported to them (it could be a forged address: a bounce would
be backscatter). The bounce is held on {entry.host}, queue id {entry.queue_id},
since {_when(entry.held_at)}. Until it is dealt with, new mail from unverified
senders for {entry.target} is deferred (4xx), not lost.

What to do:
  1. The admin of {entry.target.partition("@")[2] or entry.target} fixes the
     delivery problem above.
  2. The admin of {cfg.milter.hostname} then sends the held mail again:

       fwdctl held requeue --target {entry.target}

Held mail that nobody releases is discarded after {cfg.held.retention_days} days,
on {_when(expires)}.
"""
    )
    return msg


def alert_recipients(cfg: Config, contact: str) -> list[str]:
    """The admin addresses, and the alternate contact if there is one."""
    out = list(cfg.held.alert_to)
    if contact and contact.lower() not in (a.lower() for a in out):
        out.append(contact)
    return out


def send_alert(cfg: Config, store: Store, entry: HeldEntry) -> bool:
    """Send the alert for ``entry`` now; True if it went out (or had nobody
    to go to). Marks the entry alerted in the store."""
    contact = entry.contact
    if not contact and entry.rcpt:
        fwd = store.get_forward(entry.rcpt)
        contact = fwd.contact if fwd else ""
    recipients = alert_recipients(cfg, contact)
    if recipients:
        message = build_alert(cfg, entry, recipients)
        sender = cfg.held.alert_from  # "" is the null sender
        submit(
            cfg.mta.submit,
            sender,
            recipients,
            message.as_bytes(),
            timeout=cfg.mta.submit_timeout,
            helo=cfg.milter.hostname,
        )
        log.info(
            "queue_id=%s alert=sent target=%s to=%s",
            entry.queue_id,
            entry.target,
            ",".join(recipients),
        )
    else:
        log.warning(
            "queue_id=%s alert=none target=%s reason=no recipients", entry.queue_id, entry.target
        )
    store.mark_alerted(entry.target, entry.entry_id)
    return True


class AlertSender:
    """Sends alerts on a background thread, a few attempts each."""

    def __init__(
        self,
        cfg_of: Callable[[], Config],
        store_of: Callable[[], Store],
        *,
        attempts: int = 3,
        backoff: float = 5.0,
    ) -> None:
        self._cfg_of = cfg_of
        self._store_of = store_of
        self._attempts = attempts
        self._backoff = backoff
        self._queue: queue.Queue[HeldEntry | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fwdmilter-alerts", daemon=True)
        self._thread.start()

    def enqueue(self, entry: HeldEntry) -> None:
        self._queue.put(entry)

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued (within ``timeout``) and stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            for attempt in range(1, self._attempts + 1):
                try:
                    send_alert(self._cfg_of(), self._store_of(), entry)
                    break
                except FwdmilterError as exc:
                    log.warning(
                        "queue_id=%s alert=failed target=%s attempt=%d error=%s",
                        entry.queue_id,
                        entry.target,
                        attempt,
                        exc,
                    )
                    time.sleep(self._backoff * attempt)
                except Exception:  # a bug must not kill the alert thread
                    log.exception("queue_id=%s alert=error target=%s", entry.queue_id, entry.target)
                    break
