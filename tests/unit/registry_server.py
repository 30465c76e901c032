"""A small scripted HTTP server on 127.0.0.1 for the registry client's unit tests.

It is not a registry: each test says which answer a (method, path) gets. The real
docker-registry is exercised in tests/e2e/test_registry_client.py.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

Handler = Callable[["Request"], None]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_port: int = 0  # the same port for two requests: one kept-alive connection


class Request(BaseHTTPRequestHandler):
    """What a route handler gets: the request, and helpers to answer."""

    protocol_version = "HTTP/1.1"
    server: ScriptedServer  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(
            Seen(
                self.command,
                parts.path,
                parse_qs(parts.query),
                dict(self.headers),
                body,
                self.client_address[1],
            )
        )
        route = self.server.routes.get((self.command, parts.path))
        if route is None:
            self.answer(404, b'{"errors":[{"code":"NOT_FOUND"}]}')
            return
        route(self)

    do_GET = do_HEAD = do_POST = _dispatch

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    def answer(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        length: bool = True,
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def trickle(self, head: bytes, interval: float = 0.5, limit: int = 120) -> None:
        """Send ``head`` (status line and headers, or a part of them), then one byte of body
        every ``interval`` seconds until the client goes away."""
        self.close_connection = True
        try:
            self.wfile.write(head)
            self.wfile.flush()
            for _ in range(limit):
                time.sleep(interval)
                self.wfile.write(b"{")
                self.wfile.flush()
        except OSError:
            return

    def stream_forever(self, headers: bytes, limit: int = 256 * 1024 * 1024) -> None:
        """Send ``headers`` then body bytes without end (up to ``limit``) as fast as taken."""
        self.close_connection = True
        chunk = b"x" * 65536
        try:
            self.wfile.write(headers)
            while self.server.streamed < limit:
                self.wfile.write(chunk)
                self.server.streamed += len(chunk)
        except OSError:
            return


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Request)
        self.routes: dict[tuple[str, str], Handler] = {}
        self.seen: list[Seen] = []
        self.streamed = 0
        self.scheme = "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def fixed(self, method: str, path: str, status: int, body: bytes = b"", **headers: str) -> None:
        named = {name.replace("_", "-"): value for name, value in headers.items()}
        self.route(method, path, lambda request: request.answer(status, body, named))

    def sequence(self, method: str, path: str, handlers: list[Handler]) -> None:
        """Answer the n-th request with the n-th handler (the last one from then on)."""
        calls = iter(range(10**6))

        def handle(request: Request) -> None:
            handlers[min(next(calls), len(handlers) - 1)](request)

        self.route(method, path, handle)

    def paths(self, method: str | None = None) -> list[str]:
        return [s.path for s in self.seen if method is None or s.method == method]


def serve(
    tls: tuple[Path, Path] | None = None, client_ca: Path | None = None
) -> Iterator[ScriptedServer]:
    """A running server; with ``tls`` (certificate, key) it speaks HTTPS, and with
    ``client_ca`` it requires a client certificate issued by that CA."""
    server = ScriptedServer()
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(client_ca))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.scheme = "https"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Manifest:
    """A manifest's bytes and what a registry would say about them."""

    body: bytes
    media_type: str = "application/vnd.oci.image.manifest.v1+json"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()

    def headers(self, digest_header: bool = True) -> dict[str, str]:
        headers = {"Content-Type": self.media_type, **self.extra}
        if digest_header:
            headers["Docker-Content-Digest"] = self.digest
        return headers


def manifest(seed: str) -> Manifest:
    return Manifest(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": "sha256:" + hashlib.sha256(seed.encode()).hexdigest(),
                    "size": len(seed),
                },
                "layers": [],
            }
        ).encode()
    )


def descriptor_json(digest_seed: str, artifact_type: str = "", size: int = 100) -> dict[str, Any]:
    item: dict[str, Any] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + hashlib.sha256(digest_seed.encode()).hexdigest(),
        "size": size,
    }
    if artifact_type:
        item["artifactType"] = artifact_type
    return item


def index(*descriptors: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": list(descriptors),
        }
    ).encode()
