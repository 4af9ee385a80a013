"""The milter socket over TCP: Nagle's algorithm against delayed ACKs.

Over a unix socket every write reaches the peer at once. Over TCP (``inet:``
or ``inet6:`` in ``milter.socket``) a small write that follows another one
still unacknowledged waits, by Nagle's algorithm (RFC 896), until the ACK
comes; and a side that has nothing to send delays its ACK (RFC 1122 section
4.2.3.2; at least 40 ms on Linux). A milter conversation has two places
where that happens to every message, both seen on loopback with tcpdump
(docs/benchmarks.md, "The inet stall"):

1. **Our edits at end of message.** libmilter writes each modification
   (headers, ``chgfrom``, ``delrcpt``, ``addrcpt``) and the final reply as
   a packet of its own. The first leaves at once; the others wait for the
   MTA to acknowledge it, and the MTA, reading replies without writing,
   delays that ACK. Fix: ``TCP_NODELAY`` on our sockets. libmilter opens
   the listening socket and accepts the connections itself, and pymilter
   gives no access to either; but Linux copies ``TCP_NODELAY`` from a
   listening socket to every socket it accepts, so
   :func:`set_nodelay_on_listener` finds libmilter's listening socket
   among the process's descriptors and sets it there once.

2. **Postfix's last write before the message content.** Postfix's smtpd
   sends the DATA macros and, when the milter skips the DATA stage, gets no
   reply; the cleanup server then writes the headers, body and end of
   message on the same connection. That second write waits for our ACK of
   the first, which our kernel delays, having nothing to send (the stack is
   in its interactive "pingpong" mode after our RCPT reply). Postfix's
   socket is not ours to change, so the milter asks for the DATA stage
   *with* a reply on TCP (:func:`wants_data_reply`): that reply carries the
   ACK at once, at the cost of one round trip where the stall cost 40 ms.
   On a unix socket DATA stays negotiated away.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

__all__ = ["is_tcp", "listen_port", "set_nodelay_on_listener", "wants_data_reply"]


def is_tcp(spec: str) -> bool:
    """Whether a libmilter socket spec (``milter.socket``) is TCP."""
    return spec.partition(":")[0] in ("inet", "inet6")


def wants_data_reply(spec: str) -> bool:
    """Whether the milter should take the DATA stage, with a reply: on TCP
    only (see the module docstring, point 2)."""
    return is_tcp(spec)


def listen_port(spec: str) -> int | None:
    """The port of ``inet:PORT@HOST`` or ``inet6:PORT@HOST``; None for unix."""
    if not is_tcp(spec):
        return None
    port = spec.partition(":")[2].partition("@")[0]
    return int(port) if port.isdigit() else None


def _fds() -> list[int]:
    try:
        return [int(entry.name) for entry in Path("/proc/self/fd").iterdir()]
    except OSError:  # not Linux: TCP_NODELAY may not be inherited there anyway
        return []


def set_nodelay_on_listener(port: int) -> int:
    """Set ``TCP_NODELAY`` on this process's listening TCP sockets on ``port``
    (the one libmilter opened); return how many there were.

    Each descriptor is looked at through a duplicate, so that libmilter's own
    descriptor is never closed or changed other than by the option.
    """
    found = 0
    for fd in _fds():
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # closed meanwhile (the listdir itself), or not a socket
        with sock:
            try:
                if (
                    sock.family not in (socket.AF_INET, socket.AF_INET6)
                    or sock.type != socket.SOCK_STREAM
                    or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    or sock.getsockname()[1] != port
                ):
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                continue
            found += 1
    return found
