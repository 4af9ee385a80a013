"""fwdmilter itself, run as the daemon it is, for end-to-end tests.

The daemon runs in a child process (``python -m fwdmilter.daemon``) with a
configuration written here: its socket in the harness's runtime folder
(Postfix reaches it as user postfix), the session's DNS server as resolver,
a store (an SQLite file, or a private Redis), a fresh SRS secret, and the
BORDER it serves for alerts and requeue (``mta.submit``,
``mta.postfix_config_dir``). ``fwdctl`` runs as a child process too, with
the same configuration.

API::

    fm = FwdMilter(runtime.socket("fwd"), workdir, dns_port=mail.dns.port,
                   store_url="sqlite:///..." , settings={"held": {"alert_to": [...]}})
    border = border_factory(milter=fm.spec, start=False)
    fm.serve(border)          # mta.* point at border; starts the daemon
    border.start()
    fm.fwdctl("forward", "set", "bob@fwd.example", "bob@inner.example")
    fm.log(); fm.wait_log(r"action=forward"); fm.stop()
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.harness.postfix import PostfixInstance
from tests.harness.proc import Process, wait_until

__all__ = ["FwdMilter", "toml"]

_REPO = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def toml(settings: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML text of tables of plain values."""
    lines: list[str] = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _merge(base: dict[str, dict[str, Any]], extra: Mapping[str, Mapping[str, Any]]) -> None:
    for section, values in extra.items():
        base.setdefault(section, {}).update(values)


class FwdMilter:
    """The fwdmilter daemon under test."""

    def __init__(
        self,
        socket_path: Path,
        workdir: Path,
        *,
        dns_port: int,
        store_url: str | None = None,
        hostname: str = "border.fwd.example",
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        secret: str | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.socket_path = socket_path
        self.secrets_file = workdir / "srs-secrets"
        self.secret = secret or secrets.token_urlsafe(24)
        self.secrets_file.write_text(self.secret + "\n")
        self.secrets_file.chmod(0o600)
        self.config_path = workdir / "fwdmilter.toml"
        self.settings: dict[str, dict[str, Any]] = {
            "milter": {
                "socket": f"unix:{socket_path}",
                "socket_mode": "0666",
                "hostname": hostname,
                "shutdown_timeout": 10.0,
            },
            "srs": {"domain": "fwd.example", "secrets_file": str(self.secrets_file)},
            "forwarding": {"domains": ["fwd.example"]},
            "dns": {"nameservers": ["127.0.0.1"], "port": dns_port, "timeout": 1.5},
            "store": {"url": store_url or f"sqlite://{workdir}/state.db"},
            # Only the harness's own submissions (127.0.0.1) are trusted: test
            # clients come from other loopback addresses.
            "trusted": {"networks": ["127.0.0.1/32"]},
            "logging": {"level": "info"},
        }
        _merge(self.settings, settings or {})
        self.proc: Process | None = None
        self.log_path = workdir / "fwdmilter.log"

    @property
    def spec(self) -> str:
        return f"unix:{self.socket_path}"

    def write_config(self) -> None:
        self.config_path.write_text(toml(self.settings))

    def serve(self, border: PostfixInstance | None = None, *, wait: bool = True) -> None:
        """Start the daemon; with ``border``, alerts and requeue go through it."""
        if border is not None:
            _merge(
                self.settings,
                {
                    "mta": {
                        "submit": f"127.0.0.1:{border.port}",
                        "postfix_config_dir": str(border.config_dir),
                    }
                },
            )
        self.write_config()
        if self.socket_path.exists():
            self.socket_path.unlink()
        self.proc = Process(
            [sys.executable, "-m", "fwdmilter.daemon", "--config", str(self.config_path)],
            self.log_path,
            cwd=_REPO,
            env={"PYTHONUNBUFFERED": "1"},
        )
        if wait:
            self.wait_listening()

    def wait_listening(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        proc = self.proc
        try:
            wait_until(
                lambda: "listening on" in self.log() or not proc.alive(),
                timeout,
                "fwdmilter listens",
            )
        except TimeoutError:
            raise TimeoutError("fwdmilter did not start:\n" + self.log()) from None
        if not proc.alive():
            raise RuntimeError("fwdmilter died at start:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> list[str]:
        """The log lines matching ``pattern`` once there are ``count`` of them."""
        rx = re.compile(pattern)

        def lines() -> list[str]:
            return [line for line in self.log().splitlines() if rx.search(line)]

        try:
            wait_until(lambda: len(lines()) >= count, timeout, f"fwdmilter logs {pattern!r}")
        except TimeoutError:
            raise TimeoutError(f"no {pattern!r} in the fwdmilter log:\n{self.log()}") from None
        return lines()

    def fwdctl(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``fwdctl --config ... ARGS`` as the admin would."""
        done = subprocess.run(
            [sys.executable, "-m", "fwdmilter.cli", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            input=stdin,
            cwd=_REPO,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"fwdctl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def held(self, *args: str) -> list[dict[str, Any]]:
        """``fwdctl held list --json ARGS``: the held entries, as admins script them."""
        out: list[dict[str, Any]] = json.loads(self.fwdctl("held", "list", "--json", *args).stdout)
        return out

    @property
    def worker_pid(self) -> int:
        """The worker the supervisor forked: the process with libmilter in it."""
        assert self.proc is not None
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) != 1:
            raise RuntimeError(f"fwdmilter {pid} has children {children}, not one worker")
        return int(children[0])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.signal(sig)

    def reload(self) -> None:
        """SIGHUP, and wait until the daemon says it reloaded."""
        before = self.log().count("reload")
        self.signal(signal.SIGHUP)
        wait_until(lambda: self.log().count("reload") > before, 10, "fwdmilter reloads")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.stop(timeout=30)
        self.proc = None
        return code

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status once the daemon exits by itself (None: still running)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.proc.alive():
            return None
        code = self.proc.stop()
        self.proc = None
        return code
