"""One deadline for a whole HTTP exchange: connect, TLS handshake, request, headers and body.

A socket timeout bounds each read, not the exchange: a server (or a proxy) that sends a byte
before every read times out keeps a request going for as long as it likes, handshake, headers or
body. An ``Exchange`` is watched while its ``with`` block runs: at its deadline one watcher
thread (shared by all) shuts down the sockets its requests use, so whatever connect, read or
write is blocked on them fails at once, and ``Exchange.cut`` (or ``deadline_passed()``) tells
the caller that this, not the server, ended it.

A request belongs to an exchange when it is sent through a ``BoundedHTTPAdapter`` while that
exchange is the calling thread's: inside ``exchange.sending()``, or anywhere in a
``bounded(deadline)`` block. A connection is watched for the exchange that last used it only:
once it goes back to the pool and another exchange takes it, the first one's deadline no longer
reaches it.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from contextvars import ContextVar, Token
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

# After the deadline, the sockets of an exchange still running are shut down again this often
# (seconds), so a connection that was opening at the deadline cannot slip through.
_AGAIN = 0.1


class Exchange:
    """One bounded exchange: its deadline, and the connections and sockets it has used.

    ``with Exchange(deadline) as exchange:`` watches it for the block; requests join it inside
    ``exchange.sending()``.
    """

    __slots__ = ("_due", "connections", "cut", "deadline", "sockets")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic()
        self.cut = False  # the watcher has shut its sockets down
        self._due = deadline  # when the watcher next acts on it: then every _AGAIN once cut
        self.connections: list[WatchedHTTPConnection] = []
        # Each socket with the connection it was opened for: a response that ends the
        # connection (HTTP/1.0, "Connection: close") takes the socket over, and the connection
        # forgets it while the body is still being read from it.
        self.sockets: list[tuple[WatchedHTTPConnection, socket.socket]] = []

    def __enter__(self) -> Exchange:
        _watcher.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _watcher.remove(self)

    def passed(self) -> bool:
        """Whether the deadline has passed (the sockets may not have been shut down yet)."""
        return self.cut or time.monotonic() >= self.deadline

    def sending(self) -> _Sending:
        """A block in which the calling thread's requests belong to this exchange."""
        return _Sending(self)


_current: ContextVar[Exchange | None] = ContextVar("trustd_http_exchange", default=None)


class _Watcher:
    """The thread that ends exchanges at their deadlines; started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._active: set[Exchange] = set()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def add(self, exchange: Exchange) -> None:
        with self._lock:
            self._active.add(exchange)
            if exchange._due < self._wake_at:
                self._wake_at = exchange._due
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="http-deadline", daemon=True
                    )
                    self._thread.start()
                else:
                    self._changed.notify()

    def remove(self, exchange: Exchange) -> None:
        # No wake-up: the watcher finds nothing due when it wakes for this one.
        with self._lock:
            self._active.discard(exchange)
            exchange.connections.clear()
            exchange.sockets.clear()

    def attach(self, connection: WatchedHTTPConnection) -> None:
        """``connection`` is about to connect or send a request for the calling thread's
        exchange (a pooled connection may have served another exchange before)."""
        exchange = _current.get()
        with self._lock:
            if connection.exchange is exchange:
                return
            connection.exchange = exchange
            if exchange is None:
                return
            exchange.connections.append(connection)
            if exchange.cut:
                _shut_down(connection.sock)

    def track(self, connection: WatchedHTTPConnection) -> None:
        """``connection`` has opened or used its socket for its exchange (which may have
        expired meanwhile)."""
        with self._lock:
            exchange, sock = connection.exchange, connection.sock
            if exchange is None or sock is None:
                return
            if not any(known is sock for _, known in exchange.sockets):
                exchange.sockets.append((connection, sock))
            if exchange.cut:
                _shut_down(sock)

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for exchange in self._active:
                    if exchange._due <= now:
                        exchange.cut = True
                        exchange._due = now + _AGAIN
                        for connection in exchange.connections:
                            if connection.exchange is exchange:
                                _shut_down(connection.sock)
                        for connection, sock in exchange.sockets:
                            if connection.exchange is exchange:
                                _shut_down(sock)
                self._wake_at = min((exchange._due for exchange in self._active), default=math.inf)
                self._changed.wait(None if self._wake_at == math.inf else self._wake_at - now)


def _shut_down(sock: socket.socket | None) -> None:
    if sock is None:
        return
    # socket.socket's own shutdown, also for a TLS socket: it wakes a thread blocked on the
    # socket without touching the TLS state that thread is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_watcher = _Watcher()


class _Sending:
    __slots__ = ("_exchange", "_token")

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._token: Token[Exchange | None] | None = None

    def __enter__(self) -> Exchange:
        self._token = _current.set(self._exchange)
        return self._exchange

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _current.reset(self._token)


class bounded(Exchange):  # used as a function: ``with bounded(deadline):``
    """An exchange that every request this thread makes through a ``BoundedHTTPAdapter`` in
    the block joins, response bodies included; ``deadline`` is ``time.monotonic()``.

    Not built on ``sending()``: it wraps every metadata download.
    """

    __slots__ = ("_token",)

    def __init__(self, deadline: float) -> None:
        super().__init__(deadline)
        self._token: Token[Exchange | None] | None = None

    def __enter__(self) -> Exchange:
        super().__enter__()
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
        super().__exit__()


def deadline_passed() -> bool:
    """Whether the deadline of the calling thread's exchange has passed."""
    exchange = _current.get()
    return exchange is not None and exchange.passed()


class WatchedHTTPConnection(HTTPConnection):
    """A connection whose sockets the watcher shuts down at its exchange's deadline."""

    exchange: Exchange | None = None

    def connect(self) -> None:
        # A connection opens before its request is sent (and a trickled TLS handshake or proxy
        # CONNECT answer is as slow as a trickled answer): it belongs to the exchange that
        # opens it, whose watcher shuts its socket once connect() has set it.
        _watcher.attach(self)
        super().connect()
        _watcher.track(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watcher.attach(self)
        super().request(*args, **kwargs)
        _watcher.track(self)


class WatchedHTTPSConnection(WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


_POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedHTTPPool,
    "https": _WatchedHTTPSPool,
}


class BoundedHTTPAdapter(HTTPAdapter):
    """requests' adapter, with connections that ``bounded`` can end at a deadline."""

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS has connection classes of its own
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager
