"""The daemon as systemd runs it: signals, readiness, --check-config, metrics.

Each test starts its own fwdmilter (and, where mail flows, its own BORDER),
since these tests stop, reload and signal the process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwdmilter import replies
from srs import SRS
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import OUTSIDE, BorderFactory, MailWorld
from tests.harness.postfix import MILTER_UNAVAILABLE, PostfixInstance, RuntimeDir
from tests.harness.proc import free_port, wait_until
from tests.harness.smtp import Client, make_message, unique

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(20)
    yield sock
    sock.close()


def daemon(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``fwdmilter ARGS`` to its end (a refused start, or --check-config)."""
    return subprocess.run(
        [sys.executable, "-m", "fwdmilter.daemon", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def served(
    mail: MailWorld,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    workdir: Path,
    name: str,
    **kw: object,
) -> tuple[FwdMilter, PostfixInstance]:
    fm = FwdMilter(runtime.socket(name), workdir, dns_port=mail.dns.port, **kw)  # type: ignore[arg-type]
    border = border_factory(milter=fm.spec, start=False, name=name)
    fm.serve(border)
    border.start()
    return fm, border


def test_sighup_rotates_the_srs_key_without_a_restart(
    mail: MailWorld, runtime: RuntimeDir, border_factory: BorderFactory, tmp_path: Path
) -> None:
    fm, border = served(mail, runtime, border_factory, tmp_path, "hup", secret="old-key")
    try:
        tok = unique()
        rcpt, target = f"f{tok}@fwd.example", f"alice+{tok}@inner.example"
        fm.fwdctl("forward", "set", rcpt, target)
        pid_before = fm.proc.pid if fm.proc else 0
        # A transaction is under way when the reload comes.
        with Client(border.port, source_ip=OUTSIDE, helo="helo.pass.example") as c:
            assert c.command("MAIL", f"FROM:<a{tok}@pass.example>").code == 250
            fm.secrets_file.write_text("new-key\nold-key\n")
            fm.reload()
            assert c.command("RCPT", f"TO:<{rcpt}>").code == 250
            data = c.smtp.data(make_message(f"a{tok}@pass.example", rcpt, subject=f"during {tok}"))
            assert data[0] == 250
        during = mail.wait_for(target, match=lambda m: f"during {tok}" in str(m.email["Subject"]))
        assert SRS(["old-key"], "fwd.example").reverse(during.mail_from) == f"a{tok}@pass.example"
        # New connections sign with the new key ...
        assert mail.send(
            border,
            f"b{tok}@pass.example",
            [rcpt],
            make_message(subject=f"after {tok}"),
            source_ip=OUTSIDE,
            helo="helo.pass.example",
        ).accepted
        after = mail.wait_for(target, match=lambda m: f"after {tok}" in str(m.email["Subject"]))
        assert SRS(["new-key"], "fwd.example").reverse(after.mail_from) == f"b{tok}@pass.example"
        # ... and still accept bounces to addresses signed with the old one.
        old_addr = SRS(["old-key"], "fwd.example").forward(f"c{tok}@pass.example")
        t = mail.send(border, "", [old_addr], source_ip=OUTSIDE, helo="helo.pass.example")
        assert t.rcpt(old_addr).startswith("250"), t
        assert fm.proc is not None and fm.proc.pid == pid_before and fm.alive
        fm.wait_log(r"reloaded configuration from")
    finally:
        fm.stop()


def test_sighup_with_a_broken_configuration_keeps_the_running_one(
    mail: MailWorld, runtime: RuntimeDir, border_factory: BorderFactory, tmp_path: Path
) -> None:
    fm, border = served(mail, runtime, border_factory, tmp_path, "badhup")
    try:
        fm.config_path.write_text(fm.config_path.read_text() + "\n[spf]\nfail = 'bounce'\n")
        fm.signal(signal.SIGHUP)
        fm.wait_log(r"reload failed, keeping the running configuration: spf.fail: must be one of")
        tok = unique()
        fm.fwdctl(
            "forward", "set", f"f{tok}@fwd.example", f"alice+{tok}@inner.example", check=False
        )
        t = mail.send(border, f"x{tok}@fail.example", [f"f{tok}@fwd.example"], source_ip=OUTSIDE)
        assert t.rcpt(f"f{tok}@fwd.example").said(replies.SPF_FAIL, completed=True), t
    finally:
        fm.stop()


def test_sigterm_lets_a_running_transaction_finish_and_refuses_new_ones(
    mail: MailWorld, runtime: RuntimeDir, border_factory: BorderFactory, tmp_path: Path
) -> None:
    fm, border = served(mail, runtime, border_factory, tmp_path, "term")
    tok = unique()
    rcpt, target = f"f{tok}@fwd.example", f"alice+{tok}@inner.example"
    fm.fwdctl("forward", "set", rcpt, target)
    with Client(border.port, source_ip=OUTSIDE, helo="helo.pass.example") as c:
        assert c.command("MAIL", f"FROM:<a{tok}@pass.example>").code == 250
        assert c.command("RCPT", f"TO:<{rcpt}>").code == 250
        fm.signal(signal.SIGTERM)
        fm.wait_log(r"stopping: no new connections; waiting up to 10s for 1 transactions")
        # New connections find no milter: Postfix applies milter_default_action.
        started = time.monotonic()
        t = mail.send(
            border, f"b{tok}@pass.example", [rcpt], source_ip=OUTSIDE, helo="helo.pass.example"
        )
        assert not t.accepted and str(t.mail or t.helo or t.greeting) == MILTER_UNAVAILABLE, t
        assert time.monotonic() - started < 3  # refused at once, not after a timeout
        assert fm.alive  # still finishing the running transaction
        data = c.smtp.data(make_message(f"a{tok}@pass.example", rcpt, subject=f"finish {tok}"))
        assert data[0] == 250
    assert fm.wait_exit(10) == 0, fm.log()
    msg = mail.wait_for(target, match=lambda m: f"finish {tok}" in str(m.email["Subject"]))
    assert msg.mail_from.startswith("SRS0=")
    assert "stopped" in fm.log()


def test_sigterm_waits_no_longer_than_the_bound(
    mail: MailWorld, runtime: RuntimeDir, border_factory: BorderFactory, tmp_path: Path
) -> None:
    fm, border = served(
        mail,
        runtime,
        border_factory,
        tmp_path,
        "bound",
        settings={"milter": {"shutdown_timeout": 1.5}},
    )
    with Client(border.port, source_ip=OUTSIDE, helo="helo.pass.example") as c:
        assert c.command("MAIL", f"FROM:<x{unique()}@pass.example>").code == 250
        started = time.monotonic()
        fm.signal(signal.SIGTERM)
        assert fm.wait_exit(10) == 0
        assert time.monotonic() - started < 5
    assert "stopping with 1 transactions still running" in fm.log()


def test_readiness_reload_and_stop_are_told_to_systemd(
    notify_socket: socket.socket, runtime: RuntimeDir, tmp_path: Path, mail: MailWorld
) -> None:
    fm = FwdMilter(runtime.socket("notify"), tmp_path, dns_port=mail.dns.port)
    fm.write_config()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fwdmilter.daemon", "--config", str(fm.config_path)],
        cwd=REPO,
        env={"NOTIFY_SOCKET": notify_socket.getsockname(), "PATH": "/usr/bin:/bin"},
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = notify_socket.recv(4096).decode()
        assert ready.startswith("READY=1")
        assert f"STATUS=listening on {fm.spec}" in ready
        # Ready means listening: a connection is accepted right away.
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(fm.socket_path))
        proc.send_signal(signal.SIGHUP)
        assert notify_socket.recv(4096).decode().startswith("RELOADING=1")
        assert notify_socket.recv(4096).decode().startswith("READY=1")
        proc.send_signal(signal.SIGTERM)
        assert notify_socket.recv(4096).decode().startswith("STOPPING=1")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_check_config_prints_effective_settings_with_secrets_masked(
    tmp_path: Path, mail: MailWorld
) -> None:
    fm = FwdMilter(
        tmp_path / "m.sock",
        tmp_path,
        dns_port=mail.dns.port,
        store_url="redis://fwd:s3cretpw@127.0.0.1:1/0",
    )
    fm.write_config()
    ok = daemon("--check-config", "--config", str(fm.config_path))
    assert ok.returncode == 0, ok.stderr
    assert 'url = "redis://fwd:***@127.0.0.1:1/0"' in ok.stdout
    assert "s3cretpw" not in ok.stdout
    assert '[srs]\ndomain = "fwd.example"' in ok.stdout
    assert 'fail = "reject"' in ok.stdout
    fm.config_path.write_text(
        fm.config_path.read_text().replace("timeout = 1.5", "timeout = 'soon'")
    )
    bad = daemon("--check-config", "--config", str(fm.config_path))
    assert bad.returncode == 78
    assert "dns.timeout: must be a number, not 'soon'" in bad.stderr
    fm.write_config()
    fm.secrets_file.chmod(0o644)
    world = daemon("--check-config", "--config", str(fm.config_path))
    assert world.returncode == 78
    assert "readable by everyone" in world.stderr


def test_metrics_endpoint_counts_decisions(
    mail: MailWorld, runtime: RuntimeDir, border_factory: BorderFactory, tmp_path: Path
) -> None:
    port = free_port()
    fm, border = served(
        mail,
        runtime,
        border_factory,
        tmp_path,
        "metrics",
        settings={"metrics": {"listen": f"127.0.0.1:{port}"}},
    )
    try:
        tok = unique()
        rcpt, target = f"f{tok}@fwd.example", f"alice+{tok}@inner.example"
        fm.fwdctl("forward", "set", rcpt, target)
        assert mail.send(
            border, f"a{tok}@pass.example", [rcpt], source_ip=OUTSIDE, helo="helo.pass.example"
        ).accepted
        refused = mail.send(border, f"x{tok}@fail.example", [rcpt], source_ip=OUTSIDE)
        assert refused.rcpt(rcpt).code == 550
        assert (
            mail.send(
                border,
                "",
                [f"SRS0=AAAA=AA=x.example=y{tok}@fwd.example"],
                source_ip=OUTSIDE,
                helo="helo.pass.example",
            )
            .rcpts[0][1]
            .code
            == 550
        )
        mail.wait_for(target)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        wait_until(lambda: 'fwdmilter_srs_total{event="forward"} 1.0' in scrape(), 10, "metrics")
        text = scrape()
        assert 'fwdmilter_decisions_total{action="forward",stage="eom"} 1.0' in text
        # The SPF verdict and the forged SRS address, both at RCPT TO.
        assert 'fwdmilter_decisions_total{action="reject",stage="rcpt"} 2.0' in text
        # The forwarded message and the bounce's HELO name both passed.
        assert 'fwdmilter_spf_results_total{result="pass"} 2.0' in text
        assert 'fwdmilter_spf_results_total{result="fail"} 1.0' in text
        assert 'fwdmilter_srs_total{event="refused"} 1.0' in text
        assert re.search(r'fwdmilter_store_seconds_count\{operation="rcpt_info"\} [1-9]', text)
        assert re.search(r"fwdmilter_spf_seconds_count [1-9]", text)
        assert 'fwdmilter_held_entries{state="H"} 0.0' in text
        assert "fwdmilter_store_up 1.0" in text
    finally:
        fm.stop()
    # Stopped means the endpoint is gone too.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_unknown_configuration_key_refuses_to_start(tmp_path: Path, mail: MailWorld) -> None:
    fm = FwdMilter(
        tmp_path / "m.sock", tmp_path, dns_port=mail.dns.port, settings={"spf": {"fial": "reject"}}
    )
    fm.write_config()
    done = daemon("--config", str(fm.config_path))
    assert done.returncode == 78
    assert "spf.fial: unknown key" in done.stderr


def test_a_corrupt_store_file_refuses_to_start(tmp_path: Path, mail: MailWorld) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not a database" * 100)
    fm = FwdMilter(
        tmp_path / "m.sock", tmp_path, dns_port=mail.dns.port, store_url=f"sqlite://{db}"
    )
    fm.write_config()
    done = daemon("--config", str(fm.config_path))
    assert done.returncode != 0
    assert str(db) in done.stderr
    assert db.read_bytes() == b"this is not a database" * 100  # nothing lost or rewritten


def test_when_needed_keeps_a_sender_whose_spf_permits_this_forwarder(
    mail: MailWorld, runtime: RuntimeDir, border_factory: BorderFactory, tmp_path: Path
) -> None:
    # BORDER sends from 127.0.0.1: pass.example's SPF permits it, neutral.example's does not.
    fm, border = served(
        mail,
        runtime,
        border_factory,
        tmp_path,
        "needed",
        settings={"srs": {"rewrite": "when-needed", "outbound_ips": ["127.0.0.1"]}},
    )
    try:
        tok = unique()
        rcpt, target = f"f{tok}@fwd.example", f"alice+{tok}@inner.example"
        fm.fwdctl("forward", "set", rcpt, target)
        for sender in (f"p{tok}@pass.example", f"n{tok}@neutral.example"):
            t = mail.send(
                border,
                sender,
                [rcpt],
                make_message(sender, rcpt, subject=sender),
                source_ip=OUTSIDE,
                helo="helo.pass.example",
            )
            assert t.accepted, t
        kept = mail.wait_for(target, match=lambda m: m.email["Subject"] == f"p{tok}@pass.example")
        assert kept.mail_from == f"p{tok}@pass.example"
        rewritten = mail.wait_for(
            target, match=lambda m: m.email["Subject"] == f"n{tok}@neutral.example"
        )
        assert rewritten.mail_from.startswith("SRS0=") and rewritten.mail_from.endswith(
            "@fwd.example"
        )
    finally:
        fm.stop()


def _proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def test_the_signalled_process_has_no_libmilter_and_the_worker_ignores_signals(
    runtime: RuntimeDir, tmp_path: Path, mail: MailWorld
) -> None:
    """libmilter's signal thread stops the milter on SIGHUP or SIGTERM; it
    lives in a worker that ignores both, while the supervisor (the process
    systemd signals) runs one thread and no libmilter."""
    fm = FwdMilter(runtime.socket("twoproc"), tmp_path, dns_port=mail.dns.port)
    fm.serve()
    try:
        assert fm.proc is not None
        parent = fm.proc.pid
        worker = fm.worker_pid
        assert _proc_status(parent)["Threads"] == "1"
        assert int(_proc_status(worker)["Threads"]) >= 3  # libmilter's threads are here
        ignored = int(_proc_status(worker)["SigIgn"], 16)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            assert ignored & (1 << (sig - 1)), sig
        caught = int(_proc_status(parent)["SigCgt"], 16)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            assert caught & (1 << (sig - 1)), sig
        # A SIGHUP sent straight to the worker is discarded: it keeps serving.
        os.kill(worker, signal.SIGHUP)
        time.sleep(0.3)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(fm.socket_path))
        fm.reload()
        assert fm.alive
    finally:
        fm.stop()


def test_a_store_that_cannot_be_reached_at_start_exits_for_a_restart(
    tmp_path: Path, mail: MailWorld
) -> None:
    """75 (EX_TEMPFAIL), which systemd restarts, not 78, which it does not:
    Redis may come up after the milter at boot."""
    fm = FwdMilter(
        tmp_path / "m.sock",
        tmp_path,
        dns_port=mail.dns.port,
        store_url=f"redis://127.0.0.1:{free_port()}/0",
        settings={"store": {"timeout": 0.5}},
    )
    fm.write_config()
    done = daemon("--config", str(fm.config_path))
    assert done.returncode == 75, done.stderr
    assert "cannot reach the store, will try again" in done.stderr
    unit = (REPO / "systemd" / "fwdmilter.service").read_text()
    assert "RestartPreventExitStatus=78" in unit and "Restart=on-failure" in unit
