"""Docker token auth in front of a real notary-server, with a tiny token service of our own.

notary-server runs with ``auth: {type: token}``; the token service checks HTTP basic auth against
one fixed user and issues ES256 JWTs (certificate in the ``x5c`` header, that certificate in
notary-server's ``rootcertbundle``) granting the scope asked for.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.attacks.harness import trustctl, write_config
from tests.stack import NotaryPublisher, NotaryServer, PushedImage, Registry, TestPKI, free_port

USER, PASSWORD = "reader", "s3cret-Pa55word"
SERVICE, ISSUER = "trustd-test-notary", "trustd-test-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """HTTPS ``GET /token`` issuing JWTs for a fixed user."""

    def __init__(self, pki: TestPKI) -> None:
        self.port = free_port()
        cert, key = pki.issue_server_cert(f"token-service-{self.port}")
        self.signer_cert, signer_key = pki.self_signed_cert("token-signer")
        self._key = serialization.load_pem_private_key(signer_key.read_bytes(), None)
        der = x509.load_pem_x509_certificate(self.signer_cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        self._x5c = base64.b64encode(der).decode()
        self.refused = 0
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def token(self, scope: str, subject: str) -> str:
        kind, rest = scope.split(":", 1)
        name, actions = rest.rsplit(":", 1)
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 300,
            "jti": _b64url(str(time.monotonic_ns()).encode()),
            "access": [{"type": kind, "name": name, "actions": actions.split(",")}],
        }
        header = {"alg": "ES256", "typ": "JWT", "x5c": [self._x5c]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        assert isinstance(self._key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    service.refused += 1
                    self._send(401, {"details": "incorrect username or password"})
                    return
                scope = query.get("scope", [""])[0]
                self._send(200, {"token": service.token(scope, USER), "expires_in": 300})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def token_service(pki: TestPKI) -> Iterator[TokenService]:
    service = TokenService(pki)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def auth_notary(
    tmp_path_factory: pytest.TempPathFactory, pki: TestPKI, token_service: TokenService
) -> Iterator[NotaryServer]:
    auth = {
        "type": "token",
        "options": {
            "realm": token_service.realm,
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(token_service.signer_cert.resolve()),
        },
    }
    server = NotaryServer.start(tmp_path_factory.mktemp("auth-notary"), pki, auth=auth)
    yield server
    server.stop()


def test_token_auth(
    tmp_path: Path,
    push_image: Callable[..., PushedImage],
    registry: Registry,
    auth_notary: NotaryServer,
    token_service: TokenService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = push_image("auth/app", "v1")
    gun = image.repository
    # The real CLI publishes through the token service too; it reads basic auth from NOTARY_AUTH.
    monkeypatch.setenv("NOTARY_AUTH", base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    notary = NotaryPublisher(auth_notary, tmp_path / "auth-trust")
    notary.init(gun)
    notary.add(gun, "v1", image.manifest, publish=True)
    unauthenticated = requests.get(
        f"{auth_notary.url}/v2/{gun}/_trust/tuf/root.json", verify=str(auth_notary.ca_file)
    )
    assert unauthenticated.status_code == 401
    assert "Bearer" in unauthenticated.headers["WWW-Authenticate"]

    def run(password: str | None) -> tuple[int, str, str]:
        directory = tmp_path / f"password-{password}"
        extra = ""
        if password is not None:
            directory.mkdir()
            (directory / "password").write_text(password + "\n")
            extra = f'username = "{USER}"\npassword_file = "{directory / "password"}"\n'
        config = write_config(
            directory, registry.host, auth_notary.url, auth_notary.ca_file, notary_extra=extra
        )
        result = trustctl("verify", image.tagged, "--json", "-c", str(config))
        return result.status, result.stdout, result.stderr

    status, out, err = run(PASSWORD)
    assert status == 0, err
    # notary lookup asks for tokens anonymously when it only reads, which this service refuses;
    # so the answer is checked against the targets.json the server serves for a valid token.
    served = requests.get(
        f"{auth_notary.url}/v2/{gun}/_trust/tuf/targets.json",
        headers={"Authorization": f"Bearer {token_service.token(f'repository:{gun}:pull', USER)}"},
        verify=str(auth_notary.ca_file),
        timeout=10,
    )
    assert served.status_code == 200, served.text
    published = served.json()["signed"]["targets"]["v1"]
    signed_digest = "sha256:" + base64.b64decode(published["hashes"]["sha256"]).hex()
    assert (json.loads(out)["digest"], json.loads(out)["size"]) == (
        signed_digest,
        published["length"],
    )
    assert signed_digest == image.digest

    refused_before = token_service.refused
    status, out, err = run("wrong-password")
    assert status == 3  # AuthenticationFailed is a NotaryUnavailable
    assert err.startswith(f"trustctl: token service {token_service.realm} refused user '{USER}'")
    assert token_service.refused == refused_before + 1
    assert "wrong-password" not in err + out and PASSWORD not in err + out

    status, out, err = run(None)
    assert status == 3
    assert "refused anonymous access" in err
    assert PASSWORD not in err + out
