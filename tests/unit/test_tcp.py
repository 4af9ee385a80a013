"""fwdmilter.tcp: which sockets are TCP, and TCP_NODELAY reaching accepted sockets."""

from __future__ import annotations

import socket

import pytest

from fwdmilter import tcp


@pytest.mark.parametrize(
    ("spec", "is_tcp", "port"),
    [
        ("inet:10025@127.0.0.1", True, 10025),
        ("inet6:10025@[::1]", True, 10025),
        ("inet:10025", True, 10025),
        ("unix:/run/fwdmilter/milter.sock", False, None),
        ("local:/run/fwdmilter/milter.sock", False, None),
    ],
)
def test_socket_specs(spec: str, is_tcp: bool, port: int | None) -> None:
    assert tcp.is_tcp(spec) is is_tcp
    assert tcp.wants_data_reply(spec) is is_tcp
    assert tcp.listen_port(spec) == port


def _accepted_nodelay(listener: socket.socket) -> int:
    with socket.create_connection(listener.getsockname()[:2], timeout=5):
        conn, _ = listener.accept()
        with conn:
            return conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_nodelay_set_on_the_listener_reaches_accepted_sockets(family: int) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        try:
            listener.bind((host, 0))
        except OSError:
            pytest.skip(f"no {host} here")
        listener.listen()
        port = listener.getsockname()[1]
        assert _accepted_nodelay(listener) == 0  # the kernel's default: Nagle on
        assert tcp.set_nodelay_on_listener(port) == 1
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert _accepted_nodelay(listener) != 0


def test_other_sockets_are_left_alone() -> None:
    with (
        socket.socket() as listener,
        socket.socket() as other,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        other.bind(("127.0.0.1", 0))
        other.listen()
        udp.bind(("127.0.0.1", listener.getsockname()[1]))
        assert tcp.set_nodelay_on_listener(listener.getsockname()[1]) == 1
        assert not other.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
