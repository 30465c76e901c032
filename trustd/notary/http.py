"""Keep-alive HTTP/1.1 connections on the standard library's ``http.client``, for the transport.

trustd's HTTP is a few small GETs (and one token POST) to one or two origins. ``http.client`` and
``ssl`` do that without a client library: a request costs a third less than through urllib3, and
``trustctl`` starts ~20 ms sooner without urllib3's imports (requests cost ~50 ms more again).

What a library would otherwise do, and this module does:

- connections are kept per origin and reused (most recently used first); one the server closed
  while it sat idle is noticed before reuse, and a request that fails on a reused connection
  before any answer arrived is sent once more on a new one;
- HTTPS through an HTTP proxy (``CONNECT``), plain HTTP through it in absolute form;
- timeouts on connect and on every read.

Nothing here interprets statuses, retries on errors, or knows about Notary: see transport.py.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

_DEFAULT_PORTS = {"https": 443, "http": 80}
# How a request on a kept-alive connection the server has just closed fails.
_CLOSED_UNDER_US = (
    ConnectionError,  # reset, broken pipe, http.client.RemoteDisconnected
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


def tls_context(
    ca_file: str | None, client_cert: str | None = None, client_key: str | None = None
) -> ssl.SSLContext:
    """Server certificates checked against ``ca_file`` only, or the system's CAs without one."""
    # create_default_context loads the system's CAs only when no CA file is given, so nothing
    # in the environment can add to a configured CA.
    context = ssl.create_default_context(cafile=ca_file)
    if client_cert and client_key:
        context.load_cert_chain(client_cert, client_key)
    return context


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int


class Response:
    """One response; ``finish`` gives its connection back (or closes it) exactly once."""

    def __init__(
        self, raw: http.client.HTTPResponse, connection: http.client.HTTPConnection, pool: _Idle
    ) -> None:
        self._raw = raw
        self._connection = connection
        self._pool = pool
        self.status = raw.status
        self.headers = raw.headers
        self._finished = False

    def stream(self, chunk: int) -> Iterator[bytes]:
        while True:
            data = self._raw.read(chunk)
            if not data:
                return
            yield data

    def finish(self, complete: bool) -> None:
        """``complete``: the body was read to its end, so the connection can be reused."""
        if self._finished:
            return
        self._finished = True
        if complete and not self._raw.will_close and self._raw.isclosed():
            self._pool.put(self._connection)
        else:
            self._raw.close()
            self._connection.close()


class _Idle:
    """Idle connections to one origin."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []

    def take(self) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                if not self._connections:
                    return None
                connection = self._connections.pop()
            if _still_open(connection):
                return connection
            connection.close()

    def put(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._connections) < self.limit:
                self._connections.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """False when the server closed an idle connection (it is readable: EOF or stray bytes)."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


class ConnectionPool:
    """Keep-alive connections to any origin, through ``proxy`` (``http://[user:pass@]host:port``)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        proxy: str | None = None,
        max_idle_per_origin: int = 32,
        user_agent: str = "",
    ) -> None:
        self.context = context
        self.proxy = urlsplit(proxy) if proxy else None
        if self.proxy is not None and self.proxy.scheme != "http":
            raise ValueError(f"only http:// proxies are supported, not {self.proxy.scheme}://")
        self.max_idle = max_idle_per_origin
        self.user_agent = user_agent
        self._lock = threading.Lock()
        self._idle: dict[_Origin, _Idle] = {}

    def close(self) -> None:
        with self._lock:
            pools, self._idle = list(self._idle.values()), {}
        for pool in pools:
            pool.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: str | None,
        timeout: float,
    ) -> Response:
        """Send one request; raises OSError (ssl.SSLError, TimeoutError…) or HTTPException."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise http.client.InvalidURL(f"not an http(s) URL: {url}")
        origin = _Origin(parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme])
        pool = self._pool(origin)
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        sent_headers = {"User-Agent": self.user_agent, **headers}
        if self.proxy is not None and origin.scheme == "http":
            target = url  # plain HTTP through a proxy: the absolute URL, to the proxy
            sent_headers.update(_proxy_authorization(self.proxy))
        connection = pool.take()
        if connection is not None:
            connection.sock.settimeout(timeout)  # type: ignore[union-attr]
            try:
                return self._send(connection, pool, method, target, sent_headers, body)
            except _CLOSED_UNDER_US:
                # The server closed this idle connection as the request went out; nothing was
                # answered, so sending it again on a new connection repeats nothing.
                connection.close()
        connection = self._connect(origin, timeout)
        return self._send(connection, pool, method, target, sent_headers, body)

    def _pool(self, origin: _Origin) -> _Idle:
        with self._lock:
            pool = self._idle.get(origin)
            if pool is None:
                pool = self._idle[origin] = _Idle(self.max_idle)
            return pool

    def _connect(self, origin: _Origin, timeout: float) -> http.client.HTTPConnection:
        proxy = self.proxy
        connection: http.client.HTTPConnection
        if origin.scheme == "https":
            if proxy is not None:
                connection = http.client.HTTPSConnection(
                    proxy.hostname or "", proxy.port or 80, timeout=timeout, context=self.context
                )
                connection.set_tunnel(origin.host, origin.port, _proxy_authorization(proxy))
            else:
                connection = http.client.HTTPSConnection(
                    origin.host, origin.port, timeout=timeout, context=self.context
                )
        elif proxy is not None:
            connection = http.client.HTTPConnection(
                proxy.hostname or "", proxy.port or 80, timeout=timeout
            )
        else:
            connection = http.client.HTTPConnection(origin.host, origin.port, timeout=timeout)
        try:
            connection.connect()
            # Small requests and answers: send each at once rather than wait for more to batch.
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        except BaseException:
            connection.close()
            raise
        return connection

    @staticmethod
    def _send(
        connection: http.client.HTTPConnection,
        pool: _Idle,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: str | None,
    ) -> Response:
        try:
            connection.request(method, target, body=body, headers=dict(headers))
            raw = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        return Response(raw, connection, pool)


def _proxy_authorization(proxy: SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    secret = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
