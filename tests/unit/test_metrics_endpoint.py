"""The metrics endpoint's HTTP server: bounded connections, deadlines, a unix socket option.

Against the real daemon (300 idle connections, its thread count):
tests/e2e/test_metrics_endpoint.py.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import stat
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustd.config.load import load_config
from trustd.errors import ConfigError
from trustd.service.metrics import Metrics, unix_listen_path
from trustd.service.metrics_server import MAX_REQUEST_BYTES, MetricsServer

WAIT = 30.0  # the longest any poll below waits for the server


@pytest.fixture
def metrics() -> Metrics:
    return Metrics("9.9.9")


@pytest.fixture
def short_timeout(metrics: Metrics) -> Iterator[MetricsServer]:
    server = MetricsServer.tcp("127.0.0.1", 0, metrics.exposition, max_connections=4, timeout=0.5)
    yield server
    server.shutdown()


def connect(server: MetricsServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    sock.sendall(request)
    return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes:
    received = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            return bytes(received)
        received += data


def closed_by_server(sock: socket.socket, within: float = WAIT) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def status_and_headers(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


# --- HTTP --------------------------------------------------------------------------------------


def test_get_head_and_everything_else(short_timeout: MetricsServer) -> None:
    status, headers, body = status_and_headers(
        exchange(connect(short_timeout), b"GET /metrics?name[]=x HTTP/1.1\r\nHost: a\r\n\r\n")
    )
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert b'trustd_info{version="9.9.9"} 1.0' in body

    status, headers, body = status_and_headers(
        exchange(connect(short_timeout), b"HEAD /metrics HTTP/1.0\r\n\r\n")
    )
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 0

    for request, expected in (
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    ):
        assert status_and_headers(exchange(connect(short_timeout), request))[0] == expected


def test_openmetrics_and_gzip_as_asked(short_timeout: MetricsServer) -> None:
    request = (
        b"GET /metrics HTTP/1.1\r\n"
        b"Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n"
        b"Accept-Encoding: gzip\r\n\r\n"
    )
    status, headers, body = status_and_headers(exchange(connect(short_timeout), request))
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert headers["content-encoding"] == "gzip"
    text = gzip.decompress(body)
    assert text.endswith(b"# EOF\n")
    assert b"trustd_info" in text


def test_urllib_scrape(short_timeout: MetricsServer) -> None:
    url = f"http://{short_timeout.url_host}/metrics"
    with urllib.request.urlopen(url, timeout=WAIT) as answer:
        assert answer.status == 200
        assert b"trustd_info" in answer.read()


def test_an_oversized_request_is_refused(short_timeout: MetricsServer) -> None:
    sock = connect(short_timeout)
    request = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * MAX_REQUEST_BYTES
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(request)  # the server may close before the last bytes: refused all the same
    response = read_to_end(sock)
    assert status_and_headers(response)[0] == 431


# --- bounded --------------------------------------------------------------------------------------


def test_idle_connections_are_bounded_and_a_fresh_scrape_is_answered(
    short_timeout: MetricsServer,
) -> None:
    threads_before = threading.active_count()
    idle = [connect(short_timeout) for _ in range(40)]
    status, _, body = status_and_headers(
        exchange(connect(short_timeout), b"GET /metrics HTTP/1.1\r\n\r\n")
    )
    assert status == 200 and b"trustd_info" in body
    assert short_timeout.connection_count() <= short_timeout.max_connections
    assert threading.active_count() == threads_before  # no thread per connection
    # The 40 are closed: most pushed out for newer ones, the rest at their deadline.
    assert all(closed_by_server(sock) for sock in idle)
    wait_until(lambda: short_timeout.connection_count() == 0, "every connection is closed")
    for sock in idle:
        sock.close()


def test_a_client_that_trickles_its_request_is_dropped(short_timeout: MetricsServer) -> None:
    """The deadline covers the whole request: a byte now and then does not keep it open."""
    sock = connect(short_timeout)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    deadline = time.monotonic() + WAIT
    closed = False
    while not closed and time.monotonic() < deadline:
        try:
            sock.sendall(b"X: y\r\n")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        closed = closed_by_server(sock, within=0.05)
    assert closed, "a trickling client kept its connection"
    sock.close()


def test_a_client_that_never_reads_its_answer_is_dropped(metrics: Metrics) -> None:
    # Enough metrics that the answer cannot sit in the socket buffers whole.
    for number in range(20000):
        metrics.notary_errors.labels(kind=f"Kind{number:05d}" + "x" * 60).inc()
    server = MetricsServer.tcp("127.0.0.1", 0, metrics.exposition, timeout=0.5)
    try:
        sock = connect(server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        wait_until(lambda: server.connection_count() == 0, "the stalled reader is dropped")
        sock.close()
    finally:
        server.shutdown()


def test_shutdown_closes_connections_and_frees_the_port(metrics: Metrics) -> None:
    server = MetricsServer.tcp("127.0.0.1", 0, metrics.exposition)
    port = server.port
    idle = connect(server)
    wait_until(lambda: server.connection_count() == 1, "the connection is accepted")
    server.shutdown()
    assert closed_by_server(idle)
    assert not server.thread.is_alive()
    again = MetricsServer.tcp("127.0.0.1", port, metrics.exposition)
    again.shutdown()
    server.shutdown()  # harmless
    idle.close()


# --- unix socket ----------------------------------------------------------------------------------


def unix_get(path: Path) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(str(path))
    try:
        return exchange(sock, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    finally:
        sock.close()


def test_serve_on_a_unix_socket(metrics: Metrics, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    handle = metrics.serve(f"unix:{path}")
    try:
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
        assert handle.url_host == f"unix:{path}"
        status, _, body = status_and_headers(unix_get(path))
        assert status == 200 and b"trustd_info" in body
        assert sorted(os.listdir(tmp_path)) == ["metrics.sock"]  # no temporary name left
        with pytest.raises(OSError, match="in use by another process"):
            metrics.serve(f"unix:{path}")
    finally:
        handle.shutdown()
    assert not path.exists()


def test_a_stale_socket_is_replaced_and_a_file_is_not(metrics: Metrics, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    handle = metrics.serve(f"unix:{path}")
    try:
        assert status_and_headers(unix_get(path))[0] == 200
    finally:
        handle.shutdown()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="is not a socket"):
        metrics.serve(f"unix:{path}")
    assert path.read_text() == "not a socket"


@pytest.mark.parametrize("listen", ["unix:", "unix:metrics.sock", "unix:/run/trustd/"])
def test_unix_listen_needs_an_absolute_file(listen: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute file path"):
        unix_listen_path(listen)
    config = tmp_path / "trustd.toml"
    config.write_text(f'[metrics]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError, match=r"metrics\.listen: a unix socket needs an absolute"):
        load_config(config)


def test_config_takes_a_unix_listen(tmp_path: Path) -> None:
    config = tmp_path / "trustd.toml"
    config.write_text('[metrics]\nlisten = "unix:/run/trustd/metrics.sock"\n')
    loaded = load_config(config)
    assert loaded.metrics.listen == "unix:/run/trustd/metrics.sock"
    assert loaded.metrics.address is None
    assert unix_listen_path(loaded.metrics.listen) == Path("/run/trustd/metrics.sock")
