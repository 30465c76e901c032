"""The exchange deadline (trustd.net.http_deadline) reaches the connection's set-up, for the
Notary transport and the registry transport alike: the TLS handshake, and the CONNECT answer of
an HTTP proxy tunnelling to an HTTPS server.

A raw socket server on 127.0.0.1 reads what the client sends first (a ClientHello, or a CONNECT
request), then trickles its answer a byte at a time: every read gets a byte well within any
per-read timeout, so only a deadline on the whole exchange ends it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from trustd.errors import NotaryUnavailable
from trustd.formats.notary.transport import NotaryEndpoint, NotaryTransport
from trustd.registry.client import RegistryClient
from trustd.registry.errors import RegistryTimeout
from trustd.registry.hosts import RegistryEndpoint

STEP = 0.2  # seconds between trickled bytes: far under any per-read timeout used here
# Both far longer than any bound below at one byte per STEP: a handshake record of 16 KiB, and
# a proxy's answer whose header line never ends.
HANDSHAKE = b"\x16\x03\x03\x40\x00" + bytes(16 * 1024)
CONNECT_ANSWER = b"HTTP/1.1 200 Connection established\r\nX-Padding: " + b"a" * 16 * 1024
# Generous: the bounds under test are 1 s; a busy machine may take several times that.
WITHIN = 15.0


class Trickler:
    """Reads the first bytes of every connection, then trickles ``answer``."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.stopping = threading.Event()
        self.greetings = 0
        threading.Thread(target=self._accept, daemon=True).start()

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
            connection.settimeout(5.0)
            if not connection.recv(4096):
                return
            self.greetings += 1
            for byte in self._answer:
                if self.stopping.wait(STEP):
                    return
                connection.sendall(bytes([byte]))
        except OSError:
            return  # the client hung up, as it should
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self._listener.close()


@pytest.fixture
def server() -> Iterator[Trickler]:
    server = Trickler(HANDSHAKE)
    yield server
    server.stop()


@pytest.fixture
def proxy() -> Iterator[Trickler]:
    server = Trickler(CONNECT_ANSWER)
    yield server
    server.stop()


def test_a_trickled_handshake_ends_a_notary_download_at_its_timeout(
    server: Trickler,
) -> None:
    url = f"https://127.0.0.1:{server.port}"
    notary = NotaryTransport(NotaryEndpoint(url=url, timeout=1.0, retries=2))
    started = time.monotonic()
    with pytest.raises(NotaryUnavailable, match=r"did not deliver timestamp\.json"):
        notary.fetch("127.0.0.1:5000/library/hello", "timestamp", 1000)
    assert time.monotonic() - started < WITHIN
    assert server.greetings == 1  # no time was left for a retry
    notary.close()


def test_a_trickled_handshake_ends_a_registry_exchange_at_its_timeout(
    server: Trickler,
) -> None:
    host = f"127.0.0.1:{server.port}"
    endpoint = RegistryEndpoint(host, f"https://{host}/v2")
    started = time.monotonic()
    with (
        RegistryClient(endpoint, timeout=1.0) as registry,
        pytest.raises(RegistryTimeout, match="did not answer in time"),
    ):
        registry.resolve("team/app", "v1")
    assert time.monotonic() - started < WITHIN
    assert server.greetings == 1


def test_a_trickling_proxy_ends_a_notary_download_at_its_timeout(
    proxy: Trickler, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    notary = NotaryTransport(NotaryEndpoint(url="https://notary.invalid", timeout=1.0, retries=2))
    started = time.monotonic()
    with pytest.raises(NotaryUnavailable, match=r"did not deliver timestamp\.json"):
        notary.fetch("notary.invalid/library/hello", "timestamp", 1000)
    assert time.monotonic() - started < WITHIN
    assert proxy.greetings == 1
    notary.close()


def test_a_trickling_proxy_ends_a_registry_exchange_at_its_timeout(proxy: Trickler) -> None:
    endpoint = RegistryEndpoint(
        "registry.invalid", "https://registry.invalid/v2", proxy=f"http://127.0.0.1:{proxy.port}"
    )
    started = time.monotonic()
    with (
        RegistryClient(endpoint, timeout=1.0) as registry,
        pytest.raises(RegistryTimeout, match="did not answer in time"),
    ):
        registry.resolve("team/app", "v1")
    assert time.monotonic() - started < WITHIN
    assert proxy.greetings == 1
