"""The milter protocol's edge cases, with OpenDKIM's miltertest playing the MTA.

The Lua scripts of this folder drive the real daemon (python -m
fwdmilter.daemon) on a unix socket: negotiation, several transactions on
one connection, aborts, RSET, unknown macros, and connections dropped at
every stage. After each script the daemon must have gone back to the
threads and file descriptors it had before: Debian's libmilter keeps an
idle connection as a descriptor in its poll set and lends it a worker
thread while a callback runs, so a connection it failed to close shows as
a descriptor, a callback that never returned as a thread. At the end,
SIGTERM must find no connection open and stop the daemon promptly.
"""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.dns import DnsServer
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.postfix import RuntimeDir
from tests.harness.smtp import unique

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("miltertest") is None, reason="miltertest is not installed"),
]

MTDIR = Path(__file__).resolve().parent

#: What fwdmilter.milter negotiates, and nothing more: the actions it uses
#: (WANTED_ACTIONS), and every protocol step it has no use for turned off
#: or answered without a reply (connect, HELO, headers and body need none;
#: DATA, end of headers and unknown commands need no callback at all).
#: SMFIP_SKIP is libmilter's offer to accept SMFIS_SKIP from body callbacks.
MINIMAL_ACTIONS = {
    "SMFIF_ADDHDRS",
    "SMFIF_CHGHDRS",
    "SMFIF_CHGFROM",
    "SMFIF_ADDRCPT",
    "SMFIF_ADDRCPT_PAR",
    "SMFIF_DELRCPT",
    "SMFIF_QUARANTINE",
    "SMFIF_SETSYMLIST",
}
MINIMAL_STEPS = {
    "SMFIP_NR_CONN",
    "SMFIP_NR_HELO",
    "SMFIP_NR_HDR",
    "SMFIP_NR_BODY",
    "SMFIP_NODATA",
    "SMFIP_NOEOH",
    "SMFIP_NOUNKNOWN",
    "SMFIP_SKIP",
}
DROP_STAGES = ["open", "negotiate", "connect", "helo", "mail", "rcpt", "header", "body", "eom"]


class Daemon:
    """The daemon under test, a forwarding address in its store, and its resources."""

    def __init__(self, fm: FwdMilter) -> None:
        self.fm = fm
        tok = unique("mt")
        self.rcpt = f"f{tok}@fwd.example"
        self.target = f"alice+{tok}@inner.example"
        fm.fwdctl("forward", "set", self.rcpt, self.target)
        self.baseline = (0, 0)

    @property
    def pid(self) -> int:
        """The worker: the process with libmilter and the connections."""
        return self.fm.worker_pid

    def resources(self) -> tuple[int, int]:
        """(threads, open file descriptors) of the daemon's worker."""
        proc = Path(f"/proc/{self.pid}")
        return (len(list((proc / "task").iterdir())), len(list((proc / "fd").iterdir())))

    def open_files(self) -> list[str]:
        """What the daemon's descriptors point at, for failure messages."""
        out = []
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                out.append(f"{fd.name} -> {fd.readlink()}")
            except OSError:
                out.append(f"{fd.name} -> ?")
        return sorted(out)

    def run(self, script: str, **defines: str) -> str:
        """Run a script; its mt.echo output. Fails with miltertest's and the daemon's words."""
        argv = ["miltertest", "-v", "-s", str(MTDIR / "run.lua")]
        values = {
            "SCRIPT": script,
            "SOCKET": self.fm.spec,
            "MTDIR": str(MTDIR),
            "FWD_RCPT": self.rcpt,
            "FWD_TARGET": self.target,
            "TAG": unique("x"),
            **defines,
        }
        for key, value in values.items():
            argv += ["-D", f"{key}={value}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise AssertionError(
                f"miltertest {script} {defines} exited {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}\n--- fwdmilter log:\n{self.fm.log()[-4000:]}"
            )
        return done.stdout

    def settle(self, what: str, timeout: float = 10.0) -> None:
        """Wait until the daemon is back to its baseline threads and descriptors."""
        deadline = time.monotonic() + timeout
        now = self.resources()
        while now != self.baseline and time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.resources()
        assert now == self.baseline, (
            f"after {what}: (threads, fds) {now}, before {self.baseline}\n"
            f"open files: {self.open_files()}\n{self.fm.log()[-3000:]}"
        )


@pytest.fixture(scope="module")
def daemon(
    runtime: RuntimeDir, dns: DnsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    fm = FwdMilter(
        runtime.socket("fwd-miltertest"),
        tmp_path_factory.mktemp("fwdmilter-miltertest"),
        dns_port=dns.port,
    )
    fm.serve()
    d = Daemon(fm)
    try:
        d.run("transactions.lua")  # warm up: what is made on first use stays
        time.sleep(0.2)
        d.baseline = d.resources()
        yield d
    finally:
        fm.stop()


def test_negotiates_the_minimal_actions_and_steps(daemon: Daemon) -> None:
    out = daemon.run("negotiate.lua")
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert set(lines["actions"].split(",")) == MINIMAL_ACTIONS
    assert set(lines["steps"].split(",")) == MINIMAL_STEPS
    daemon.settle("negotiate.lua")


def test_several_transactions_on_one_connection(daemon: Daemon) -> None:
    out = daemon.run("transactions.lua")
    assert out.count("forwarded MT") == 4
    daemon.fm.wait_log(r"rcpt=<nobody\S+@fwd.example> .*stage=rcpt action=reject")
    daemon.settle("transactions.lua")


def test_abort_at_each_stage_then_a_new_transaction(daemon: Daemon) -> None:
    out = daemon.run("abort.lua")
    for stage in ("mail", "rcpt", "header", "body"):
        assert f"aborted after {stage}" in out
    daemon.settle("abort.lua")


def test_rset_and_a_new_mail_start_afresh(daemon: Daemon) -> None:
    out = daemon.run("rset.lua")
    assert out.count("forwarded MT") == 2
    daemon.settle("rset.lua")


def test_unknown_macros_are_ignored_and_the_queue_id_read_under_either_name(
    daemon: Daemon,
) -> None:
    out = daemon.run("macros.lua")
    braced = next(line.split()[1] for line in out.splitlines() if line.startswith("braced "))
    plain = next(line.split()[1] for line in out.splitlines() if line.startswith("forwarded "))
    daemon.fm.wait_log(rf"queue_id={braced} .*stage=eom action=forward")
    daemon.fm.wait_log(rf"queue_id={plain} .*stage=eom action=forward")
    daemon.settle("macros.lua")


def test_the_leak_check_sees_a_connection_left_open(daemon: Daemon) -> None:
    # The measure itself: an open connection is one more descriptor until
    # it is closed (and no worker thread while it waits for the MTA).
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(daemon.fm.socket_path))
        body = b"O" + struct.pack("!III", 6, 0x1FF, 0x1FFFFF)  # SMFIC_OPTNEG
        sock.sendall(struct.pack("!I", len(body)) + body)
        assert sock.recv(5)[4:5] == b"O"
        threads, fds = daemon.baseline
        deadline = time.monotonic() + 5
        while daemon.resources() != (threads, fds + 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.resources() == (threads, fds + 1)
    daemon.settle("closing it")


@pytest.mark.parametrize("stage", DROP_STAGES)
def test_a_connection_dropped_at_each_stage_leaks_nothing(daemon: Daemon, stage: str) -> None:
    out = daemon.run("drop.lua", STAGE=stage)
    assert f"dropped at {stage}" in out and "forwarded MT" in out
    daemon.settle(f"a drop at {stage}")


def test_a_connection_dropped_while_the_milter_works_leaks_nothing(daemon: Daemon) -> None:
    # The MTA gives up on MAIL while the milter waits on DNS (the SPF check
    # of temperror.example times out after dns.timeout): the milter answers
    # into a closed connection afterwards.
    out = daemon.run("drop.lua", STAGE="mail-busy")
    assert "mail while busy: " in out and "forwarded MT" in out
    assert "mail while busy: nil" not in out  # miltertest did give up first
    # MAIL is answered (the SPF verdict waits for RCPT TO, which never
    # comes): the connection's thread ends once the check is over, and
    # nothing went wrong answering into the closed connection.
    daemon.settle("a drop while the milter works")
    assert "Traceback" not in daemon.fm.log()


def test_sigterm_finds_no_connection_open_and_stops_promptly(daemon: Daemon) -> None:
    daemon.settle("every script")
    started = time.monotonic()
    daemon.fm.signal(signal.SIGTERM)
    code = daemon.fm.wait_exit(20)
    took = time.monotonic() - started
    log = daemon.fm.log()
    assert code == 0, log
    assert "waiting up to 10s for 0" in log, log
    assert "still open" not in log and log.rstrip().endswith("stopped"), log
    # libmilter looks at its stop flag between accept() timeouts (5 s).
    assert took < 8, f"took {took:.1f}s to stop\n{log}"
