"""The real daemon's metrics endpoint under 300 idle connections, as any local user can open.

Failing case before the endpoint was bounded: the daemon grew to 315 threads, one per connection,
and none of them ever timed out.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import requests

from tests.e2e.test_daemon import RunningDaemon, daemon  # noqa: F401  (the fixture)
from tests.unit.test_metrics_endpoint import closed_by_server
from trustd.service.metrics_server import TIMEOUT

IDLE_CONNECTIONS = 300
MAX_THREADS = 40


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line in /proc/{pid}/status")


def open_connections(pid: int) -> int:
    """Sockets the daemon holds open (its listeners, containerd, and connections)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if fd.readlink().name.startswith("socket:"):
                count += 1
        except FileNotFoundError:  # closed while we looked
            continue
    return count


def scrape(port: int) -> str:
    answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert answer.status_code == 200
    return answer.text


def test_idle_connections_neither_grow_the_daemon_nor_block_a_scrape(
    daemon: RunningDaemon,  # noqa: F811
) -> None:
    pid = daemon.process.pid
    assert "trustd_info" in scrape(daemon.metrics_port)
    threads_before = thread_count(pid)
    sockets_before = open_connections(pid)

    idle = [
        socket.create_connection(("127.0.0.1", daemon.metrics_port), timeout=30)
        for _ in range(IDLE_CONNECTIONS)
    ]
    try:
        # Answered after every idle connection was accepted (one listener, in order).
        assert "trustd_info" in scrape(daemon.metrics_port)
        threads = thread_count(pid)
        print(f"threads: {threads_before} before, {threads} with {IDLE_CONNECTIONS} idle clients")
        assert threads <= MAX_THREADS, f"{threads} threads with {IDLE_CONNECTIONS} idle clients"
        assert open_connections(pid) <= sockets_before + 16 + 8

        # Every idle connection is closed by the daemon: pushed out for newer ones, or at the
        # end of its read timeout.
        deadline = time.monotonic() + TIMEOUT + 60
        still_open = [
            sock
            for sock in idle
            if not closed_by_server(sock, max(deadline - time.monotonic(), 0.01))
        ]
        assert not still_open, f"{len(still_open)} idle connections still open"
        assert "trustd_info" in scrape(daemon.metrics_port)
        assert daemon.process.poll() is None
    finally:
        for sock in idle:
            sock.close()
