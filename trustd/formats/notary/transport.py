"""HTTP access to one Notary server: TLS, Docker token auth, size caps, timeouts.

Nothing here verifies metadata; it only fetches bytes, never more than the caller allows: a
declared Content-Length over the cap is refused before the body is read, and a body is read no
further than one byte past the cap. Credentials never appear in an exception message or a log
line.

One download (``fetch``: connecting, a token if the server asks for one, headers, body, and any
retries) takes at most the endpoint's ``timeout`` in all, and never outlasts the deadline of the
call being served (``call_deadline``), whichever is sooner; a server that trickles its answer is
cut off then (``trustd.net.http_deadline``), not merely one read at a time.

Transient failures (connection refused or reset, HTTP 502/503/504) are retried with jittered
exponential backoff, ``retries`` times at most, within that same time: a flaky Notary should cost
a retry, not a denied pull.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests
import urllib3

from trustd.errors import AuthenticationFailed, MetadataTooLarge, NotaryUnavailable
from trustd.net.credentials import Credentials
from trustd.net.deadline import current_deadline
from trustd.net.http_deadline import BoundedHTTPAdapter, bounded, deadline_passed

log = logging.getLogger(__name__)

USER_AGENT = "trustd"  # the bench counts trustd's requests in notary-server's log by it
_CHUNK = 64 * 1024
_TOKEN_RESPONSE_LIMIT = 1024 * 1024
_DEFAULT_TOKEN_LIFETIME = 60.0
_RETRYABLE_STATUS = frozenset({502, 503, 504})
_PREPARED_LIMIT = 4096  # prepared metadata GETs kept (five roles of some hundreds of GUNs)
_FIRST_BACKOFF = 0.1  # seconds; doubled on every further retry, with up to half again as jitter


@dataclass(frozen=True)
class NotaryEndpoint:
    """How to reach one Notary server."""

    url: str
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    timeout: float = 10.0  # seconds for one whole download, retries included
    default_credentials: Credentials | None = None
    retries: int = 2  # further attempts after a transient failure

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


class NotFound(Exception):
    """The server has no such file (HTTP 404); callers decide what that means."""


_CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')


def parse_bearer_challenge(header: str) -> dict[str, str] | None:
    """Parameters of a ``WWW-Authenticate: Bearer realm=..,service=..,scope=..`` challenge."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return {key.lower(): value for key, value in _CHALLENGE_PARAMETER.findall(rest)}


@dataclass
class _Token:
    value: str
    expires_at: float


class NotaryTransport:
    """Fetches metadata files of any GUN from one Notary server over one keep-alive session."""

    def __init__(self, endpoint: NotaryEndpoint, *, pool_size: int = 32) -> None:
        self.endpoint = endpoint
        self._session = requests.Session()
        adapter = BoundedHTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers["User-Agent"] = USER_AGENT
        if endpoint.client_cert and endpoint.client_key:
            self._session.cert = (str(endpoint.client_cert), str(endpoint.client_key))
        # The environment is read once, here: requests would otherwise scan it for proxies on
        # every request (a quarter of a warm lookup), and would let REQUESTS_CA_BUNDLE replace
        # the configured CA. Proxy variables (HTTPS_PROXY, NO_PROXY) are still honoured.
        self._session.trust_env = False
        self._session.proxies = requests.utils.get_environ_proxies(endpoint.base_url)
        # Passed with each request, so nothing can override the configured CA.
        self._verify: str | bool = str(endpoint.ca_file) if endpoint.ca_file else True
        # Neither Notary nor a token service needs cookies, and none kept means a prepared
        # metadata GET (below) can never leave one out.
        self._session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        # One prepared GET per metadata URL, copied for each request: preparing it again
        # (URL parsing, header and setting merges) was a fifth of the CPU of a lookup here.
        self._prepared: dict[str, requests.PreparedRequest] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._tokens_lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    def url_for(self, gun: str, name: str) -> str:
        return f"{self.endpoint.base_url}/v2/{quote(gun, safe='/:')}/_trust/tuf/{name}.json"

    def fetch(
        self, gun: str, name: str, max_bytes: int, credentials: Credentials | None = None
    ) -> bytes:
        """The bytes of ``<name>.json`` for ``gun``, at most ``max_bytes`` of them; raises
        NotFound on 404, MetadataTooLarge over the cap, NotaryUnavailable when the download does
        not finish within the endpoint's ``timeout`` or the call's deadline."""
        started = time.monotonic()
        call = current_deadline()
        deadline = started + self.endpoint.timeout
        if call is not None:
            deadline = min(deadline, call)
        with bounded(deadline):
            try:
                return self._fetch(gun, name, max_bytes, credentials, deadline)
            except _TimedOut:
                pass
        if call is not None and call <= deadline:
            allowed = f"{max(call - started, 0.0):.1f}s (all this call had left)"
        else:
            allowed = f"{self.endpoint.timeout:g}s (the [[notary]] timeout)"
        raise NotaryUnavailable(
            f"notary at {self.endpoint.base_url} did not deliver {name}.json of {gun} "
            f"within {allowed}"
        )

    def _fetch(
        self,
        gun: str,
        name: str,
        max_bytes: int,
        credentials: Credentials | None,
        deadline: float,
    ) -> bytes:
        url = self.url_for(gun, name)
        credentials = credentials or self.endpoint.default_credentials
        token = self._cached_token(gun, credentials)
        response = self._get(url, token, gun, deadline)
        try:
            if response.status_code == 401:
                challenge = parse_bearer_challenge(response.headers.get("WWW-Authenticate", ""))
                response.close()
                if challenge is None:
                    raise AuthenticationFailed(
                        f"notary at {self.endpoint.base_url} requires authentication for {gun} "
                        "but did not offer Docker token auth"
                    )
                token = self._obtain_token(gun, challenge, credentials, deadline)
                response = self._get(url, token, gun, deadline)
                if response.status_code in (401, 403):
                    raise AuthenticationFailed(
                        f"notary at {self.endpoint.base_url} refused access to {gun} "
                        f"with the token issued by {challenge.get('realm', '?')}"
                    )
            if response.status_code == 404:
                raise NotFound(url)
            if response.status_code == 403:
                raise AuthenticationFailed(
                    f"notary at {self.endpoint.base_url} denied access to {gun} (HTTP 403)"
                )
            if response.status_code != 200:
                raise NotaryUnavailable(
                    f"notary at {self.endpoint.base_url} answered HTTP {response.status_code} "
                    f"for {name}.json of {gun}"
                )
            return self._read_capped(response, max_bytes, f"{name}.json for {gun}")
        finally:
            response.close()

    # --- HTTP ------------------------------------------------------------------------------------

    def _get(
        self, url: str, token: str | None, gun: str | None, deadline: float
    ) -> requests.Response:
        prepared = self._prepared.get(url)
        if prepared is None:
            prepared = self._session.prepare_request(requests.Request("GET", url))
            if len(self._prepared) >= _PREPARED_LIMIT:
                self._prepared.clear()  # URLs of GUNs no longer asked about go with it
            self._prepared[url] = prepared
        prepared = prepared.copy()
        if token:
            prepared.headers["Authorization"] = f"Bearer {token}"
        return self._request(
            "GET", url, service="notary", gun=gun, deadline=deadline, prepared=prepared
        )

    def _request(
        self,
        method: str,
        url: str,
        *,
        service: str,
        gun: str | None,
        deadline: float,
        prepared: requests.PreparedRequest | None = None,
        **kwargs: object,
    ) -> requests.Response:
        """One request, retried on transient failures until ``deadline`` (time.monotonic());
        the errors name the service and GUN."""
        # Only the origin: a URL's path and query can carry a token or an account name.
        where = f"{service} at {_origin(url)}" + (f" for {gun}" if gun else "")
        attempt = 0
        problem: NotaryUnavailable | None
        while True:
            timeout = max(min(self.endpoint.timeout, deadline - time.monotonic()), 0.001)
            try:
                response = self._attempt(method, url, timeout, where, prepared, kwargs)
            except _Transient as failure:
                problem = failure.error
            else:
                if response.status_code not in _RETRYABLE_STATUS:
                    return response
                problem = None
            backoff = _FIRST_BACKOFF * 2**attempt * random.uniform(1.0, 1.5)
            retry = attempt < self.endpoint.retries and time.monotonic() + backoff < deadline
            if not retry:
                if problem is None:
                    return response  # the caller reports the status
                raise problem
            if problem is None:
                log.info("%s answered HTTP %d; retrying", where, response.status_code)
                response.close()
            else:
                log.info("%s; retrying", problem)
            attempt += 1
            time.sleep(backoff)

    def _attempt(
        self,
        method: str,
        url: str,
        timeout: float,
        where: str,
        prepared: requests.PreparedRequest | None,
        kwargs: dict[str, object],
    ) -> requests.Response:
        try:
            if prepared is not None:
                return self._session.send(
                    prepared.copy(),
                    stream=True,
                    timeout=(timeout, timeout),
                    allow_redirects=False,
                    verify=self._verify,
                )
            return self._session.request(
                method,
                url,
                stream=True,
                timeout=(timeout, timeout),
                allow_redirects=False,
                **kwargs,  # type: ignore[arg-type]
            )
        except (requests.exceptions.RequestException, OSError, ValueError) as error:
            # Whatever a connection cut off at the download's deadline raised.
            if deadline_passed():
                raise _TimedOut from None
            if isinstance(error, requests.exceptions.SSLError):
                # A TLS failure is configuration or an attack, not a blip: never retried.
                raise NotaryUnavailable(
                    f"TLS failure talking to {where}: {_short_reason(error)}"
                ) from None
            if isinstance(error, requests.exceptions.Timeout):
                raise _Transient(
                    NotaryUnavailable(f"{where} did not answer within {timeout:g}s")
                ) from None
            if isinstance(error, requests.exceptions.ConnectionError | OSError):
                raise _Transient(
                    NotaryUnavailable(f"cannot reach {where}: {_short_reason(error)}")
                ) from None
            raise NotaryUnavailable(f"cannot reach {where}: {_short_reason(error)}") from None

    def _read_capped(self, response: requests.Response, max_bytes: int, what: str) -> bytes:
        """The body, refused unread when it declares more than ``max_bytes``, and read no
        further than one byte past them otherwise (a body without a length, or one longer than
        it declared, is cut off there)."""
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise MetadataTooLarge(
                f"{what} from {self.endpoint.base_url} is {declared} bytes, over the "
                f"{max_bytes}-byte limit"
            )
        received = bytearray()
        try:
            while len(received) <= max_bytes:
                wanted = min(_CHUNK, max_bytes + 1 - len(received))
                chunk = response.raw.read(wanted, decode_content=True)
                if not chunk:
                    break
                received += chunk
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError, ValueError) as e:
            if deadline_passed():
                raise _TimedOut from None
            raise NotaryUnavailable(
                f"reading {what} from {self.endpoint.base_url} failed: {_short_reason(e)}"
            ) from None
        if deadline_passed():
            # A body without a length ends where its connection does, so one cut off at the
            # deadline reads as complete: it is not.
            raise _TimedOut
        if len(received) > max_bytes:
            raise MetadataTooLarge(
                f"{what} from {self.endpoint.base_url} exceeds the {max_bytes}-byte limit"
            )
        return bytes(received)

    # --- Docker token auth -----------------------------------------------------------------------

    def _cached_token(self, gun: str, credentials: Credentials | None) -> str | None:
        if credentials and credentials.registry_token:
            return credentials.registry_token
        with self._tokens_lock:
            token = self._tokens.get((gun, _credential_key(credentials)))
        if token and token.expires_at > time.monotonic():
            return token.value
        return None

    def _obtain_token(
        self,
        gun: str,
        challenge: dict[str, str],
        credentials: Credentials | None,
        deadline: float,
    ) -> str:
        realm = challenge.get("realm", "")
        realm_parts = urlsplit(realm)
        if realm_parts.scheme not in ("https", "http") or not realm_parts.netloc:
            raise AuthenticationFailed(
                f"notary at {self.endpoint.base_url} sent an unusable token realm {realm!r}"
            )
        realm_origin = _origin(realm)
        # What goes to the token service: a user's password or identity token. A registry token
        # alone is kubelet's token for the registry, sent to no one else: then ask anonymously.
        identity = (
            credentials
            if credentials is not None and (credentials.username or credentials.identity_token)
            else None
        )
        if realm_parts.scheme != "https":
            # Any Notary (or whoever answers in its place) names the realm: over plain HTTP
            # the pull's credentials, and the token, would be readable and changeable on the
            # way. Refused with or without credentials, so the rule does not depend on the pull.
            sent = "the pull's credentials" if identity else "a token request"
            raise AuthenticationFailed(
                f"refusing to send {sent} for {gun} to the token service at {realm_origin}: "
                f"notary at {self.endpoint.base_url} names a plain-HTTP token realm, and "
                "trustd asks token services only over HTTPS"
            )
        if identity is not None:
            log.info(
                "sending %s for %s to the token service at %s (named by notary at %s)",
                _credential_kind(identity),
                gun,
                realm_origin,
                self.endpoint.base_url,
            )
        params = {"scope": challenge.get("scope") or f"repository:{gun}:pull"}
        if challenge.get("service"):
            params["service"] = challenge["service"]
        # The Notary server's own CA also protects a realm on the same host (token services
        # usually listen there on another port); any other host is checked against the
        # system's CAs.
        same_host = realm_parts.hostname == urlsplit(self.endpoint.base_url).hostname
        verify = self._verify if same_host else True
        if identity is not None and identity.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": identity.identity_token,
                "client_id": "trustd",
                **params,
            }
            response = self._request(
                "POST",
                realm,
                service="token service",
                gun=gun,
                deadline=deadline,
                data=form,
                verify=verify,
            )
        else:
            if identity is not None:
                params["account"] = identity.username
            auth = (identity.username, identity.password) if identity is not None else None
            response = self._request(
                "GET",
                realm,
                service="token service",
                gun=gun,
                deadline=deadline,
                params=params,
                auth=auth,
                verify=verify,
            )
        try:
            if response.status_code in (401, 403):
                who = f"user {identity.username!r}" if identity is not None else "anonymous access"
                raise AuthenticationFailed(
                    f"token service {realm} refused {who} for {gun} (HTTP {response.status_code})"
                )
            if response.status_code != 200:
                raise NotaryUnavailable(
                    f"token service {realm} answered HTTP {response.status_code} for {gun}"
                )
            body = self._read_capped(response, _TOKEN_RESPONSE_LIMIT, "token response")
        finally:
            response.close()
        try:
            document = json.loads(body)
            value = document.get("token") or document.get("access_token")
            lifetime = float(document.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            value = None
            lifetime = 0.0
        if not isinstance(value, str) or not value:
            raise AuthenticationFailed(f"token service {realm} returned no token for {gun}")
        # Renew a little early so a token never expires between check and use.
        expires_at = time.monotonic() + max(lifetime - 5.0, 1.0)
        with self._tokens_lock:
            self._tokens[(gun, _credential_key(credentials))] = _Token(value, expires_at)
        return value


class _TimedOut(Exception):
    """The download's deadline cut a request off; ``fetch`` says which bound that was."""


class _Transient(Exception):
    """A failure worth another attempt; carries the error to raise if none is left."""

    def __init__(self, error: NotaryUnavailable) -> None:
        super().__init__(str(error))
        self.error = error


def _credential_key(credentials: Credentials | None) -> str:
    # Tokens are cached per identity, so one kubelet user's token is never used for another.
    if not credentials:
        return ""
    return f"{credentials.username}\0{hash((credentials.password, credentials.identity_token))}"


def _credential_kind(credentials: Credentials) -> str:
    """What is being sent, for the log; never a secret."""
    if credentials.identity_token:
        return f"an identity token (user {credentials.username!r})"
    return f"the password of user {credentials.username!r}"


def _origin(url: str) -> str:
    # netloc without any user:password@ a realm URL might carry.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _short_reason(error: Exception) -> str:
    text = str(error)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "certificate verify failed",
        "timed out",
        "No route to host",
        "Connection reset",
    ):
        if marker in text:
            detail = text[text.index(marker) :].split("'")[0].split(")")[0].strip(' :("')
            # Part of a sentence ("cannot reach … : connection refused"), not a title.
            return detail[0].lower() + detail[1:]
    return text[:200]
