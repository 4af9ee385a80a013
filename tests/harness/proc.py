"""Free ports and child processes that are always reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = ["Process", "free_port", "poll", "wait_for_port", "wait_until"]

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, never the same twice."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    wait_until(lambda: _connects(host, port), timeout, f"nothing listens on {host}:{port}")


def _connects(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout}s: {what}")
        time.sleep(interval)


_T = TypeVar("_T")


def poll(
    fetch: Callable[[], _T],
    predicate: Callable[[_T], object],
    timeout: float,
    what: str,
    explain: Callable[[_T], str],
) -> _T:
    """Call ``fetch`` until ``predicate`` holds for what it returns; return
    that. On timeout the error adds ``explain(last result)``."""
    last: list[_T] = []

    def check() -> bool:
        last[:] = [fetch()]
        return bool(predicate(last[0]))

    try:
        wait_until(check, timeout, what, interval=0.1)
    except TimeoutError as e:
        seen = explain(last[0]) if last else "nothing fetched"
        raise TimeoutError(f"{e}\n{seen}") from None
    return last[0]


class Process:
    """A child process in its own process group, with its output in a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self._logf = log.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._logf.close()
        return self.proc.returncode
