"""Registry authentication: the Docker/OCI token flow and HTTP Basic, with the pull's credentials.

A registry that wants credentials answers 401 with ``WWW-Authenticate``:

- ``Bearer realm="https://auth.example/token",service="...",scope="repository:x:pull"``: a token
  is fetched from the realm and sent as ``Authorization: Bearer``. How the token is asked for
  depends on the credentials kubelet passed with the pull:

  * username and password: ``GET realm?service=..&scope=..&account=<user>`` with HTTP Basic
    (the Docker token protocol, which every token service answers);
  * identity token (a refresh token from ``docker login``): ``POST realm`` with the OAuth2 form
    ``grant_type=refresh_token`` (as containerd does); a realm that refuses POST (400, 401,
    404, 405) is asked again with ``GET`` and Basic over (username, identity token);
  * registry token: sent to the registry as the bearer token itself, no realm involved;
  * none: an anonymous ``GET``.

  Tokens are cached per (realm, service, scope, credentials) until shortly before they expire.
- ``Basic realm="..."``: the username and password go to the registry itself.

Credentials are sent to a token realm only over HTTPS, or over plain HTTP when the realm is on
the registry's own host and the operator configured that registry as plain HTTP. Every request
that carries them is logged at INFO naming the host that received them; the credentials never
appear in a message or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from trustd.net.credentials import Credentials
from trustd.net.deadline import remaining
from trustd.registry.errors import (
    ContentTooLarge,
    RegistryAuthenticationFailed,
    RegistryRequestFailed,
)
from trustd.registry.tokens import AuthScheme, AuthState, TokenKey
from trustd.registry.transport import RegistryTransport, origin

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, when the token service does not say (Docker's rule)
CLIENT_ID = "trustd"
_REFRESH_REFUSED = frozenset({400, 401, 404, 405})

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME = re.compile(rf"\s*({_TOKEN})")
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))')
_QUOTED_PAIR = re.compile(r"\\(.)")
_TOKEN68 = re.compile(r"\s*[A-Za-z0-9._~+/-]+=*\s*(?=,|$)")
# Keys the cache is keyed by are derived with a per-process secret: no hash of a password is
# ever something that could be looked up.
_FINGERPRINT_KEY = os.urandom(32)


# --- challenges (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: the scheme (lower case) and parameters
    (names lower case)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scope(self) -> str:
        return self.params.get("scope", "")


def parse_challenges(header: str) -> tuple[Challenge, ...]:
    """The challenges of a ``WWW-Authenticate`` value (RFC 7235: several may share one header,
    separated by commas, and quoted values may contain commas)."""
    challenges: list[Challenge] = []
    position = 0
    while position < len(header):
        if header[position] in " \t,":
            position += 1
            continue
        scheme = _SCHEME.match(header, position)
        if scheme is None:
            break  # not a challenge: ignore the rest rather than guess
        position = scheme.end()
        params: dict[str, str] = {}
        token68 = _TOKEN68.match(header, position)
        if token68 is not None and not _PARAM.match(header, position):
            position = token68.end()
        else:
            while True:
                param = _PARAM.match(header, position)
                if param is None:
                    break
                name = param.group(1).lower()
                if param.group(2) is not None:
                    value = _QUOTED_PAIR.sub(r"\1", param.group(2))
                else:
                    value = param.group(3)
                params.setdefault(name, value)
                position = param.end()
                after = re.compile(r"\s*,").match(header, position)
                if after is None or not _PARAM.match(header, after.end()):
                    break  # the next item (if any) starts another challenge
                position = after.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return tuple(challenges)


def repository_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def credential_fingerprint(credentials: Credentials | None) -> str:
    """Identifies a set of credentials in cache keys, so one pull's token is never used for
    another's credentials; "" for anonymous access."""
    if not credentials:
        return ""
    material = "\0".join(
        (
            credentials.username,
            credentials.password,
            credentials.identity_token,
            credentials.registry_token,
        )
    )
    return hmac.new(_FINGERPRINT_KEY, material.encode(), hashlib.sha256).hexdigest()


def basic_authorization(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_token_response(body: bytes) -> tuple[str, float]:
    """(token, lifetime in seconds) from a token service's JSON answer; ValueError if none."""
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("the answer is not a JSON object")
    value = document.get("token") or document.get("access_token")
    if not isinstance(value, str) or not value or not all(" " < c < "\x7f" for c in value):
        raise ValueError("the answer has no token")
    lifetime = document.get("expires_in", DEFAULT_TOKEN_LIFETIME)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return value, float(lifetime)


class Authenticator:
    """The Authorization header a client sends for a repository, with one pull's credentials."""

    def __init__(
        self,
        transport: RegistryTransport,
        state: AuthState,
        credentials: Credentials | None,
        timeout: float,
        token_limit: int,
    ) -> None:
        self._transport = transport
        self._state = state
        self._credentials = credentials if credentials else None
        self._fingerprint = credential_fingerprint(self._credentials)
        self._timeout = timeout
        self._token_limit = token_limit

    @property
    def _registry(self) -> str:
        return self._transport.endpoint.registry

    def authorization(self, repository: str) -> str | None:
        """What to send with a first request: a cached token or the scheme asked for last."""
        credentials = self._credentials
        if credentials and credentials.registry_token:
            return f"Bearer {credentials.registry_token}"
        known = self._state.scheme(repository, self._fingerprint)
        if known is None:
            return None
        if known.scheme == "basic":
            return self._basic(announce=False)
        token = self._state.tokens.get((known.realm, known.service, known.scope, self._fingerprint))
        return f"Bearer {token}" if token else None

    def answer_challenge(self, header: str, repository: str, sent: str | None) -> str:
        """The Authorization to retry with after a 401 carrying ``header``; raises
        RegistryAuthenticationFailed when there is none to offer."""
        where = f"registry {self._registry}"
        credentials = self._credentials
        if credentials and credentials.registry_token:
            raise RegistryAuthenticationFailed(
                f"{where} refused the pull's registry token for {repository}"
            )
        challenges = parse_challenges(header)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            return self._bearer(bearer, repository, sent)
        if any(c.scheme == "basic" for c in challenges):
            if sent is not None and sent.startswith("Basic "):
                raise RegistryAuthenticationFailed(
                    f"{where} refused {self._who()} for {repository} (HTTP 401)"
                )
            self._state.remember(repository, self._fingerprint, AuthScheme("basic"))
            return self._basic(repository)
        offered = ", ".join(sorted({c.scheme for c in challenges})) or "none"
        raise RegistryAuthenticationFailed(
            f"{where} requires authentication for {repository} with a scheme trustd does not "
            f"speak (offered: {offered})"
        )

    # --- Basic -----------------------------------------------------------------------------------

    def _basic(self, repository: str = "", announce: bool = True) -> str:
        credentials = self._credentials
        if not credentials or not (credentials.username or credentials.password):
            raise RegistryAuthenticationFailed(
                f"registry {self._registry} requires a username and password (HTTP Basic)"
                + (f" for {repository}" if repository else "")
                + " and the pull carries none"
            )
        (log.info if announce else log.debug)(
            "sending the pull's credentials for %s to %s",
            self._registry,
            origin(self._transport.base_url),
        )
        return basic_authorization(credentials.username, credentials.password)

    # --- Bearer ----------------------------------------------------------------------------------

    def _bearer(self, challenge: Challenge, repository: str, sent: str | None) -> str:
        realm = challenge.realm
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise RegistryAuthenticationFailed(
                f"registry {self._registry} named an unusable token service {realm[:100]!r}"
            )
        scope = challenge.scope or repository_scope(repository)
        key: TokenKey = (realm, challenge.service, scope, self._fingerprint)
        token = self._state.tokens.get(key)
        if token is None or sent == f"Bearer {token}":
            # None cached, or the cached one was just refused: ask the token service.
            self._state.tokens.forget(key)
            token, lifetime = self._fetch_token(realm, challenge.service, scope, repository)
            self._state.tokens.put(key, token, lifetime)
        self._state.remember(
            repository, self._fingerprint, AuthScheme("bearer", realm, challenge.service, scope)
        )
        return f"Bearer {token}"

    def _may_send_credentials(self, realm: str) -> bool:
        parts = urlsplit(realm)
        if parts.scheme == "https":
            return True
        # Plain HTTP only where the operator chose it: the registry's own host, reached over
        # http:// (configured so, or by the HTTP fallback actually taken).
        registry = urlsplit(self._transport.base_url)
        return parts.hostname == registry.hostname and registry.scheme == "http"

    def _fetch_token(
        self, realm: str, service: str, scope: str, repository: str
    ) -> tuple[str, float]:
        credentials = self._credentials
        params = {"scope": scope}
        if service:
            params["service"] = service
        if credentials and not self._may_send_credentials(realm):
            raise RegistryAuthenticationFailed(
                f"registry {self._registry} sends clients to the token service {origin(realm)} "
                "over plain HTTP; trustd does not send the pull's credentials there (only to "
                "HTTPS, or to a registry configured as plain HTTP on its own host)"
            )
        if credentials:
            log.info(
                "sending the pull's credentials for %s (%s) to the token service %s",
                self._registry,
                repository,
                origin(realm),
            )
        if credentials and credentials.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": CLIENT_ID,
                **params,
            }
            answer = self._token_exchange("POST", realm, None, form, repository)
            if answer is not None:
                return answer
            basic = basic_authorization(credentials.username, credentials.identity_token)
            result = self._token_exchange("GET", realm, basic, None, repository, params)
        elif credentials and (credentials.username or credentials.password):
            params["account"] = credentials.username
            basic = basic_authorization(credentials.username, credentials.password)
            result = self._token_exchange("GET", realm, basic, None, repository, params)
        else:
            result = self._token_exchange("GET", realm, None, None, repository, params)
        assert result is not None  # only a refused POST answers None
        return result

    def _token_exchange(
        self,
        method: str,
        realm: str,
        authorization: str | None,
        form: Mapping[str, str] | None,
        repository: str,
        params: Mapping[str, str] | None = None,
    ) -> tuple[str, float] | None:
        url = realm
        if params:
            url += ("&" if urlsplit(realm).query else "?") + urlencode(params)
        with self._transport.exchange(
            method,
            url,
            timeout=self._transport_timeout(),
            authorization=authorization,
            data=form,
            follow_redirects=False,
        ) as answer:
            status = answer.status
            if method == "POST" and status in _REFRESH_REFUSED:
                log.info(
                    "token service %s refused the OAuth2 refresh (HTTP %d); asking with GET",
                    origin(realm),
                    status,
                )
                return None
            if status in (401, 403):
                raise RegistryAuthenticationFailed(
                    f"token service {origin(realm)} refused {self._who()} for {repository} "
                    f"on registry {self._registry} (HTTP {status})"
                )
            if status != 200:
                raise RegistryRequestFailed(
                    f"token service {origin(realm)} answered HTTP {status} for {repository} "
                    f"on registry {self._registry}",
                    status,
                )
            try:
                body = answer.read(self._token_limit, "the token")
            except ContentTooLarge as error:
                raise RegistryAuthenticationFailed(str(error)) from None
        try:
            return parse_token_response(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise RegistryAuthenticationFailed(
                f"token service {origin(realm)} gave no usable token for {repository} on "
                f"registry {self._registry}: {error}"
            ) from None

    def _transport_timeout(self) -> float:
        left = remaining(self._timeout)
        return self._timeout if left is None else left

    def _who(self) -> str:
        credentials = self._credentials
        if not credentials:
            return "anonymous access"
        if credentials.username:
            return f"user {credentials.username!r}"
        return "the pull's identity token"
