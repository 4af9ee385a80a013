"""scripts/run, the README's first command: install, then run on the embedded store."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

from tests.harness.proc import wait_until

REPO = Path(__file__).resolve().parents[2]


def run_until_listening_then_stop(etc: Path, log: Path) -> str:
    """Run scripts/run with its configuration in ``etc``; SIGTERM it once it
    listens; return what it printed."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(REPO / "scripts" / "run")],
            env={**os.environ, "FWDMILTER_ETC": str(etc)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: "listening on" in log.read_text() or proc.poll() is not None,
                180,
                "scripts/run starts the milter",
            )
            assert proc.poll() is None, log.read_text()
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return log.read_text()


def test_run_installs_writes_a_secret_and_serves_until_sigterm(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    sock, db = tmp_path / "milter.sock", tmp_path / "state.db"
    (etc / "fwdmilter.toml").write_text(
        f'[milter]\nsocket = "unix:{sock}"\n'
        f'[srs]\ndomain = "fwd.example"\nsecrets_file = "{etc}/srs-secrets"\n'
        f'[store]\nurl = "sqlite://{db}"\n'
    )
    text = run_until_listening_then_stop(etc, tmp_path / "run1.log")
    assert f"listening on unix:{sock}" in text
    assert f"store sqlite://{db}" in text
    assert "writing a new SRS secret" in text
    assert "stopped" in text
    secrets = etc / "srs-secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    first = secrets.read_text()
    assert len(first.strip()) >= 32
    assert db.exists()
    # A second run keeps the secret (addresses signed with it stay valid).
    text = run_until_listening_then_stop(etc, tmp_path / "run2.log")
    assert "writing a new SRS secret" not in text
    assert secrets.read_text() == first
