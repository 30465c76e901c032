"""Where the pull's credentials may go: a token realm named by the Notary, over HTTPS only.

A Notary (a hostile one, or whoever answers in its place) names the token realm in its 401
challenge. Here it names a plain-HTTP realm whose server records every request it gets.
Against the real daemon, with an HTTPS realm beside it: tests/e2e/test_token_realm.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from trustd.errors import AuthenticationFailed, NotaryUnavailable
from trustd.formats.notary.transport import NotaryEndpoint, NotaryTransport
from trustd.net.credentials import Credentials

GUN = "127.0.0.1:5000/team/app"


class Recorder(BaseHTTPRequestHandler):
    """The realm: records each request line and its headers, issues a token to anyone."""

    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.requestline, dict(self.headers)))
        body = b'{"token": "issued"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


class Challenger(BaseHTTPRequestHandler):
    """The Notary: every request is answered 401 with a Bearer challenge naming ``realm``."""

    realm: ClassVar[str] = ""

    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", f'Bearer realm="{self.realm}",service="notary"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def realm_port() -> Iterator[int]:
    Recorder.seen = []
    yield from _serve(Recorder)


@pytest.fixture
def notary_url(realm_port: int) -> Iterator[str]:
    Challenger.realm = f"http://127.0.0.1:{realm_port}/token?scope=x"
    for port in _serve(Challenger):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("credentials", "sent"),
    [
        (Credentials("kubelet-user", "pull-secret-Pa55"), "the pull's credentials"),
        (Credentials(identity_token="refresh-token-secret"), "the pull's credentials"),
        (None, "a token request"),
    ],
)
def test_a_plain_http_realm_gets_nothing(
    notary_url: str, realm_port: int, credentials: Credentials | None, sent: str
) -> None:
    transport = NotaryTransport(NotaryEndpoint(url=notary_url, timeout=5, retries=0))
    with pytest.raises(AuthenticationFailed) as refused:
        transport.fetch(GUN, "timestamp", 1024, credentials)
    message = str(refused.value)
    assert message == (
        f"refusing to send {sent} for {GUN} to the token service at "
        f"http://127.0.0.1:{realm_port}: notary at {notary_url} names a plain-HTTP token realm, "
        "and trustd asks token services only over HTTPS"
    )
    assert isinstance(refused.value, NotaryUnavailable)  # a denial, as for any Notary outage
    assert Recorder.seen == []
    assert "Pa55" not in message and "secret" not in message
