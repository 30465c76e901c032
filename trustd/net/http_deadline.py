"""One deadline for a whole HTTP exchange: connect, request, headers and body together.

A socket timeout bounds each read, not the exchange: a server that sends a byte before every
read times out keeps a request going for as long as it likes, headers or body. Within
``bounded(deadline)``, every request a thread makes through a ``BoundedHTTPAdapter`` is watched:
at the deadline one watcher thread (shared by all) shuts down the sockets those requests use, so
whatever connect, read or write is blocked on them fails at once, and ``deadline_passed()`` tells
the caller that this, not the server, ended it.

A connection is watched for the exchange that last used it only: once it goes back to the pool
and another exchange takes it, the first one's deadline no longer reaches it.
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
    """One bounded exchange: its deadline, and the connections and sockets it has used."""

    __slots__ = ("connections", "deadline", "expired", "sockets")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic(); moved on by _AGAIN once expired
        self.expired = False
        self.connections: list[WatchedHTTPConnection] = []
        # Each socket with the connection it was opened for: a response that ends the
        # connection (HTTP/1.0, "Connection: close") takes the socket over, and the connection
        # forgets it while the body is still being read from it.
        self.sockets: list[tuple[WatchedHTTPConnection, socket.socket]] = []


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
            if exchange.deadline < self._wake_at:
                self._wake_at = exchange.deadline
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
            if exchange.expired:
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
            if exchange.expired:
                _shut_down(sock)

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for exchange in self._active:
                    if exchange.deadline <= now:
                        exchange.expired = True
                        exchange.deadline = now + _AGAIN
                        for connection in exchange.connections:
                            if connection.exchange is exchange:
                                _shut_down(connection.sock)
                        for connection, sock in exchange.sockets:
                            if connection.exchange is exchange:
                                _shut_down(sock)
                self._wake_at = min(
                    (exchange.deadline for exchange in self._active), default=math.inf
                )
                self._changed.wait(None if self._wake_at == math.inf else self._wake_at - now)


def _shut_down(sock: socket.socket | None) -> None:
    if sock is None:
        return
    # socket.socket's own shutdown, also for a TLS socket: it wakes a thread blocked on the
    # socket without touching the TLS state that thread is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_watcher = _Watcher()


class bounded:  # used as a function: ``with bounded(deadline):``
    """Bound every request this thread makes through a ``BoundedHTTPAdapter`` in the block,
    response bodies included, by ``deadline`` (``time.monotonic()``).

    A class rather than a generator: it wraps every metadata download.
    """

    __slots__ = ("_exchange", "_token")

    def __init__(self, deadline: float) -> None:
        self._exchange = Exchange(deadline)
        self._token: Token[Exchange | None] | None = None

    def __enter__(self) -> Exchange:
        _watcher.add(self._exchange)
        self._token = _current.set(self._exchange)
        return self._exchange

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
        _watcher.remove(self._exchange)


def deadline_passed() -> bool:
    """Whether the deadline of the calling thread's ``bounded`` block has passed."""
    exchange = _current.get()
    return exchange is not None and (exchange.expired or time.monotonic() >= exchange.deadline)


class WatchedHTTPConnection(HTTPConnection):
    """A connection whose sockets the watcher shuts down at its exchange's deadline."""

    exchange: Exchange | None = None

    def connect(self) -> None:
        # A TLS connection opens before its request is sent (and a trickled handshake is as
        # slow as a trickled answer): it belongs to the exchange that opens it.
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
