"""What an endpoint's clients share about authentication: bearer tokens until they expire, and
how the registry last asked each repository to authenticate. Data only; ``auth.py`` talks to
token services."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TOKEN_CACHE_SIZE = 1024


# --- the token cache -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    expires_at: float  # on the cache's clock


TokenKey = tuple[str, str, str, str]  # realm, service, scope, credential fingerprint


class TokenCache:
    """Bearer tokens until shortly before they expire; ``clock`` is monotonic seconds."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, size: int = TOKEN_CACHE_SIZE
    ) -> None:
        self._clock = clock
        self._size = size
        self._tokens: dict[TokenKey, Token] = {}
        self._lock = threading.Lock()

    def get(self, key: TokenKey) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return None
            if token.expires_at <= self._clock():
                del self._tokens[key]
                return None
            return token.value

    def put(self, key: TokenKey, value: str, lifetime: float) -> None:
        # Renewed a little early, so a token never expires between the check and its use.
        margin = min(5.0, lifetime / 2)
        token = Token(value, self._clock() + max(lifetime - margin, 0.0))
        with self._lock:
            if key not in self._tokens and len(self._tokens) >= self._size:
                now = self._clock()
                for stale in [k for k, t in self._tokens.items() if t.expires_at <= now]:
                    del self._tokens[stale]
                if len(self._tokens) >= self._size:
                    del self._tokens[next(iter(self._tokens))]  # the oldest
            self._tokens[key] = token

    def forget(self, key: TokenKey) -> None:
        with self._lock:
            self._tokens.pop(key, None)


# --- what the registry asked for, per repository -------------------------------------------------


@dataclass(frozen=True)
class AuthScheme:
    """How the registry last asked a repository to authenticate."""

    scheme: str  # "bearer" or "basic"
    realm: str = ""
    service: str = ""
    scope: str = ""


class AuthState:
    """Per endpoint, shared by its clients: the token cache and each repository's challenge."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens = TokenCache(clock)
        self._schemes: dict[tuple[str, str], AuthScheme] = {}
        self._lock = threading.Lock()

    def scheme(self, repository: str, fingerprint: str) -> AuthScheme | None:
        with self._lock:
            return self._schemes.get((repository, fingerprint))

    def remember(self, repository: str, fingerprint: str, scheme: AuthScheme) -> None:
        with self._lock:
            if len(self._schemes) >= TOKEN_CACHE_SIZE:
                self._schemes.clear()
            self._schemes[(repository, fingerprint)] = scheme
