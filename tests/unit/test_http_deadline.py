"""The exchange deadline (trustd.net.http_deadline) reaches the connection's set-up, for the
Notary transport and the registry transport alike: the TLS handshake, and the CONNECT answer of
an HTTP proxy tunnelling to an HTTPS server.

A raw socket server on 127.0.0.1 reads what the client sends first (a ClientHello, or a CONNECT
request), then trickles its answer a byte at a time: every read gets a byte well within any
per-read timeout, so only a deadline on the whole exchange ends it (for the proxy's answer, only
the watcher that shuts the socket down: no per-read bound covers it).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.unit.test_transport_deadlines import RawServer
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


class Trickler(RawServer):
    """Reads the first bytes of every connection, then trickles ``answer``."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self.greetings = 0
        super().__init__()

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


@dataclass
class SetUp:
    """A server whose connection set-up trickles: ``host`` to ask, through ``proxy`` if any."""

    server: Trickler
    host: str
    proxy: str | None


@pytest.fixture(params=["handshake", "proxy"])
def set_up(request: pytest.FixtureRequest) -> Iterator[SetUp]:
    if request.param == "handshake":
        server = Trickler(HANDSHAKE)
        trickling = SetUp(server, f"127.0.0.1:{server.port}", None)
    else:
        server = Trickler(CONNECT_ANSWER)
        trickling = SetUp(server, "trustd.invalid", f"http://127.0.0.1:{server.port}")
    yield trickling
    server.stop()


def test_a_trickled_set_up_ends_a_notary_download_at_its_timeout(
    set_up: SetUp, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    if set_up.proxy is not None:
        monkeypatch.setenv("HTTPS_PROXY", set_up.proxy)
    endpoint = NotaryEndpoint(url=f"https://{set_up.host}", timeout=1.0, retries=2)
    notary = NotaryTransport(endpoint)
    started = time.monotonic()
    with pytest.raises(NotaryUnavailable, match=r"did not deliver timestamp\.json"):
        notary.fetch(f"{set_up.host}/library/hello", "timestamp", 1000)
    assert time.monotonic() - started < WITHIN
    assert set_up.server.greetings == 1  # no time was left for a retry
    notary.close()


def test_a_trickled_set_up_ends_a_registry_exchange_at_its_timeout(set_up: SetUp) -> None:
    endpoint = RegistryEndpoint(set_up.host, f"https://{set_up.host}/v2", proxy=set_up.proxy)
    started = time.monotonic()
    with (
        RegistryClient(endpoint, timeout=1.0) as registry,
        pytest.raises(RegistryTimeout, match="did not answer in time"),
    ):
        registry.resolve("team/app", "v1")
    assert time.monotonic() - started < WITHIN
    assert set_up.server.greetings == 1
