"""kubelet's pull credentials and a hostile Notary that names the token realm, on the real daemon.

The Notary answers every request with a Bearer challenge. For one repository it names a
plain-HTTP realm, for another an HTTPS one; both realm servers record what they receive. Over
HTTP nothing may arrive and the pull is refused naming the realm's host; over HTTPS the
credentials arrive (so the recorder is shown to record) and the daemon's log names the host
that received them.
"""

from __future__ import annotations

import base64
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri_shim.crictl import ImageClient
from tests.e2e.test_daemon import FakeServiceManager, serving
from tests.stack import Stack, TestPKI
from tests.stack.trustd_config import trustd_config_text

USER, PASSWORD = "kubelet-user", "pull-secret-Pa55word"


class HTTPServer:
    """A test HTTP(S) server on 127.0.0.1; ``seen`` records (request line, Authorization)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None):
        self.seen: list[tuple[str, str | None]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        if context is not None:
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = int(self._httpd.server_address[1])
        self.scheme = "https" if context is not None else "http"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def owner(self) -> HTTPServer:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RealmHandler(_Quiet):
    def do_GET(self) -> None:
        self.owner.seen.append((self.requestline, self.headers.get("Authorization")))
        self.reply(200, b'{"token": "issued-by-the-realm", "expires_in": 300}')

    do_POST = do_GET


def tls_context(pki: TestPKI, name: str) -> ssl.SSLContext:
    cert, key = pki.issue_server_cert(name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture(scope="module")
def realms(pki: TestPKI) -> Iterator[tuple[HTTPServer, HTTPServer]]:
    plain = HTTPServer(RealmHandler, None)
    secure = HTTPServer(RealmHandler, tls_context(pki, "token-realm-secure"))
    yield plain, secure
    plain.stop()
    secure.stop()


@pytest.fixture(scope="module")
def hostile_notary(pki: TestPKI, realms: tuple[HTTPServer, HTTPServer]) -> Iterator[HTTPServer]:
    plain, secure = realms

    class Challenger(_Quiet):
        """Refuses everything with a Bearer challenge; ``plain`` in the GUN: the HTTP realm."""

        def do_GET(self) -> None:
            self.owner.seen.append((self.requestline, self.headers.get("Authorization")))
            realm = plain if "/plain/" in self.path else secure
            challenge = f'Bearer realm="{realm.origin}/token",service="hostile-notary"'
            self.reply(401, b"", {"WWW-Authenticate": challenge})

    notary = HTTPServer(Challenger, tls_context(pki, "hostile-notary"))
    yield notary
    notary.stop()


@pytest.fixture
def daemon_log(
    stack: Stack, pki: TestPKI, hostile_notary: HTTPServer, tmp_path: Path
) -> Iterator[tuple[ImageClient, Path]]:
    config = tmp_path / "trustd.toml"
    config.write_text(
        trustd_config_text(
            state_dir=tmp_path / "state",
            notary=[(stack.registry.host, hostile_notary.origin, pki.ca_cert)],
            containerd_endpoint=stack.containerd.endpoint,
            socket=tmp_path / "cri.sock",
            audit_file=tmp_path / "audit.log",
            notary_extra="timeout = 5\nretries = 0\n",
        )
    )
    manager = FakeServiceManager(tmp_path / "notify.sock")
    log = tmp_path / "trustd.log"
    client = ImageClient(f"unix://{tmp_path / 'cri.sock'}", timeout=60)
    try:
        with serving(config, log, manager):
            yield client, log
    finally:
        client.close()
        manager.close()


def test_a_plain_http_token_realm_gets_no_credentials(
    stack: Stack,
    realms: tuple[HTTPServer, HTTPServer],
    hostile_notary: HTTPServer,
    daemon_log: tuple[ImageClient, Path],
) -> None:
    plain, secure = realms
    client, log = daemon_log
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    # HTTPS realm first: the credentials reach it, and the log says where they went.
    image = f"{stack.registry.host}/realm/secure/app:1"
    outcome = _pull(client, image)
    assert outcome.startswith("UNKNOWN: RegistryUnavailable: "), outcome
    assert secure.seen and secure.seen[-1][1] == basic
    gun = f"{stack.registry.host}/realm/secure/app"
    assert (
        f"sending the password of user '{USER}' for {gun} to the token service at "
        f"{secure.origin} (named by notary at {hostile_notary.origin})"
    ) in log.read_text()

    # Plain HTTP realm: nothing is sent to it at all, and the pull is refused saying why.
    plain_gun = f"{stack.registry.host}/realm/plain/app"
    outcome = _pull(client, f"{plain_gun}:1")
    assert outcome.startswith("UNKNOWN: RegistryUnavailable: "), outcome
    assert (
        f"refusing to send the pull's credentials for {plain_gun} to the token service at "
        f"{plain.origin}: notary at {hostile_notary.origin} names a plain-HTTP token realm"
    ) in outcome
    assert plain.seen == []
    assert any("/realm/plain/app/" in line for line, _ in hostile_notary.seen)
    text = log.read_text()
    assert f"to the token service at {plain.origin} (named by" not in text
    assert PASSWORD not in text + outcome


def _pull(client: ImageClient, image: str) -> str:
    try:
        client.pull(image, username=USER, password=PASSWORD)
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    return "OK"
