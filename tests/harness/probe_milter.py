"""A tiny pymilter that shows which mail reached a milter, for harness tests.

Run in a subprocess (``python -m tests.harness.probe_milter SOCKET RECORDS``),
it adds ``X-Harness-Probe: from=<SENDER>`` to every message it sees, puts in
Postfix's hold queue (milter quarantine) every message whose headers or body
hold ``QUARANTINE_MARKER``, and appends one JSON line per message to the
RECORDS file: queue id, sender as the milter got it, recipients, action.

A bounce quotes the message it reports on, so a test makes the bounce that
Postfix will generate quarantined by writing the marker into the original.

API::

    probe = ProbeMilter(runtime.socket("probe"), workdir)   # started
    border = border_factory(non_smtpd_milters=probe.spec)
    probe.records()          # [{"queue_id": ..., "mail_from": "", "action": "hold"}, ...]
    probe.stop()
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from tests.harness.proc import Process, wait_until

__all__ = ["HEADER", "QUARANTINE_MARKER", "ProbeMilter"]

QUARANTINE_MARKER = b"harness-quarantine"
HEADER = "X-Harness-Probe"
_REPO = Path(__file__).resolve().parents[2]


class ProbeMilter:
    """The probe milter in a child process, on a unix socket."""

    def __init__(self, socket_path: Path, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = socket_path
        self.records_path = workdir / "probe-records.jsonl"
        self.records_path.touch()
        self.proc = Process(
            [
                sys.executable,
                "-m",
                "tests.harness.probe_milter",
                str(socket_path),
                str(self.records_path),
            ],
            workdir / "probe-milter.log",
            cwd=_REPO,
        )
        try:
            wait_until(
                lambda: socket_path.exists() or not self.proc.alive(),
                10,
                "the probe milter listens",
            )
        except TimeoutError:
            self.proc.stop()
            raise
        if not self.proc.alive():
            self.proc.stop()
            raise RuntimeError("the probe milter died:\n" + self.proc.output())

    @property
    def spec(self) -> str:
        """The socket as Postfix's ``*_milters`` parameters name it."""
        return f"unix:{self.socket_path}"

    def records(self) -> list[dict[str, object]]:
        text = self.records_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stop(self) -> None:
        # libmilter answers SIGTERM only when its listener's 5 s select()
        # times out; nothing of the probe's needs a clean exit.
        self.proc.stop(timeout=0.5)


def _main(socket_path: str, records_path: str) -> None:  # pragma: no cover - child process
    import Milter  # noqa: PLC0415 - only the child needs libmilter

    lock = threading.Lock()
    records = Path(records_path)

    class Probe(Milter.Base):  # type: ignore[misc]
        def __init__(self) -> None:
            self.mail_from = ""
            self.rcpts: list[str] = []
            self.content = bytearray()

        def envfrom(self, mail_from: str, *params: str) -> int:
            self.mail_from = mail_from
            self.rcpts = []
            self.content = bytearray()
            return Milter.CONTINUE

        def envrcpt(self, rcpt: str, *params: str) -> int:
            self.rcpts.append(rcpt)
            return Milter.CONTINUE

        def header(self, name: str, value: str) -> int:
            self.content += f"{name}: {value}\n".encode("utf-8", "surrogateescape")
            return Milter.CONTINUE

        def body(self, chunk: bytes) -> int:
            if len(self.content) < 1_000_000:
                self.content += chunk
            return Milter.CONTINUE

        def eom(self) -> int:
            action = "hold" if QUARANTINE_MARKER in self.content else "accept"
            self.addheader(HEADER, f"from=<{self.mail_from.strip('<>')}>")
            if action == "hold":
                self.quarantine("harness probe saw the marker")
            record = {
                "queue_id": self.getsymval("i"),
                "mail_from": self.mail_from,
                "rcpts": self.rcpts,
                "action": action,
            }
            with lock, records.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
            return Milter.ACCEPT

    # Postfix connects as user postfix: the socket must be writable by all.
    os.umask(0)
    Milter.factory = Probe
    Milter.runmilter("harness-probe", f"unix:{socket_path}", timeout=60)


if __name__ == "__main__":  # pragma: no cover - child process
    _main(sys.argv[1], sys.argv[2])
