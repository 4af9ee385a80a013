"""sd_notify against a real unix datagram socket that the test binds, as systemd would."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwdmilter import sdnotify
from fwdmilter.sdnotify import notify


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound to a file, named in $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    assert len(os.fsencode(path)) < 108, "sun_path holds 108 bytes"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in the abstract namespace, named as @name in $NOTIFY_SOCKET."""
    name = f"fwdmilter-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


def received(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_without_notify_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify(READY=1) is False


def test_a_string_is_sent_as_it_is(path_socket: socket.socket) -> None:
    assert notify("READY=1") is True
    assert received(path_socket) == b"READY=1"


def test_fields_are_key_value_lines_in_order(path_socket: socket.socket) -> None:
    assert notify(READY=1, STATUS="listening on unix:/run/fwdmilter/milter.sock") is True
    assert received(path_socket) == b"READY=1\nSTATUS=listening on unix:/run/fwdmilter/milter.sock"


def test_a_string_and_fields_together(path_socket: socket.socket) -> None:
    assert notify("RELOADING=1", STATUS="reloading") is True
    assert received(path_socket) == b"RELOADING=1\nSTATUS=reloading"


def test_each_call_is_one_datagram(path_socket: socket.socket) -> None:
    assert notify("RELOADING=1")
    assert notify("READY=1")
    assert notify(STOPPING=1)
    assert [received(path_socket) for _ in range(3)] == [b"RELOADING=1", b"READY=1", b"STOPPING=1"]


def test_newlines_in_a_value_cannot_forge_an_assignment(path_socket: socket.socket) -> None:
    assert notify(STATUS="store down\nREADY=1")
    assert received(path_socket) == b"STATUS=store down READY=1"


def test_utf8(path_socket: socket.socket) -> None:
    assert notify(STATUS="prêt")
    assert received(path_socket) == "STATUS=prêt".encode()


def test_abstract_namespace(abstract_socket: socket.socket) -> None:
    assert notify(READY=1, STATUS="ready") is True
    assert received(abstract_socket) == b"READY=1\nSTATUS=ready"


def test_missing_socket_file_is_false_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.DEBUG, logger="fwdmilter.sdnotify"):
        assert notify("READY=1") is False
    assert "sd_notify not sent" in caplog.text


def test_closed_socket_is_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "closed"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    assert path.exists()  # the file stays; nobody reads it any more
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify("STOPPING=1") is False


def test_abstract_name_nobody_bound_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@fwdmilter-test-nobody-{os.urandom(8).hex()}")
    assert notify("READY=1") is False


def test_a_stream_socket_is_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stream"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1") is False


def test_a_full_socket_gives_up_after_the_timeout(
    path_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdnotify, "NOTIFY_TIMEOUT", 0.05)
    # Nobody reads: the receiver's queue fills (net.unix.max_dgram_qlen datagrams).
    sent = 0
    while notify(STATUS="x" * 1000):
        sent += 1
        assert sent < 100_000, "the queue never filled"
    assert sent > 0
    assert received(path_socket) == b"STATUS=" + b"x" * 1000


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_unsupported_addresses_are_false(
    value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    with caplog.at_level(logging.DEBUG, logger="fwdmilter.sdnotify"):
        assert notify("READY=1") is False
    assert "unsupported address" in caplog.text


def test_nothing_to_send_is_a_programming_error(path_socket: socket.socket) -> None:
    with pytest.raises(ValueError, match="needs a state"):
        notify()
