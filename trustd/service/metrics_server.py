"""The HTTP endpoint Prometheus scrapes: one thread, a bounded number of connections, deadlines.

Any local user can connect to a TCP port, so the endpoint must not grow with its clients: one
thread serves every connection from a selector loop, at most ``max_connections`` are held (a new
one pushes out the oldest, so a fresh scrape is answered however many idle connections someone
opened), and each connection has ``timeout`` seconds to send its whole request (a client that
sends nothing, or a byte at a time, is dropped) and as long again to take the answer. Every
answer closes its connection; a scrape is one request a minute or so.

The endpoint can also be a unix socket (``unix:/run/trustd/metrics.sock``), which only root and
the socket's group can connect to.

HTTP handled: ``GET`` and ``HEAD`` of ``/metrics`` (a query string is ignored), the
``Accept`` header (Prometheus text or OpenMetrics, as the client library chooses) and
``Accept-Encoding: gzip``.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
TIMEOUT = 10.0  # seconds to send a whole request, and again to take the answer
MAX_REQUEST_BYTES = 8192  # request line and headers; a scrape sends a few hundred bytes
UNIX_SOCKET_MODE = 0o660
METRICS_PATH = "/metrics"
_RECEIVE_CHUNK = 4096
_LISTEN_BACKLOG = 64
_IDLE_TICK = 1.0  # the loop's longest sleep: it checks for shutdown at least this often

# (Accept header) -> (body, Content-Type)
Exposition = Callable[[str], tuple[bytes, str]]


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    deadline: float
    accepted: float
    received: bytearray = field(default_factory=bytearray)
    answer: memoryview | None = None  # set once the request is complete

    @property
    def answering(self) -> bool:
        return self.answer is not None


class MetricsServer:
    """A running metrics endpoint; ``shutdown()`` stops it and frees the port or socket path."""

    def __init__(
        self,
        listener: socket.socket,
        exposition: Exposition,
        *,
        unix_path: Path | None = None,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = TIMEOUT,
    ) -> None:
        self._listener = listener
        self._exposition = exposition
        self.unix_path = unix_path
        self.max_connections = max_connections
        self.timeout = timeout
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._stopping = threading.Event()
        self._connections: dict[socket.socket, _Connection] = {}
        self._unix_identity = _identity(unix_path) if unix_path is not None else None
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._run, name="trustd-metrics", daemon=True)
        self.thread.start()

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def tcp(
        cls,
        host: str,
        port: int,
        exposition: Exposition,
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = TIMEOUT,
    ) -> MetricsServer:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, protocol)
        try:
            # A restarted daemon binds its port again at once, past the old one's TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(_LISTEN_BACKLOG)
        except BaseException:
            listener.close()
            raise
        return cls(listener, exposition, max_connections=max_connections, timeout=timeout)

    @classmethod
    def unix(
        cls,
        path: Path,
        exposition: Exposition,
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = TIMEOUT,
    ) -> MetricsServer:
        """Listen on a unix socket at ``path`` (mode 0660), replacing a stale socket there."""
        _remove_stale_socket(path)
        # Bound under a temporary name and renamed into place once its mode is set, so the path
        # never names a socket with looser permissions than intended.
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(temporary))
            try:
                os.chmod(temporary, UNIX_SOCKET_MODE)
                listener.listen(_LISTEN_BACKLOG)
                os.rename(temporary, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()
                raise
        except BaseException:
            listener.close()
            raise
        return cls(
            listener,
            exposition,
            unix_path=path,
            max_connections=max_connections,
            timeout=timeout,
        )

    # --- what callers see ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "" if self.unix_path is not None else str(self._listener.getsockname()[0])

    @property
    def port(self) -> int:
        return 0 if self.unix_path is not None else int(self._listener.getsockname()[1])

    @property
    def url_host(self) -> str:
        """``host:port`` (``[v6]:port``), or ``unix:PATH``, for messages."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def connection_count(self) -> int:
        return len(self._connections)

    def shutdown(self) -> None:
        """Stop serving and close every connection; a second call does nothing."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")
        self.thread.join(timeout=10)
        if self.unix_path is not None and _identity(self.unix_path) == self._unix_identity:
            # Only our own socket: a newer daemon may already have put its own at the path.
            with contextlib.suppress(FileNotFoundError):
                self.unix_path.unlink()
        self._wake_writer.close()

    # --- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                events = self._selector.select(self._wait_seconds())
                for key, mask in events:
                    if key.fileobj is self._listener:
                        self._accept_waiting()
                    elif key.fileobj is self._wake_reader:
                        with contextlib.suppress(OSError):
                            self._wake_reader.recv(64)
                    elif isinstance(key.data, _Connection):
                        self._serve(key.data, mask)
                self._drop_expired()
        except Exception:
            # The endpoint stops; the daemon (and its pulls) go on without it.
            log.exception("the metrics endpoint failed and stopped")
        finally:
            for connection in list(self._connections.values()):
                self._close(connection)
            self._selector.close()
            self._listener.close()
            self._wake_reader.close()

    def _wait_seconds(self) -> float:
        if not self._connections:
            return _IDLE_TICK
        soonest = min(connection.deadline for connection in self._connections.values())
        return min(max(soonest - time.monotonic(), 0.0), _IDLE_TICK)

    def _accept_waiting(self) -> None:
        # What is queued, so the backlog does not fill behind a burst, but at most a pool's
        # worth per round: a flood of connections must not keep the loop from answering.
        for _ in range(self.max_connections):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # Out of file descriptors, say: try again on the next wake-up rather than spin.
                log.warning("metrics endpoint cannot accept a connection: %s", error)
                return
            if len(self._connections) >= self.max_connections:
                self._close(self._oldest())
            sock.setblocking(False)
            now = time.monotonic()
            connection = _Connection(sock, deadline=now + self.timeout, accepted=now)
            self._connections[sock] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _oldest(self) -> _Connection:
        """The connection to give up for a new one: the oldest still sending its request, or
        the oldest of all if every one is being answered."""
        waiting = [c for c in self._connections.values() if not c.answering]
        return min(waiting or self._connections.values(), key=lambda c: c.accepted)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for connection in [c for c in self._connections.values() if c.deadline <= now]:
            self._close(connection)

    def _serve(self, connection: _Connection, mask: int) -> None:
        if connection.sock not in self._connections:
            return  # pushed out earlier in this round
        try:
            if connection.answering and mask & selectors.EVENT_WRITE:
                self._send(connection)
            elif not connection.answering and mask & selectors.EVENT_READ:
                self._receive(connection)
        except OSError:  # reset by the client, say
            self._close(connection)

    def _receive(self, connection: _Connection) -> None:
        data = connection.sock.recv(_RECEIVE_CHUNK)
        if not data:
            self._close(connection)
            return
        connection.received += data
        end = connection.received.find(b"\r\n\r\n")
        if end < 0:
            if len(connection.received) > MAX_REQUEST_BYTES:
                self._answer(connection, _simple(431, "Request Header Fields Too Large"))
            return
        self._answer(connection, self._respond(bytes(connection.received[:end])))

    def _answer(self, connection: _Connection, response: bytes) -> None:
        connection.answer = memoryview(response)
        connection.received = bytearray()
        connection.deadline = time.monotonic() + self.timeout
        self._selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        self._send(connection)  # usually all of it fits in the socket buffer at once

    def _send(self, connection: _Connection) -> None:
        assert connection.answer is not None
        try:
            sent = connection.sock.send(connection.answer)
        except (BlockingIOError, InterruptedError):
            return
        connection.answer = connection.answer[sent:]
        if not connection.answer:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
                # Closing with unread bytes (a body nobody asked for) would reset the connection
                # and could destroy the answer before the client reads it.
                for _ in range(4):
                    if not connection.sock.recv(_RECEIVE_CHUNK):
                        break
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if self._connections.pop(connection.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()

    # --- HTTP ------------------------------------------------------------------------------------

    def _respond(self, head: bytes) -> bytes:
        text = head.decode("latin-1")  # every byte is a latin-1 character
        request_line, *header_lines = text.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _simple(400, "Bad Request")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if not colon:
                return _simple(400, "Bad Request")
            headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return _simple(405, "Method Not Allowed", extra=[("Allow", "GET, HEAD")])
        if target.partition("?")[0] != METRICS_PATH:
            return _simple(404, "Not Found")
        try:
            body, content_type = self._exposition(headers.get("accept", ""))
        except Exception:
            log.exception("cannot render the metrics")
            return _simple(500, "Internal Server Error")
        extra = [("Content-Type", content_type)]
        if _accepts_gzip(headers.get("accept-encoding", "")):
            body = gzip.compress(body, compresslevel=6)
            extra.append(("Content-Encoding", "gzip"))
        return _response(200, "OK", body, extra, include_body=method == "GET")


def _simple(status: int, reason: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    body = f"{status} {reason}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), *(extra or [])]
    return _response(status, reason, body, headers, include_body=True)


def _response(
    status: int, reason: str, body: bytes, headers: list[tuple[str, str]], include_body: bool
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    head = "\r\n".join(lines).encode("latin-1")
    return head + body if include_body else head


def _accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        coding, _, parameters = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            quality = parameters.strip().removeprefix("q=").strip()
            return quality == "" or _positive(quality)
    return False


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _remove_stale_socket(path: Path) -> None:
    """A socket left by a previous run is removed; anything else at the path is an error."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(status.st_mode):
        raise OSError(f"metrics socket path {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)  # nobody listens on it: left by a previous run
        return
    finally:
        probe.close()
    raise OSError(f"metrics socket {path} is in use by another process")
