"""Submitting mail to the MTA over SMTP: alerts and requeued messages.

fwdctl and the milter's alert thread hand mail to the MTA at ``mta.submit``
(normally the local MTA's port 25), as any client would; the MTA queues and
delivers it. Every refusal raises :class:`~fwdmilter.errors.MTAError` with
the MTA's reply, and nothing is retried here: callers decide.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from fwdmilter.errors import MTAError

__all__ = ["Submitted", "submit", "submit_each", "queue_id_of"]

_BARE_LF: Final = re.compile(rb"(?<!\r)\n")
# The queue id in the MTA's reply to DATA (RFC 5321 leaves the text free):
# Postfix says "2.0.0 Ok: queued as 4XyZ1", Sendmail "2.0.0 0B1MxAbc012345
# Message accepted for delivery".
_POSTFIX_QUEUED: Final = re.compile(r"\bqueued as ([0-9A-Za-z]+)\b")
_SENDMAIL_ACCEPTED: Final = re.compile(
    r"\A(?:\d\.\d{1,3}\.\d{1,3}\s+)?([0-9A-Za-z]{8,40}) Message accepted\b"
)


def queue_id_of(reply: str) -> str:
    """The queue id in the text of the MTA's 250 reply to DATA, or "" when
    the MTA does not say it in a form known here."""
    for pattern in (_POSTFIX_QUEUED, _SENDMAIL_ACCEPTED):
        if m := pattern.search(reply.strip()):
            return m.group(1)
    return ""


def _crlf(message: bytes) -> bytes:
    """Lines end in CRLF on the wire (RFC 5321 section 2.3.8). Held messages
    come from the MTA's queue with LF line ends, and smtplib sends bytes as
    they are: Postfix takes a bare LF, Sendmail 8.17 drops the connection
    ("421 4.5.0 Bare linefeed (LF) not allowed")."""
    return _BARE_LF.sub(b"\r\n", message)


def _host_port(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class Submitted:
    """What the MTA did with one submission, recipient by recipient.

    ``refused`` maps each recipient the MTA refused to its reply;
    ``permanent`` says which of those refusals were 5xx (a bad address:
    trying again cannot help). ``queue_id`` is "" when nothing was queued.
    """

    queue_id: str = ""
    accepted: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)
    permanent: frozenset[str] = frozenset()


def submit(
    hostport: str,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    timeout: float = 30.0,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    helo: str | None = None,
) -> str:
    """Send ``message`` from ``sender`` ("" for the null sender) to
    ``recipients`` through the MTA at ``hostport``; MTAError unless every
    recipient was accepted and the message queued. Returns the queue id the
    MTA gave the message ("" if its reply does not say)."""
    done = submit_each(
        hostport,
        sender,
        recipients,
        message,
        timeout=timeout,
        mail_options=mail_options,
        rcpt_options=rcpt_options,
        helo=helo,
        all_or_nothing=True,
    )
    return done.queue_id


def submit_each(
    hostport: str,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    timeout: float = 30.0,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    helo: str | None = None,
    all_or_nothing: bool = False,
) -> Submitted:
    """Like :func:`submit`, but a refused recipient is reported, not fatal:
    the message goes to the recipients the MTA accepted (none, if it refused
    them all: nothing is queued). MTAError when the MTA cannot be reached or
    refuses MAIL or DATA, or with ``all_or_nothing`` on the first refusal."""
    host, port = _host_port(hostport)
    needs_utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
    accepted: list[str] = []
    refused: dict[str, str] = {}
    permanent: set[str] = set()
    try:
        with smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout) as smtp:
            smtp.ehlo()
            options = list(mail_options)
            if needs_utf8:
                if not smtp.has_extn("smtputf8"):
                    raise MTAError(f"{hostport} does not offer SMTPUTF8, which {sender!r} needs")
                options.append("SMTPUTF8")
            if any(b > 127 for b in message) and smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            rcpt_opts = list(rcpt_options) if smtp.has_extn("dsn") else []
            if not smtp.has_extn("dsn"):
                options = [o for o in options if not o.upper().startswith(("RET=", "ENVID="))]
            code, text = smtp.mail(sender, options)
            if code != 250:
                raise MTAError(f"{hostport} refused MAIL FROM:<{sender}>: {code} {text!r}")
            for rcpt in recipients:
                code, text = smtp.rcpt(rcpt, rcpt_opts)
                if code in (250, 251):
                    accepted.append(rcpt)
                    continue
                reply = f"{code} {text.decode('utf-8', 'replace')}"
                if all_or_nothing:
                    raise MTAError(f"{hostport} refused RCPT TO:<{rcpt}>: {code} {text!r}")
                refused[rcpt] = reply
                if 500 <= code < 600:
                    permanent.add(rcpt)
            if not accepted:
                smtp.rset()
                return Submitted("", (), refused, frozenset(permanent))
            code, text = smtp.data(_crlf(message))
            if code != 250:
                raise MTAError(f"{hostport} refused the message: {code} {text!r}")
            return Submitted(
                queue_id_of(text.decode("utf-8", "replace")),
                tuple(accepted),
                refused,
                frozenset(permanent),
            )
    except smtplib.SMTPResponseException as exc:
        raise MTAError(f"{hostport}: {exc.smtp_code} {exc.smtp_error!r}") from None
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise MTAError(f"{hostport}: cannot submit: {exc}") from None
