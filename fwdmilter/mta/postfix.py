"""Postfix's hold queue, through Postfix's own tools.

``postqueue -j`` lists the queue as JSON lines, ``postcat -bh -q ID`` prints
a queued message's headers and body, ``postsuper -d ID hold`` deletes a
message from the hold queue. Each runs with ``-c`` naming the instance's
configuration directory, so one host's several instances stay apart.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from fwdmilter.errors import MTAError
from fwdmilter.mta.base import MTA, QueuedMessage

__all__ = ["Postfix"]

log = logging.getLogger(__name__)

#: Postfix queue ids: short (hex) or long (base-52 with a "z" separator, 3.x).
_QUEUE_ID: Final = re.compile(r"\A[0-9A-Za-z]{6,32}\Z")
_DELETED: Final = re.compile(r"Deleted: (\d+) messages?")


class Postfix(MTA):
    """One Postfix instance's queue."""

    name = "postfix"

    def __init__(
        self, config_dir: str = "/etc/postfix", command_dir: str = "", timeout: float = 60.0
    ) -> None:
        self.config_dir = config_dir
        self.command_dir = command_dir
        self.timeout = timeout

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        exe = str(Path(self.command_dir) / tool) if self.command_dir else tool
        argv = [exe, "-c", self.config_dir, *args]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise MTAError(
                f"{tool} not found (mta.command_dir: {self.command_dir or 'PATH'})"
            ) from None
        except subprocess.TimeoutExpired:
            raise MTAError(f"{' '.join(argv)} took longer than {self.timeout:.0f}s") from None
        return done

    @staticmethod
    def _check_id(queue_id: str) -> None:
        if not _QUEUE_ID.match(queue_id):
            raise MTAError(f"{queue_id!r} is not a Postfix queue id")

    @staticmethod
    def _fail(argv: Sequence[str], done: subprocess.CompletedProcess[bytes]) -> MTAError:
        err = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
        return MTAError(f"{' '.join(argv)}: {err}")

    def queue(self) -> list[dict[str, object]]:
        """Every queued message as ``postqueue -j`` describes it."""
        done = self._run("postqueue", "-j")
        if done.returncode != 0:
            raise self._fail(["postqueue", "-j"], done)
        out: list[dict[str, object]] = []
        for line in done.stdout.splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise MTAError(
                        f"postqueue -j printed something that is not JSON: {exc}"
                    ) from None
        return out

    def queued(self) -> list[QueuedMessage]:
        # postqueue -j lists every queue (incoming, active, deferred, hold,
        # corrupt): a message is in one of them until it is delivered,
        # bounced or deleted.
        out: list[QueuedMessage] = []
        for entry in self.queue():
            rcpts = entry.get("recipients") or []
            out.append(
                QueuedMessage(
                    queue_id=str(entry.get("queue_id", "")),
                    sender=str(entry.get("sender", "")),
                    recipients=tuple(
                        str(r.get("address", "")) for r in rcpts if isinstance(r, dict)
                    )
                    if isinstance(rcpts, list)
                    else (),
                    arrival=float(str(entry.get("arrival_time", 0))),
                    size=int(str(entry.get("message_size", 0))),
                    queue=str(entry.get("queue_name", "")),
                )
            )
        return out

    def held(self) -> list[QueuedMessage]:
        return [m for m in self.queued() if m.queue == "hold"]

    def read(self, queue_id: str) -> bytes:
        self._check_id(queue_id)
        if not self.is_held(queue_id):
            raise MTAError(f"{queue_id} is not in the hold queue of {self.config_dir}")
        done = self._run("postcat", "-bh", "-q", queue_id)
        if done.returncode != 0:
            raise self._fail(["postcat", "-bh", "-q", queue_id], done)
        return done.stdout

    def delete(self, queue_id: str) -> bool:
        self._check_id(queue_id)
        done = self._run("postsuper", "-d", queue_id, "hold")
        if done.returncode != 0:
            raise self._fail(["postsuper", "-d", queue_id, "hold"], done)
        m = _DELETED.search(done.stderr.decode("utf-8", "replace"))
        deleted = bool(m and int(m.group(1)) > 0)
        log.info("queue_id=%s postsuper=%s", queue_id, "deleted" if deleted else "absent")
        return deleted
