"""fwdmilter on a TCP socket (``inet:PORT@HOST``).

Over TCP, libmilter's sockets must have TCP_NODELAY, or the edits the milter
sends at end of message wait for the MTA's delayed ACK (fwdmilter.tcp,
docs/benchmarks.md "The inet stall"). libmilter opens and accepts those
sockets itself; the daemon sets the option on the listening socket, and the
kernel copies it to each accepted one. These tests check the option on an
accepted socket (no timing), and that mail flows through Postfix over TCP.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import OUTSIDE, BorderFactory, MailWorld
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.proc import free_port
from tests.harness.smtp import make_message, unique

pytestmark = pytest.mark.e2e
_REPO = Path(__file__).resolve().parents[2]

# Run in a child process: libmilter's state is process-wide. The daemon's own
# start-up (register, open the socket) runs; libmilter's accept loop does
# not, so the child accepts one connection on libmilter's listening socket
# itself and reports that connection's TCP_NODELAY.
_ACCEPT_ONE = r"""
import json, os, socket, sys
from fwdmilter import config, daemon

cfg = config.load(sys.argv[1])
port = int(sys.argv[2])
server = daemon.Server(cfg)
server._register()
server._open_socket()
client = socket.create_connection(("127.0.0.1", port), timeout=5)
for name in os.listdir("/proc/self/fd"):
    try:
        sock = socket.socket(fileno=os.dup(int(name)))
    except OSError:
        continue
    with sock:
        if (
            sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            and sock.getsockname()[1] == port
        ):
            conn, _ = sock.accept()
            print(json.dumps({
                "listener": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                "accepted": conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
            }))
            break
"""


def test_daemon_sockets_on_tcp_have_nodelay(tmp_path: Path, runtime: RuntimeDir) -> None:
    port = free_port()
    fm = FwdMilter(
        runtime.socket("inet-nodelay"),
        tmp_path,
        dns_port=53,  # never asked: no mail flows here
        settings={"milter": {"socket": f"inet:{port}@127.0.0.1"}},
    )
    fm.write_config()
    done = subprocess.run(
        [sys.executable, "-c", _ACCEPT_ONE, str(fm.config_path), str(port)],
        capture_output=True,
        text=True,
        cwd=_REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "TCP_NODELAY not set" not in done.stderr
    got = json.loads(done.stdout)
    assert got["listener"] and got["accepted"], got


@pytest.fixture(scope="module")
def fm_inet(
    mail: MailWorld,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FwdMilter, PostfixInstance]]:
    port = free_port()
    milter = FwdMilter(
        runtime.socket("fwd-inet"),
        tmp_path_factory.mktemp("fwdmilter-inet"),
        dns_port=mail.dns.port,
        settings={"milter": {"socket": f"inet:{port}@127.0.0.1"}},
    )
    border = border_factory(milter=f"inet:127.0.0.1:{port}", start=False)
    milter.serve(border)
    border.start()
    yield milter, border
    milter.stop()


def test_forwarding_over_tcp(fm_inet: tuple[FwdMilter, PostfixInstance], mail: MailWorld) -> None:
    # Over TCP the milter also takes DATA (with a reply): the MTA must see the
    # same transaction as over a unix socket.
    fm, border = fm_inet
    tok = unique()
    rcpt, target = f"f{tok}@fwd.example", f"alice+{tok}@inner.example"
    fm.fwdctl("forward", "set", rcpt, target)
    sender = f"s{tok}@pass.example"
    t = mail.send(
        border,
        sender,
        [rcpt],
        make_message(sender, rcpt, subject=tok),
        source_ip=OUTSIDE,
        helo="helo.pass.example",
    )
    assert t.accepted, t
    msg = mail.wait_for(target)
    assert msg.mail_from.startswith("SRS0=") and msg.mail_from.endswith("@fwd.example")
    assert msg.email["Fwdmilter-Trace"].startswith("fwd.example; id=")
    assert "TCP_NODELAY not set" not in fm.log()
    assert border.problems() == []
