from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustd.service import sdnotify
from trustd.service.sdnotify import SystemdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_reaches_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready() is True
    assert _received(sock) == ["READY=1"]


def test_abstract_socket_name_is_used() -> None:
    name = f"trustd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.stopping() is True
        assert _received(sock) == ["STOPPING=1"]


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    SystemdNotifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = _received(sock)
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_and_watchdog(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    notifier.status("serving;\n3 allowed")
    assert _received(sock) == ["STATUS=serving; 3 allowed"]
    notifier.watchdog()
    assert _received(sock) == ["WATCHDOG=1"]


def test_everything_is_a_no_op_without_notify_socket() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval() is None


def test_reads_the_process_environment_once(
    monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = SystemdNotifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notifier.ready() is True
    assert _received(sock) == ["READY=1"]


def test_send_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.WARNING, logger="trustd.service.sdnotify"):
        assert notifier.ready() is False
    assert "cannot notify systemd (READY=1)" in caplog.text


def test_unsupported_address_disables_notifications(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trustd.service.sdnotify"):
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "not a unix socket address" in caplog.text


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert SystemdNotifier(environ).watchdog_interval() == expected


def test_a_service_manager_that_stops_reading_does_not_block_trustd(
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[socket.socket, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nobody reads ``listener``: once its queue (net.unix.max_dgram_qlen) is full, a blocking
    # send would wait for ever; the notifier gives up after SEND_TIMEOUT and says so.
    _, path = listener
    monkeypatch.setattr(sdnotify, "SEND_TIMEOUT", 0.05)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    deadline = time.monotonic() + 30
    with caplog.at_level(logging.WARNING, logger="trustd.service.sdnotify"):
        while notifier.watchdog():
            assert time.monotonic() < deadline, "the queue never filled up"
    assert "cannot notify systemd (WATCHDOG=1)" in caplog.text
