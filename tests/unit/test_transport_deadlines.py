"""A Notary download is bounded as a whole: connect, headers and body, retries included.

A raw socket server on 127.0.0.1 trickles its answers (a byte at a time, never long enough
apart for a per-read timeout) or says nothing at all; the transport must give up at its
``timeout`` or at the call's deadline, whichever is sooner, and stay usable afterwards.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.pki import TestPKI
from trustd.errors import NotaryUnavailable
from trustd.formats.notary.transport import NotaryEndpoint, NotaryTransport
from trustd.net.deadline import call_deadline

GUN = "127.0.0.1:5000/library/hello"
BODY = b'{"signed":{"_type":"Timestamp"},"signatures":[]}'
# Far longer than any bound below: a test that waits for it has failed.
TRICKLE_SECONDS = 120.0
STEP = 0.2  # seconds between trickled bytes: far under any per-read timeout used here
# Generous: the bounds under test are 1 s and 0.5 s; a busy machine may take several times that.
WITHIN = 15.0


class RawServer:
    """Answers by the file name asked for: ``ok``, ``trickle-body``, ``trickle-closing`` (the
    same, ending the connection with the answer, as an HTTP/1.0 server does), ``trickle-unsized``
    (no Content-Length: the body ends where the connection does),
    ``trickle-headers``, or ``silent`` (reads the request, then waits). Otherwise keeps
    connections alive as HTTP/1.1 does."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._context = context
        self.port = self._listener.getsockname()[1]
        self.stopping = threading.Event()
        self.requests: list[str] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            if self._context is not None:
                connection = self._context.wrap_socket(connection, server_side=True)
            connection.settimeout(TRICKLE_SECONDS)
            buffered = b""
            while not self.stopping.is_set():
                while b"\r\n\r\n" not in buffered:
                    data = connection.recv(4096)
                    if not data:
                        return
                    buffered += data
                request, _, buffered = buffered.partition(b"\r\n\r\n")
                path = request.split(b" ")[1].decode()
                name = path.rsplit("/", 1)[-1].removesuffix(".json")
                self.requests.append(name)
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
                if name == "ok":
                    connection.sendall(head + BODY)
                elif name == "trickle-body":
                    connection.sendall(head)
                    self._trickle(connection, BODY)
                elif name == "trickle-unsized":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    self._trickle(connection, BODY)
                    return
                elif name == "trickle-closing":
                    connection.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                    self._trickle(connection, BODY)
                    return
                elif name == "trickle-headers":
                    self._trickle(connection, head + BODY)
                else:
                    self.stopping.wait(TRICKLE_SECONDS)
                    return
        except OSError:
            return  # the client hung up, as it should
        finally:
            connection.close()

    def _trickle(self, connection: socket.socket, data: bytes) -> None:
        for index in range(len(data)):
            if self.stopping.wait(STEP):
                return
            connection.sendall(data[index : index + 1])

    def stop(self) -> None:
        self.stopping.set()
        self._listener.close()


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.stop()


def transport(url: str, timeout: float, **kwargs: object) -> NotaryTransport:
    endpoint = NotaryEndpoint(url=url, timeout=timeout, retries=2, **kwargs)  # type: ignore[arg-type]
    return NotaryTransport(endpoint)


def timed_failure(client: NotaryTransport, name: str) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(NotaryUnavailable) as caught:
        client.fetch(GUN, name, 1000)
    return str(caught.value), time.monotonic() - started


@pytest.mark.parametrize(
    "name", ["trickle-body", "trickle-closing", "trickle-unsized", "trickle-headers", "silent"]
)
def test_a_download_is_cut_off_at_the_notary_timeout(raw_server: RawServer, name: str) -> None:
    url = f"http://127.0.0.1:{raw_server.port}"
    client = transport(url, timeout=1.0)
    message, seconds = timed_failure(client, name)
    assert message == (
        f"notary at {url} did not deliver {name}.json of {GUN} within 1s (the [[notary]] timeout)"
    )
    assert seconds < WITHIN
    assert raw_server.requests == [name]  # no time was left for a retry
    # The transport is not left broken: the next download on it works.
    assert client.fetch(GUN, "ok", 1000) == BODY


def test_the_call_deadline_cuts_a_download_off_before_the_notary_timeout(
    raw_server: RawServer,
) -> None:
    url = f"http://127.0.0.1:{raw_server.port}"
    client = transport(url, timeout=300.0)
    with call_deadline(0.5):
        message, seconds = timed_failure(client, "trickle-body")
    assert message.startswith(f"notary at {url} did not deliver trickle-body.json of {GUN} within")
    assert message.endswith("s (all this call had left)")
    assert seconds < WITHIN


def test_a_trickle_over_tls_is_cut_off_too(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    cert, key = pki.issue_server_cert("notary")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = RawServer(context)
    try:
        url = f"https://127.0.0.1:{server.port}"
        client = transport(url, timeout=1.0, ca_file=pki.ca_cert)
        assert client.fetch(GUN, "ok", 1000) == BODY
        for name in ("trickle-body", "trickle-closing"):
            message, seconds = timed_failure(client, name)
            assert f"did not deliver {name}.json" in message
            assert seconds < WITHIN
            assert client.fetch(GUN, "ok", 1000) == BODY
    finally:
        server.stop()


def test_a_trickling_download_does_not_hold_up_the_others(raw_server: RawServer) -> None:
    url = f"http://127.0.0.1:{raw_server.port}"
    client = transport(url, timeout=1.0)
    outcome: list[str] = []
    stalled = threading.Thread(target=lambda: outcome.append(timed_failure(client, "silent")[0]))
    stalled.start()
    deadline = time.monotonic() + WITHIN
    while "silent" not in raw_server.requests:
        assert time.monotonic() < deadline, "the stalled download never reached the server"
        time.sleep(0.01)
    # Meanwhile, on the same transport: answered, and never cut off by the other's deadline.
    for _ in range(20):
        assert client.fetch(GUN, "ok", 1000) == BODY
    stalled.join(WITHIN)
    assert not stalled.is_alive()
    assert "did not deliver silent.json" in outcome[0]
