"""What the e2e and attack tests share: a trustd config file, trustctl runs, and a tampering
HTTPS server in front of the real notary-server.

The tampering server passes every request through to the real notary-server unless the test
has put a modified copy of a file in its place; it speaks TLS with a certificate from the
harness PKI, so trustd talks to it exactly as to a real Notary server.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tests.stack import NotaryServer, TestPKI, free_port
from tests.stack.trustd_config import trustd_config_text
from trustd.programs.trustctl_commands import trustctl_main

REPO_ROOT = Path(__file__).resolve().parents[2]
_METADATA_PATH = re.compile(r"^/v2/(?P<gun>.+)/_trust/tuf/(?P<name>.+)\.json$")
# "<role>.<sha256 hex>" and "<version>.<role>" are other names of the same role's file.
_HASHED = re.compile(r"^(?P<role>.+)\.[0-9a-f]{64}$")
_VERSIONED = re.compile(r"^[0-9]+\.(?P<role>.+)$")
ENDLESS = b"<endless>"
_ENDLESS_CHUNK = b" " * 65536
_ENDLESS_CAP = 64 * 1024 * 1024  # a client that never stops reading must not hang the test
_PADDING_CHUNK = b" " * (1024 * 1024)


@dataclass(frozen=True)
class Padded:
    """``data`` followed by spaces up to ``length`` bytes: still the same JSON document.

    Sent with its Content-Length, a megabyte at a time, so the test never holds it in memory.
    """

    data: bytes
    length: int

    def chunks(self) -> Iterator[bytes]:
        yield self.data
        left = self.length - len(self.data)
        while left > 0:
            chunk = _PADDING_CHUNK[: min(left, len(_PADDING_CHUNK))]
            left -= len(chunk)
            yield chunk

    def file_meta(self) -> dict[str, Any]:
        """The ``{hashes, length}`` a parent lists for the padded file, as notary writes it."""
        sha256, sha512 = hashlib.sha256(), hashlib.sha512()
        for chunk in self.chunks():
            sha256.update(chunk)
            sha512.update(chunk)
        return {
            "hashes": {
                "sha256": base64.b64encode(sha256.digest()).decode(),
                "sha512": base64.b64encode(sha512.digest()).decode(),
            },
            "length": self.length,
        }


@dataclass(frozen=True)
class Trickle:
    """``data`` sent one byte every ``interval`` seconds after the headers (with its length)."""

    data: bytes
    interval: float = 0.5


# What the tampering server answers for a file instead of the real one.
Override = bytes | Padded | Trickle


def base_role(name: str) -> str:
    for pattern in (_HASHED, _VERSIONED):
        match = pattern.match(name)
        if match:
            return match["role"]
    return name


def write_config(
    directory: Path,
    registry: str,
    notary_url: str,
    ca_file: Path,
    extra: str = "",
    notary_extra: str = "",
) -> Path:
    """A trustd TOML config for one registry's Notary server; ``extra`` is appended verbatim."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "trustd.toml"
    path.write_text(
        trustd_config_text(
            state_dir=directory / "state",
            notary=[(registry, notary_url, ca_file)],
            policy=extra + "\n",
            notary_extra="timeout = 5\n" + notary_extra,
            # Every lookup must reach the (tampering) server: no freshness window.
            server={"freshness_window": 0},
        )
    )
    return path


@dataclass(frozen=True)
class Run:
    status: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def trustctl(*args: str) -> Run:
    """``trustctl ARGS`` in this process (exceptions that escape are test failures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = trustctl_main(list(args))
    return Run(status, out.getvalue(), err.getvalue())


def trustctl_process(*args: str, stdin: str | None = None, env: Mapping[str, str] = {}) -> Run:
    """``trustctl ARGS`` as a new process: nothing in memory is shared with the test."""
    result = subprocess.run(
        [sys.executable, "-m", "trustd.programs.trustctl_commands", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


class TamperServer:
    """HTTPS in front of a real notary-server, serving modified copies where the test says."""

    def __init__(self, upstream: NotaryServer, pki: TestPKI) -> None:
        self.upstream = upstream
        self.port = free_port()
        cert, key = pki.issue_server_cert(f"tamper-{self.port}")
        self._overrides: dict[tuple[str, str], Override] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        # Set when the server stops: a trickle still being sent ends then.
        self.stopping = threading.Event()
        self._trickling: dict[str, int] = {}  # gun -> trickles being sent now
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def serve(self, gun: str, role: str, data: Override) -> None:
        """Answer every request for ``role`` of ``gun`` (any of its names) with ``data``."""
        with self._lock:
            self._overrides[(gun, role)] = data

    def restore(self, gun: str, role: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._overrides if k[0] == gun and role in (None, k[1])]:
                del self._overrides[key]

    def fetched(self, gun: str) -> list[str]:
        """Names of the files of ``gun`` requested so far, in order."""
        with self._lock:
            return [name for g, name in (r.split("|", 1) for r in self.requests) if g == gun]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def trickling(self, gun: str) -> int:
        """How many trickled answers for ``gun`` are being sent right now."""
        with self._lock:
            return self._trickling.get(gun, 0)

    def _trickle_started(self, gun: str, change: int) -> None:
        with self._lock:
            self._trickling[gun] = self._trickling.get(gun, 0) + change

    def _override(self, gun: str, name: str) -> tuple[bool, Override | None]:
        with self._lock:
            self.requests.append(f"{gun}|{name}")
            exact = self._overrides.get((gun, name))
            if exact is not None:
                return True, exact
            # Another name of a replaced file is "not found", so clients fall back to the
            # plain name and get the replacement; a copy served under its hash would be no
            # more convincing to a verifying client.
            if (gun, base_role(name)) in self._overrides:
                return True, None
        return False, None

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler_for(server: TamperServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the request log is kept in server.requests

        def do_GET(self) -> None:
            match = _METADATA_PATH.match(self.path)
            if match is not None:
                replaced, data = server._override(match["gun"], match["name"])
                if replaced:
                    self._answer_override(match["gun"], data)
                    return
            self._pass_through()

        def _answer_override(self, gun: str, data: Override | None) -> None:
            if isinstance(data, Padded):
                self._send_chunks(data.length, data.chunks())
            elif isinstance(data, Trickle):
                server._trickle_started(gun, 1)
                try:
                    self._trickle(data)
                finally:
                    server._trickle_started(gun, -1)
            elif data is None:
                self._send(404, b'{"errors":[{"code":"METADATA_NOT_FOUND"}]}')
            elif data == ENDLESS:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()  # no Content-Length: the body ends when the server says so
                sent = 0
                with contextlib.suppress(OSError):
                    self.wfile.write(b'{"signed":{"_type":"Timestamp","pad":"')
                    while sent < _ENDLESS_CAP:
                        self.wfile.write(_ENDLESS_CHUNK)
                        sent += len(_ENDLESS_CHUNK)
                self.close_connection = True
            else:
                self._send(200, data)

        def _send_chunks(self, length: int, chunks: Iterator[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client may stop reading at its cap
                for chunk in chunks:
                    self.wfile.write(chunk)
            self.close_connection = True

        def _trickle(self, trickle: Trickle) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(trickle.data)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up
                self.wfile.flush()
                for index in range(len(trickle.data)):
                    if server.stopping.wait(trickle.interval):
                        break
                    self.wfile.write(trickle.data[index : index + 1])
                    self.wfile.flush()
            self.close_connection = True

        def _pass_through(self) -> None:
            headers = {
                name: value
                for name, value in self.headers.items()
                if name.lower() in ("authorization", "accept")
            }
            upstream = requests.get(
                server.upstream.url + self.path,
                headers=headers,
                verify=str(server.upstream.ca_file),
                timeout=30,
            )
            self._send(upstream.status_code, upstream.content, upstream.headers)

        def _send(self, status: int, body: bytes, headers: Mapping[str, str] = {}) -> None:
            self.send_response(status)
            for name in ("Content-Type", "WWW-Authenticate"):
                if name in headers:
                    self.send_header(name, headers[name])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def tamper_server(upstream: NotaryServer, pki: TestPKI) -> Iterator[TamperServer]:
    server = TamperServer(upstream, pki)
    try:
        yield server
    finally:
        server.stop()


def lookup_pairs(runs: Sequence[Run]) -> list[tuple[str, int]]:
    return [(run.json()["digest"], run.json()["size"]) for run in runs]
