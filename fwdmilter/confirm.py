"""Confirmed targets and the mails of the recipient's web service.

A new forwarding target is *pending* until the person who reads it follows
the link mailed to it and presses Confirm (docs/web.md). This module holds
what fwdctl (``forward set --confirm``) and the web service (fwdweb) share:

- secrets: 256 random bits (``secrets.token_urlsafe(32)``), handed to the
  user once; the store keeps only their SHA-256 (:func:`digest`), so a copy
  of the store lets nobody sign in or confirm;
- :func:`request_target`: the forward's ``pending`` target, a confirmation
  token and the mail carrying its link, which opens a page; only that page's
  POST acts (mail scanners open links with GET);
- :func:`answer`: Confirm or Decline, using the token once;
- :func:`request_of`: who asked, and whether the target replaces the
  others or joins them;
- :func:`send_mail`: every mail goes to the MTA at ``mta.submit``.

Several targets, one pending
----------------------------
A forward has several targets but at most one pending (the store keeps one):
a request is for ONE new target, in one of two modes, kept in the
confirmation token's ``data`` (``"BY"`` or ``"BY add"``):

- ``replace`` (``fwdctl forward set RCPT NEW`` when none of the current
  targets stays, the web's "New target"): mail keeps going to the current
  targets until NEW confirms, then NEW is the only target;
- ``add`` (``fwdctl forward add-target``, ``set`` keeping some current
  targets, the web's "Add a target"): NEW is appended to the targets the
  forward has when it confirms (what the admin removed meanwhile stays
  removed), unless that would pass ``forwarding.max_targets``.

A request for a new target withdraws the one pending before (its link stops
working). Tokens of the one-target version carry ``data = BY`` alone, which
reads as ``replace``: their meaning is unchanged.

Nothing here reads the SRS secrets.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import logging
import secrets
import time
from email.message import EmailMessage
from typing import Literal

from fwdmilter import config
from fwdmilter.errors import FwdmilterError
from fwdmilter.store.base import Forward, Store, WebToken
from fwdmilter.submit import submit

__all__ = [
    "ConfirmError",
    "Outcome",
    "Mode",
    "answer",
    "digest",
    "mail_from",
    "new_secret",
    "request_of",
    "request_target",
    "send_mail",
]

log = logging.getLogger("fwdweb.audit")

Outcome = Literal["confirmed", "declined", "invalid", "stale", "too-many"]
#: What confirming does with the pending target (module docstring).
Mode = Literal["replace", "add"]


class ConfirmError(FwdmilterError):
    """A confirmation cannot be asked for (no ``web.base_url``)."""


def new_secret() -> str:
    """A fresh token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What the store keeps of a token: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def mail_from(cfg: config.Config) -> str:
    return cfg.web.mail_from or f"postmaster@{cfg.srs.domain}"


def send_mail(cfg: config.Config, to: str, subject: str, body: str) -> None:
    """A plain-text notice to ``to`` through ``mta.submit`` (MTAError if refused).

    Auto-Submitted (RFC 3834) so that vacation responders stay quiet; the
    envelope sender is ``mail_from`` so that a bounce reaches the postmaster.
    """
    sender = mail_from(cfg)
    msg = EmailMessage()
    msg["From"] = f"Mail forwarding at {cfg.srs.domain} <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain=cfg.srs.domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body)
    submit(
        cfg.mta.submit,
        sender,
        [to],
        msg.as_bytes(),
        timeout=cfg.mta.submit_timeout,
        helo=cfg.milter.hostname,
    )


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def request_target(
    store: Store,
    cfg: config.Config,
    rcpt: str,
    target: str,
    *,
    requested_by: str,
    now: float,
    base: Forward | None = None,
    mode: Mode = "replace",
) -> Forward:
    """Make ``target`` the pending target of ``rcpt`` and mail it the link.

    ``base`` is the forward to change (None: the stored one, or a new entry
    with no target yet). Mail keeps going to the current target until the
    new one is confirmed. An older confirmation link of ``rcpt`` stops
    working. ``requested_by`` says who asked ("admin", "web") for the page
    and the log; ``mode`` what confirming does (module docstring). Returns
    the stored forward.
    """
    if not cfg.web.base_url:
        raise ConfirmError("web.base_url: must be set to mail confirmation links")
    old = base if base is not None else store.get_forward(rcpt)
    expires = now + cfg.web.confirm_hours * 3600
    fresh = old is None or bool(old.moved_to)
    fwd = Forward(rcpt, (), created=now, updated=now) if fresh or old is None else old
    fwd = dataclasses.replace(fwd, pending=target, pending_expires=expires, updated=now)
    store.delete_tokens("confirm", rcpt)
    secret = new_secret()
    store.put_token(
        WebToken(
            "confirm",
            digest(secret),
            rcpt,
            name=target,
            data=requested_by if mode == "replace" else f"{requested_by} {mode}",
            created=now,
            expires=expires,
        )
    )
    store.put_forward(fwd)
    link = f"{cfg.web.base_url.rstrip('/')}/confirm/{secret}"
    others = "" if mode == "replace" or not fwd.targets else " too"
    body = (
        f"Someone asked the mail forwarder at {cfg.srs.domain} to forward the mail\n"
        f"for {rcpt} to this address{others}, {target}.\n\n"
        f"To confirm or decline, open this page and press one of its buttons:\n\n"
        f"    {link}\n\n"
        f"Nothing is forwarded to you until you confirm. The link works once and\n"
        f"until {_when(expires)}. If you did not ask for this, decline or ignore it.\n"
    )
    send_mail(cfg, target, f"Confirm forwarding of {rcpt} to you", body)
    log.info(
        "event=confirm-requested rcpt=%s pending=%s by=%s mode=%s expires=%d",
        rcpt,
        target,
        requested_by,
        mode,
        expires,
    )
    return fwd


def request_of(token: WebToken) -> tuple[str, Mode]:
    """Who asked for a confirmation ("admin", "recipient"...) and its mode."""
    by, _, mode = token.data.partition(" ")
    return by, "add" if mode == "add" else "replace"


def answer(
    store: Store, secret: str, accept: bool, now: float, *, max_targets: int = 0
) -> tuple[Outcome, Forward | None]:
    """Confirm (``accept``) or decline the request behind ``secret``.

    The token is used up either way. "invalid": no such unexpired token
    (used, expired, never issued); "stale": the forward no longer waits for
    that target (changed or deleted since); "too-many": adding it would give
    the forward more than ``max_targets`` (0: no limit) targets (the admin
    added some meanwhile): the link is used up, so the pending target is
    withdrawn (the targets stay) and the forward returned.
    """
    token = store.take_token("confirm", digest(secret), now)
    if token is None:
        log.info("event=confirm-failed reason=invalid-token")
        return "invalid", None
    fwd = store.get_forward(token.rcpt)
    if fwd is None or fwd.pending_at(now) != token.name:
        log.info("event=confirm-failed reason=stale rcpt=%s target=%s", token.rcpt, token.name)
        return "stale", fwd
    _, mode = request_of(token)
    if accept:
        if mode == "replace":
            targets: tuple[str, ...] = (token.name,)
        elif token.name in fwd.targets:
            targets = fwd.targets
        else:
            targets = (*fwd.targets, token.name)
        if max_targets and len(targets) > max_targets:
            log.info(
                "event=confirm-failed reason=too-many-targets rcpt=%s target=%s",
                token.rcpt,
                token.name,
            )
            fwd = dataclasses.replace(fwd, pending="", pending_expires=0.0, updated=now)
            store.put_forward(fwd)
            return "too-many", fwd
        fwd = dataclasses.replace(
            fwd, targets=targets, pending="", pending_expires=0.0, updated=now
        )
    else:
        fwd = dataclasses.replace(fwd, pending="", pending_expires=0.0, updated=now)
    store.put_forward(fwd)
    outcome: Outcome = "confirmed" if accept else "declined"
    log.info("event=%s rcpt=%s target=%s", outcome, token.rcpt, token.name)
    return outcome, fwd
