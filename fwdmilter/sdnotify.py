"""Telling systemd how the daemon is doing: the sd_notify protocol, no library.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, the address of a
unix datagram socket: a file path, or ``@name`` for a socket in the abstract
namespace. Each datagram is newline-separated ``KEY=VALUE`` assignments
(``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=...``), as
sd_notify(3) describes.

:func:`notify` never raises because systemd is absent or gone: without
``$NOTIFY_SOCKET`` it does nothing and returns False, and a socket that is
missing, closed, full or unsupported is logged at debug level and returns
False. The daemon's work never depends on systemd hearing it.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Final

__all__ = ["NOTIFY_TIMEOUT", "notify"]

log = logging.getLogger(__name__)

#: Seconds one datagram may wait on a full socket buffer before it is dropped.
NOTIFY_TIMEOUT: Final = 2.0


def _address(value: str) -> str | None:
    """The socket address $NOTIFY_SOCKET names, or None if it is not one we speak."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # the abstract namespace, see unix(7)
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (systemd 253 and later): not for a local daemon


def notify(state: str = "", /, **fields: str | int) -> bool:
    """Send ``state`` and ``fields`` to systemd; True if the datagram was sent.

    ``notify("READY=1")`` and ``notify(READY=1, STATUS="listening")`` both
    work; a field's newlines become spaces, so one value cannot forge another
    assignment.
    """
    lines = [state] if state else []
    lines += [f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()]
    if not lines:
        raise ValueError("notify() needs a state or at least one field")
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    address = _address(target)
    if address is None:
        log.debug("sd_notify not sent: socket=%r reason=unsupported address", target)
        return False
    data = "\n".join(lines).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(NOTIFY_TIMEOUT)
            sock.sendto(data, address)
    except OSError as exc:
        log.debug("sd_notify not sent: socket=%r reason=%s", target, exc)
        return False
    return True
