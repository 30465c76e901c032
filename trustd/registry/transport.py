"""HTTP exchanges with one registry host: TLS as the node configures it, a hard deadline per
exchange, size-capped bodies, one retry, redirects.

Every exchange (connect, TLS handshake, request, headers, the whole body, and any redirect or
retry in between) must finish before ``min(timeout, trustd.net.deadline.remaining())``. Socket
timeouts alone cannot promise that: a server that sends one byte every half second never lets a
read time out. So each exchange is a ``trustd.net.http_deadline.Exchange``, whose sockets are
shut down when the deadline passes, whatever the connection is doing; the blocked read then
fails at once and the exchange reports a timeout. Bodies are read in chunks, the clock and the
size cap checked after each, and never more than one byte past the cap is asked for.

Nothing here looks at what the bytes mean; ``client.py`` does.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.utils
from urllib3.poolmanager import PoolManager

from trustd.net.http_deadline import BoundedHTTPAdapter, Exchange
from trustd.registry.errors import (
    ContentTooLarge,
    RegistryEndpointUnusable,
    RegistryRequestFailed,
    RegistryTimeout,
)
from trustd.registry.hosts import RegistryEndpoint
from trustd.registry.tokens import AuthState

log = logging.getLogger(__name__)

USER_AGENT = "trustd"
CHUNK = 64 * 1024
MAX_REDIRECTS = 5
RETRYABLE_STATUS = frozenset({502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
RETRY_BACKOFF = 0.2  # seconds before the one retry, plus up to half again as jitter
_ERROR_BODY_LIMIT = 4096  # bytes of an error answer read for its error codes
_DRAIN_LIMIT = 8192  # an unread body up to this size is read to keep its connection
# OpenSSL's reasons for a TLS handshake answered in plain HTTP ("HTTP/1.1 400 ...").
_PLAIN_HTTP_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
)


class _Adapter(BoundedHTTPAdapter):
    """Keep-alive pools of connections an exchange's deadline reaches, TLS from one
    SSLContext."""

    def __init__(self, context: ssl.SSLContext, verify: bool, pool_size: int) -> None:
        self.context = context
        self.verify = verify
        super().__init__(pool_connections=4, pool_maxsize=pool_size, max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(
            connections, maxsize, block, ssl_context=self.context, **pool_kwargs
        )

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        return super().proxy_manager_for(proxy, ssl_context=self.context, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # The SSLContext holds the CAs and the client certificate; requests would otherwise
        # load its own CA bundle into it for every connection.
        conn.cert_reqs = "CERT_REQUIRED" if self.verify else "CERT_NONE"
        conn.ca_certs = None
        conn.ca_cert_dir = None


def _ssl_context(endpoint: RegistryEndpoint, *, registry_host: bool) -> ssl.SSLContext:
    """The system's CAs plus the endpoint's; with the client certificate and skip_verify only
    for the registry's own host (a token service or blob store elsewhere is verified)."""
    context = ssl.create_default_context()
    try:
        for ca_file in endpoint.ca_files:
            context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as error:
        raise RegistryEndpointUnusable(
            f"CA file {ca_file} for {endpoint.describe()} ({endpoint.source}) cannot be "
            f"loaded: {error}"
        ) from None
    if not registry_host:
        return context
    if endpoint.client_certificates:
        first = endpoint.client_certificates[0]
        if len(endpoint.client_certificates) > 1:
            log.info(
                "%s: presenting the first of %d client certificates (%s)",
                endpoint.source,
                len(endpoint.client_certificates),
                first.cert,
            )
        try:
            context.load_cert_chain(str(first.cert), str(first.key) if first.key else None)
        except (OSError, ssl.SSLError) as error:
            raise RegistryEndpointUnusable(
                f"client certificate {first.cert} for {endpoint.describe()} "
                f"({endpoint.source}) cannot be loaded: {error}"
            ) from None
    if not endpoint.verify:
        log.warning(
            "TLS certificates of %s are not verified (%s)",
            endpoint.describe(),
            "containerd's default for a loopback registry"
            if endpoint.source == "defaults"
            else f"skip_verify in {endpoint.source}",
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# --- one exchange --------------------------------------------------------------------------------


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL (never user information, path or query)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class Answer:
    """A response whose headers have arrived; its body is read with ``read`` (capped)."""

    def __init__(self, response: requests.Response, url: str, watch: Exchange, where: str) -> None:
        self.response = response
        self.url = url  # after redirects
        self.where = where
        self._watch = watch
        # The whole answer has been read: its connection may serve the next request.
        self._complete = False
        self._read_started = False
        self._bodiless = response.request.method == "HEAD" or response.status_code in (204, 304)

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self.response.headers

    def media_type(self) -> str:
        """The Content-Type without parameters ("" when there is none)."""
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip()

    def read(self, limit: int, what: str) -> bytes:
        """The whole body, at most ``limit`` bytes; ContentTooLarge past it (read no further)."""
        self._read_started = True
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise RegistryRequestFailed(
                f"{self.where} sent {what} with content encoding {encoding!r}, "
                "which was not asked for"
            )
        declared = self.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise ContentTooLarge(
                f"{what} from {self.where} is {int(declared)} bytes, over the {limit}-byte limit",
                what,
                int(declared),
                limit,
            )
        body = bytearray()
        try:
            while True:
                if self._watch.passed():
                    raise self.timeout(what)
                chunk = self.response.raw.read(
                    min(CHUNK, limit + 1 - len(body)), decode_content=False
                )
                if not chunk:
                    break
                body += chunk
                if len(body) > limit:
                    raise ContentTooLarge(
                        f"{what} from {self.where} exceeds the {limit}-byte limit",
                        what,
                        None,
                        limit,
                    )
        except (ContentTooLarge, RegistryTimeout):
            raise
        except Exception as error:
            # requests', urllib3's (ProtocolError, ReadTimeoutError, SSLError) and socket errors.
            if self._watch.passed():
                raise self.timeout(what) from None
            raise RegistryRequestFailed(
                f"reading {what} from {self.where} failed: {_short_reason(error)}"
            ) from None
        if self._watch.cut:
            # The body ended because the watchdog cut the connection, not because it was whole.
            raise self.timeout(what)
        self._complete = True
        return bytes(body)

    def finish(self) -> None:
        """Give the connection back for reuse if the answer was read whole (a short body nobody
        read, such as a 401's, is read first), else close it: unread bytes must never reach the
        next request, and a body refused at its cap is never read further."""
        if self._bodiless:
            # http.client must see the (empty) body read before the connection takes a request.
            with contextlib.suppress(Exception):
                self._complete = self.response.raw.read(decode_content=False) == b""
        elif not self._read_started:
            declared = self.headers.get("Content-Length", "").strip()
            if declared.isdigit() and int(declared) <= _DRAIN_LIMIT and not self._watch.passed():
                with contextlib.suppress(Exception):
                    self.read(_DRAIN_LIMIT, "the rest of an answer")
        if self._complete and not self._watch.cut:
            self.response.raw.release_conn()
        else:
            self.response.close()

    def timeout(self, what: str) -> RegistryTimeout:
        return RegistryTimeout(f"{self.where} did not deliver {what} in time")

    def error_codes(self) -> str:
        """The distribution error codes of an error answer (``MANIFEST_UNKNOWN, DENIED``), or "";
        best effort: a little of the body within the deadline, never an exception."""
        if self.response.request.method == "HEAD":
            return ""
        try:
            body = self.read(_ERROR_BODY_LIMIT, "an error answer")
            document = json.loads(body)
            codes = [
                str(entry.get("code"))
                for entry in document.get("errors", [])
                if isinstance(entry, dict) and isinstance(entry.get("code"), str)
            ]
        except Exception:
            return ""
        return ", ".join(code for code in codes[:4] if code.isascii() and len(code) < 64)


class _Transient(Exception):
    """A failure before any answer arrived, worth the one retry."""

    def __init__(self, error: RegistryRequestFailed | RegistryTimeout) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    headers: Mapping[str, str]
    data: Mapping[str, str] | None


class RegistryTransport:
    """Keep-alive HTTP(S) to one registry endpoint and the hosts it sends clients to (token
    services, blob storage); shared by every client of the endpoint.

    Pools: the registry's own host name gets the endpoint's TLS settings (CAs, client
    certificate, skip_verify); other hosts get the system's CAs plus the endpoint's CAs.
    """

    def __init__(self, endpoint: RegistryEndpoint, *, pool_size: int = 16) -> None:
        self.endpoint = endpoint
        self._fallen_back = False  # http_fallback taken: the registry speaks plain HTTP
        self._session = requests.Session()
        # Neither proxies nor a CA bundle from the environment may replace the node's registry
        # settings; proxy variables are read per origin below.
        self._session.trust_env = False
        self._session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self._session.headers.clear()
        self._session.headers.update(
            {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "*/*"}
        )
        others = _Adapter(_ssl_context(endpoint, registry_host=False), True, pool_size)
        registry = _Adapter(_ssl_context(endpoint, registry_host=True), endpoint.verify, pool_size)
        self._session.mount("http://", others)
        self._session.mount("https://", others)
        host = endpoint.hostname
        host = f"[{host}]" if ":" in host else host
        # A prefix per delimiter, so "https://reg.example" never matches "reg.example.evil".
        self._session.mount(f"https://{host}:", registry)
        self._session.mount(f"https://{host}/", registry)
        self._session.mount(f"http://{host}:", registry)
        self._session.mount(f"http://{host}/", registry)
        self._proxies: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        # Tokens and challenges, shared by every client of this endpoint (keyed by credentials).
        self.auth_state = AuthState()
        # When (time.monotonic()) the registry last showed it has no referrers API; client.py
        # reads the tag schema straight away for a while after it.
        self.no_referrers_api_at: float | None = None

    def close(self) -> None:
        self._session.close()

    # --- URLs ------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API root, over plain HTTP once an HTTP fallback was taken."""
        url = self.endpoint.url
        if self._fallen_back:
            url = "http" + url.removeprefix("https")
        return url

    def is_registry_host(self, url: str) -> bool:
        """``url`` is on the registry's host name (any port): TLS as the endpoint says."""
        return urlsplit(url).hostname == self.endpoint.hostname

    def is_registry_origin(self, url: str) -> bool:
        """``url`` is the registry itself (scheme, host and port)."""
        return origin(url) in (origin(self.endpoint.url), origin(self.base_url))

    def where(self, url: str) -> str:
        """Who answers ``url``, for messages."""
        if self.is_registry_host(url):
            return f"registry {self.endpoint.registry} at {origin(url)}"
        return f"{origin(url)} (for registry {self.endpoint.registry})"

    # --- exchanges -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def exchange(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        authorization: str | None = None,
        data: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> Iterator[Answer]:
        """Send one request and yield the answer; the deadline (``timeout`` seconds from now)
        covers redirects, the one retry, and reading the body inside the ``with`` block.

        ``authorization`` goes only to the origin of ``url`` (never to a redirect elsewhere).
        """
        if timeout <= 0:
            raise RegistryTimeout(f"no time left to ask {self.where(url)}")
        with Exchange(time.monotonic() + timeout) as watch:
            response, final_url = self._follow(
                _Request(method, url, dict(headers or {}), data),
                authorization,
                watch,
                follow_redirects,
            )
            answer = Answer(response, final_url, watch, self.where(final_url))
            try:
                yield answer
            finally:
                answer.finish()

    def _follow(
        self,
        request: _Request,
        authorization: str | None,
        watch: Exchange,
        follow_redirects: bool,
    ) -> tuple[requests.Response, str]:
        first_origin = origin(request.url)
        url = request.url
        for _ in range(MAX_REDIRECTS + 1):
            headers = dict(request.headers)
            if self.is_registry_origin(url):
                for name, value in _joined(self.endpoint.headers).items():
                    headers.setdefault(name, value)
            if authorization and origin(url) == first_origin:
                headers["Authorization"] = authorization
            response, url = self._send_with_retry(
                _Request(request.method, url, headers, request.data), watch
            )
            location = response.headers.get("Location")
            if (
                not follow_redirects
                or response.status_code not in REDIRECT_STATUS
                or request.method not in ("GET", "HEAD")
                or not location
            ):
                return response, url
            response.close()
            target = urljoin(url, location)
            target_scheme = urlsplit(target).scheme
            if target_scheme not in ("http", "https") or not urlsplit(target).hostname:
                raise RegistryRequestFailed(f"{self.where(url)} redirected to an unusable location")
            if urlsplit(url).scheme == "https" and target_scheme == "http":
                raise RegistryRequestFailed(
                    f"{self.where(url)} redirected from HTTPS to plain HTTP ({origin(target)}); "
                    "refused"
                )
            url = target
        raise RegistryRequestFailed(
            f"{self.where(request.url)}: more than {MAX_REDIRECTS} redirects"
        )

    def _send_with_retry(self, request: _Request, watch: Exchange) -> tuple[requests.Response, str]:
        retried = False
        while True:
            try:
                response, url = self._send(request, watch)
            except _Transient as transient:
                if retried or not self._retry_fits(watch):
                    raise transient.error from None
                log.info("%s; retrying once", transient.error)
            else:
                if response.status_code not in RETRYABLE_STATUS:
                    return response, url
                if retried or not self._retry_fits(watch):
                    return response, url  # the caller reports the status
                log.info(
                    "%s answered HTTP %d; retrying once", self.where(url), response.status_code
                )
                response.close()
            retried = True
            time.sleep(RETRY_BACKOFF * random.uniform(1.0, 1.5))

    @staticmethod
    def _retry_fits(watch: Exchange) -> bool:
        # Room for the pause and a little of an exchange; otherwise the retry could only time out.
        return watch.deadline - time.monotonic() > 3 * RETRY_BACKOFF

    def _send(self, request: _Request, watch: Exchange) -> tuple[requests.Response, str]:
        url = request.url
        if self._fallen_back and origin(url) == origin(self.endpoint.url):
            url = "http" + url.removeprefix("https")
        while True:
            try:
                return self._send_once(request, url, watch), url
            except requests.exceptions.SSLError as error:
                if watch.passed():
                    raise RegistryTimeout(f"{self.where(url)} did not answer in time") from None
                if (
                    self.endpoint.http_fallback
                    and origin(url) == origin(self.endpoint.url)
                    and _speaks_plain_http(error)
                ):
                    # Requests that set out over HTTPS together all fail the handshake; each
                    # falls back, not only the first (the rewritten URL is http, so once).
                    if not self._fallen_back:
                        log.info(
                            "%s answered the TLS handshake in plain HTTP; using http:// for it, "
                            "as containerd does for %s",
                            self.where(url),
                            self.endpoint.source,
                        )
                        self._fallen_back = True
                    url = "http" + url.removeprefix("https")
                    continue
                # A TLS failure is configuration or an attack, not a blip: never retried.
                raise RegistryRequestFailed(
                    f"TLS failure talking to {self.where(url)}: {_short_reason(error)}"
                ) from None
            except requests.exceptions.RequestException as error:
                if watch.passed():
                    raise RegistryTimeout(f"{self.where(url)} did not answer in time") from None
                if isinstance(error, requests.exceptions.ConnectionError):
                    raise _Transient(
                        RegistryRequestFailed(
                            f"cannot reach {self.where(url)}: {_short_reason(error)}"
                        )
                    ) from None
                raise RegistryRequestFailed(
                    f"cannot talk to {self.where(url)}: {_short_reason(error)}"
                ) from None

    def _send_once(self, request: _Request, url: str, watch: Exchange) -> requests.Response:
        left = watch.deadline - time.monotonic()
        if left <= 0 or watch.cut:
            raise RegistryTimeout(f"{self.where(url)} did not answer in time")
        connect = left
        if self.endpoint.dial_timeout is not None and self.is_registry_host(url):
            connect = min(connect, self.endpoint.dial_timeout)
        prepared = self._session.prepare_request(
            requests.Request(request.method, url, headers=dict(request.headers), data=request.data)
        )
        with watch.sending():
            return self._session.send(
                prepared,
                stream=True,
                timeout=(connect, left),
                allow_redirects=False,
                verify=self.endpoint.verify if self.is_registry_host(url) else True,
                proxies=self._proxies_for(url),
            )

    def _proxies_for(self, url: str) -> dict[str, str]:
        if self.endpoint.proxy and self.is_registry_host(url):
            return {"http": self.endpoint.proxy, "https": self.endpoint.proxy}
        key = origin(url)
        with self._lock:
            proxies = self._proxies.get(key)
            if proxies is None:
                if len(self._proxies) > 64:
                    self._proxies.clear()
                proxies = self._proxies[key] = dict(requests.utils.get_environ_proxies(url))
        return proxies


class RegistryTransports:
    """One transport per endpoint, kept for reuse across pulls (keep-alive connections and
    tokens); the least recently used is closed past ``size``. Thread-safe."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._transports: dict[RegistryEndpoint, RegistryTransport] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: RegistryEndpoint) -> RegistryTransport:
        with self._lock:
            transport = self._transports.pop(endpoint, None)
            if transport is None:
                transport = RegistryTransport(endpoint)
            self._transports[endpoint] = transport  # now the most recently used
            evicted = []
            while len(self._transports) > self._size:
                oldest = next(iter(self._transports))
                evicted.append(self._transports.pop(oldest))
        for old in evicted:
            old.close()
        return transport

    def close(self) -> None:
        with self._lock:
            transports = list(self._transports.values())
            self._transports.clear()
        for transport in transports:
            transport.close()


def _joined(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """hosts.toml headers by name; a name given several values is sent once, comma-joined."""
    joined: dict[str, list[str]] = {}
    for name, value in headers:
        joined.setdefault(name, []).append(value)
    return {name: ", ".join(values) for name, values in joined.items()}


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for follow in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(follow, BaseException):
                pending.append(follow)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))


def _speaks_plain_http(error: BaseException) -> bool:
    """A TLS handshake failed because the server answered it in plain HTTP."""
    return any(
        isinstance(item, ssl.SSLError) and item.reason in _PLAIN_HTTP_REASONS
        for item in _exception_chain(error)
    )


def _short_reason(error: BaseException) -> str:
    """The cause of a network error in a few words (no URL, so no query with secrets)."""
    for item in _exception_chain(error):
        if isinstance(item, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {item.verify_message}"
        if isinstance(item, ssl.SSLError) and item.reason:
            return f"TLS error {item.reason}"
        if isinstance(item, ConnectionRefusedError):
            return "connection refused"
        if isinstance(item, ConnectionResetError):
            return "connection reset"
        if isinstance(item, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(item, TimeoutError | socket.timeout):
            return "timed out"
        if isinstance(item, http.client.RemoteDisconnected):
            return "the connection closed without an answer"
        if isinstance(item, http.client.IncompleteRead):
            return "the answer ended early"
    last = list(_exception_chain(error))[-1]
    text = str(last)
    # urllib3's messages name the URL, whose query could carry a token: left out.
    detail = f": {text[:120]}" if text and "://" not in text else ""
    return type(last).__name__ + detail
