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
from typing import Final

from fwdmilter.errors import MTAError

__all__ = ["submit"]

_BARE_LF: Final = re.compile(rb"(?<!\r)\n")


def _crlf(message: bytes) -> bytes:
    """Lines end in CRLF on the wire (RFC 5321 section 2.3.8). Held messages
    come from the MTA's queue with LF line ends, and smtplib sends bytes as
    they are: Postfix takes a bare LF, Sendmail 8.17 drops the connection
    ("421 4.5.0 Bare linefeed (LF) not allowed")."""
    return _BARE_LF.sub(b"\r\n", message)


def _host_port(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


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
) -> None:
    """Send ``message`` from ``sender`` ("" for the null sender) to
    ``recipients`` through the MTA at ``hostport``; MTAError unless every
    recipient was accepted and the message queued."""
    host, port = _host_port(hostport)
    needs_utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
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
                if code not in (250, 251):
                    raise MTAError(f"{hostport} refused RCPT TO:<{rcpt}>: {code} {text!r}")
            code, text = smtp.data(_crlf(message))
            if code != 250:
                raise MTAError(f"{hostport} refused the message: {code} {text!r}")
    except smtplib.SMTPResponseException as exc:
        raise MTAError(f"{hostport}: {exc.smtp_code} {exc.smtp_error!r}") from None
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise MTAError(f"{hostport}: cannot submit: {exc}") from None
