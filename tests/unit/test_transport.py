"""The Notary transport's HTTP behaviour: caps, status codes, challenges, environment.

A plain HTTP server on 127.0.0.1 answers with fixed bytes and statuses; what it serves is not
Notary metadata and nothing here verifies any (tests/e2e and tests/attacks run the real server).
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.stack.pki import TestPKI
from trustd.errors import AuthenticationFailed, MetadataTooLarge, NotaryUnavailable
from trustd.formats.notary.transport import (
    NotaryEndpoint,
    NotaryTransport,
    NotFound,
    _Token,
    parse_bearer_challenge,
)
from trustd.net.credentials import Credentials
from trustd.net.deadline import call_deadline

GUN = "127.0.0.1:5000/library/hello"


class Answers(BaseHTTPRequestHandler):
    """GET /v2/<gun>/_trust/tuf/<name>.json -> what the ``routes`` table says for <name>."""

    routes: ClassVar[dict[str, tuple[int, bytes, dict[str, str]]]] = {}
    # Per name, statuses to answer (with an empty body) before the route, one per request.
    failures: ClassVar[dict[str, list[int]]] = {}
    requests: ClassVar[list[str]] = []
    headers_seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1].removesuffix(".json")
        self.requests.append(name)
        self.headers_seen.append(dict(self.headers))
        pending = self.failures.get(name)
        if pending:
            status, body, headers = pending.pop(0), b"", {"Content-Length": "0"}
        else:
            status, body, headers = self.routes.get(name, (404, b"", {}))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Connection", "close")  # stream without a declared length
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def transport(url: str, **kwargs: object) -> NotaryTransport:
    return NotaryTransport(NotaryEndpoint(url=url, timeout=5, **kwargs))  # type: ignore[arg-type]


def test_fetch_returns_the_bytes_and_reports_404_as_not_found(server: str) -> None:
    Answers.routes = {"timestamp": (200, b'{"signed":{}}', {"Content-Length": "13"})}
    client = transport(server)
    assert client.fetch(GUN, "timestamp", 100) == b'{"signed":{}}'
    with pytest.raises(NotFound):
        client.fetch(GUN, "snapshot", 100)


def test_each_get_is_sent_whole_and_no_cookie_is_kept(server: str) -> None:
    """Metadata GETs are prepared once per URL and copied: every copy carries trustd's headers,
    a token only where one was obtained, and never a cookie a server set."""
    Answers.routes = {
        "timestamp": (200, b"{}", {"Content-Length": "2", "Set-Cookie": "sticky=node-3; Path=/"})
    }
    Answers.headers_seen = []
    client = transport(server)
    for _ in range(3):
        assert client.fetch(GUN, "timestamp", 100) == b"{}"
    client._tokens[(GUN, "")] = _Token("issued", time.monotonic() + 60)
    assert client.fetch(GUN, "timestamp", 100) == b"{}"
    assert client.fetch("127.0.0.1:5000/library/other", "timestamp", 100) == b"{}"
    client._tokens.clear()
    assert client.fetch(GUN, "timestamp", 100) == b"{}"
    seen = Answers.headers_seen
    assert len(seen) == 6
    assert all(headers["User-Agent"].startswith("trustd") for headers in seen)
    assert not any("Cookie" in headers for headers in seen)
    assert [headers.get("Authorization") for headers in seen] == [None] * 3 + [
        "Bearer issued",
        None,  # the token belongs to its GUN
        None,  # and was never written into the prepared GET the copies come from
    ]


def test_declared_and_streamed_sizes_are_both_capped(server: str) -> None:
    Answers.routes = {
        "declared": (200, b"x" * 5000, {"Content-Length": "5000"}),
        "streamed": (200, b"y" * 300_000, {}),
    }
    client = transport(server)
    with pytest.raises(MetadataTooLarge, match=r"declared\.json for .* is 5000 bytes"):
        client.fetch(GUN, "declared", 4096)
    with pytest.raises(MetadataTooLarge, match="exceeds the 65536-byte limit"):
        client.fetch(GUN, "streamed", 65536)


def test_transient_failures_are_retried_then_reported(server: str) -> None:
    Answers.routes = {"timestamp": (200, b"{}", {"Content-Length": "2"})}
    Answers.failures = {"timestamp": [503, 502]}
    Answers.requests = []
    assert transport(server, retries=2).fetch(GUN, "timestamp", 100) == b"{}"
    assert Answers.requests == ["timestamp"] * 3

    Answers.failures = {"timestamp": [504, 504, 504]}
    Answers.requests = []
    with pytest.raises(NotaryUnavailable, match="answered HTTP 504"):
        transport(server, retries=2).fetch(GUN, "timestamp", 100)
    assert Answers.requests == ["timestamp"] * 3

    Answers.failures = {"timestamp": [500]}  # not transient: reported at once
    Answers.requests = []
    with pytest.raises(NotaryUnavailable, match="answered HTTP 500"):
        transport(server, retries=2).fetch(GUN, "timestamp", 100)
    assert Answers.requests == ["timestamp"]
    Answers.failures = {}


def test_retries_stop_at_the_call_deadline(server: str) -> None:
    Answers.routes = {"timestamp": (200, b"{}", {"Content-Length": "2"})}
    Answers.failures = {"timestamp": [503] * 5}
    Answers.requests = []
    with call_deadline(0.05), pytest.raises(NotaryUnavailable, match="HTTP 503"):
        transport(server, retries=5).fetch(GUN, "timestamp", 100)
    assert Answers.requests == ["timestamp"]  # the first backoff would pass the deadline
    Answers.failures = {}


def test_server_errors_and_refusals(server: str) -> None:
    Answers.routes = {
        "timestamp": (503, b"", {"Content-Length": "0"}),
        "root": (403, b"", {"Content-Length": "0"}),
    }
    client = transport(server)
    with pytest.raises(NotaryUnavailable, match=r"answered HTTP 503 for timestamp\.json"):
        client.fetch(GUN, "timestamp", 100)
    with pytest.raises(AuthenticationFailed, match="denied access"):
        client.fetch(GUN, "root", 100)


def test_unreachable_server_names_the_repository() -> None:
    client = transport("https://127.0.0.1:9", retries=1)
    with pytest.raises(
        NotaryUnavailable, match=re.escape(f"cannot reach notary at https://127.0.0.1:9 for {GUN}")
    ):
        client.fetch(GUN, "timestamp", 100)


def test_a_401_without_a_bearer_challenge_is_an_authentication_failure(server: str) -> None:
    Answers.routes = {"timestamp": (401, b"", {"Content-Length": "0"})}
    with pytest.raises(AuthenticationFailed, match="did not offer Docker token auth"):
        transport(server).fetch(GUN, "timestamp", 100, Credentials("alice", "s3cret"))


def test_bearer_challenge_parsing() -> None:
    header = (
        'Bearer realm="https://auth.example.com/token",service="notary",scope="repository:a/b:pull"'
    )
    assert parse_bearer_challenge(header) == {
        "realm": "https://auth.example.com/token",
        "service": "notary",
        "scope": "repository:a/b:pull",
    }
    assert parse_bearer_challenge('Basic realm="x"') is None


def test_credentials_never_show_their_secrets() -> None:
    shown = repr(Credentials("alice", "s3cret", identity_token="tok1", registry_token="tok2"))
    assert "alice" in shown
    assert not any(secret in shown for secret in ("s3cret", "tok1", "tok2"))


def test_environment_proxies_are_honoured_but_cannot_replace_the_ca(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    ca = tmp_path / "notary-ca.crt"
    client = transport("https://notary.example.com", ca_file=ca)
    assert client._session.proxies.get("https") == "http://proxy.internal:3128"
    assert client._verify == str(ca)
    assert client._session.trust_env is False

    monkeypatch.setenv("NO_PROXY", "notary.example.com")
    assert not transport("https://notary.example.com")._session.proxies


def test_client_certificate_is_presented_to_a_server_that_requires_one(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    server_cert, server_key = pki.issue_server_cert("notary")
    client_cert, client_key = pki.issue_client_cert("trustd")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    context.load_verify_locations(pki.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    Answers.routes = {"timestamp": (200, b"{}", {"Content-Length": "2"})}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    try:
        with_certificate = transport(
            url, ca_file=pki.ca_cert, client_cert=client_cert, client_key=client_key
        )
        assert with_certificate.fetch(GUN, "timestamp", 100) == b"{}"
        with pytest.raises(NotaryUnavailable, match="TLS failure talking to notary"):
            transport(url, ca_file=pki.ca_cert).fetch(GUN, "timestamp", 100)
    finally:
        httpd.shutdown()
        httpd.server_close()
