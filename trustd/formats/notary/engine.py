"""The trust engine: configured Notary servers, trust pinning, cache and resolution in one place.

This is what the policy, the CLI and the daemon call. It owns one transport (keep-alive session)
per configured Notary server and one ``Updater`` whose verified state outlives config reloads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509

from trustd.errors import ConfigError, NotaryUnavailable
from trustd.formats.notary.metadata import Root
from trustd.formats.notary.pinning import TrustPinning
from trustd.formats.notary.refresh import SizeLimits
from trustd.formats.notary.store import MetadataStore
from trustd.formats.notary.transport import NotaryEndpoint, NotaryTransport
from trustd.formats.notary.updater import BeforeRootChange, Updater, utc_now
from trustd.formats.notary.view import VerifiedRepository
from trustd.net.credentials import Credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineUse:
    """Permission to answer from cached trust data while the Notary server is unreachable.

    The cached data must still verify and be unexpired (notary's own fallback); ``max_age``
    (seconds since the server last confirmed it) narrows that further.
    """

    max_age: float | None = None


class NotarySettings(Protocol):
    """What the engine needs to know about one Notary server
    (``trustd.config.model.NotaryServer``)."""

    @property
    def url(self) -> str: ...
    @property
    def ca(self) -> Path | None: ...
    @property
    def client_cert(self) -> Path | None: ...
    @property
    def client_key(self) -> Path | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def timeout(self) -> float: ...
    @property
    def max_metadata_bytes(self) -> int: ...
    @property
    def root_max_bytes(self) -> int: ...
    @property
    def timestamp_max_bytes(self) -> int: ...
    @property
    def retries(self) -> int: ...


class PinningSettings(Protocol):
    @property
    def root_key_ids(self) -> tuple[str, ...]: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def allow_tofu(self) -> bool: ...


class TrustSettings(Protocol):
    """The part of ``trustd.config.model.Config`` the engine reads."""

    def notary_for(self, registry: str) -> NotarySettings: ...

    def pinning_for(self, gun: str) -> PinningSettings: ...

    @property
    def freshness_window(self) -> float: ...


class TrustEngine:
    """Resolves signed tags and digests for any GUN, per the current configuration."""

    def __init__(
        self,
        settings: TrustSettings,
        state_dir: Path,
        clock: Callable[[], datetime] = utc_now,
        on_refresh: Callable[[bool], None] | None = None,
        on_verified: Callable[[VerifiedRepository], None] | None = None,
    ) -> None:
        # on_refresh(hit), on_verified(view): see Updater; the daemon passes its cache hit/miss
        # counter and its expiry watch.
        self.updater = Updater(MetadataStore(state_dir), clock, on_refresh, on_verified)
        self.updater.freshness_window = settings.freshness_window
        self._settings = settings
        # GUNs currently answered from the cache, so an outage is logged once, not per call.
        self._offline: set[str] = set()
        self._transports: dict[object, NotaryTransport] = {}
        self._pinning_cas: dict[Path, tuple[x509.Certificate, ...]] = {}
        self._lock = threading.Lock()

    def reconfigure(self, settings: TrustSettings) -> None:
        """Use new settings; verified state is kept, connections to changed servers are not."""
        with self._lock:
            old = self._transports
            self._settings = settings
            self._transports = {}
            self._pinning_cas = {}
        self.updater.freshness_window = settings.freshness_window
        self.updater.forget_recent()  # results verified under the old pinning or servers
        for transport in old.values():
            transport.close()

    def close(self) -> None:
        with self._lock:
            transports, self._transports = self._transports, {}
        for transport in transports.values():
            transport.close()

    # --- lookups ---------------------------------------------------------------------------------

    def repository(
        self,
        registry: str,
        gun: str,
        credentials: Credentials | None = None,
        offline: OfflineUse | None = None,
    ) -> VerifiedRepository:
        """The current verified trust data of ``gun`` (refreshed now, or within the window).

        With ``offline``, an unreachable server is answered from the node's cache instead
        (``VerifiedRepository.from_cache``); without it, or when the cache cannot serve,
        NotaryUnavailable is raised. Verification failures are never masked.
        """
        notary = self._settings.notary_for(registry)
        transport = self._transport(notary)
        limits = _size_limits(notary)
        pinning = self._pinning(gun)
        try:
            repository = self.updater.refresh(
                gun, transport, pinning, credentials=credentials, limits=limits
            )
        except NotaryUnavailable as outage:
            if offline is None:
                raise
            return self._from_cache(gun, pinning, outage, offline)
        if gun in self._offline:
            self._offline.discard(gun)
            log.warning("notary reachable again for %s; cached trust data no longer used", gun)
        return repository

    def _from_cache(
        self, gun: str, pinning: TrustPinning, outage: NotaryUnavailable, offline: OfflineUse
    ) -> VerifiedRepository:
        repository = self.updater.cached(gun, pinning, outage)
        age = repository.cached_age or 0.0
        if offline.max_age is not None and age > offline.max_age:
            raise NotaryUnavailable(
                f"{outage}; the trust data of {gun} cached on this node was last confirmed "
                f"{age:.0f}s ago, more than max_offline_age ({offline.max_age:g}s)"
            )
        if gun not in self._offline:
            self._offline.add(gun)
            log.warning(
                "%s; using the trust data of %s cached on this node (confirmed %.0fs ago) "
                "until the server answers again",
                outage,
                gun,
                age,
            )
        return repository

    # --- the node's cache: listing, forgetting, re-pinning (trustctl) ----------------------------

    def cached_guns(self) -> list[str]:
        return self.updater.store.cached_guns()

    def cached_repository(self, gun: str) -> VerifiedRepository | None:
        """What this node holds for ``gun``, verified again from the cache; no network."""
        return self.updater.cached_repository(gun)

    def cache_stamp(self, gun: str) -> object:
        """Changes whenever a cached file of ``gun`` is written or removed (cheap: no reads)."""
        return self.updater.store.stamp(gun)

    def forget(self, gun: str, before: BeforeRootChange | None = None) -> Root | None:
        """Forget ``gun``'s trusted root and data; returns the root trusted until now, if any.
        ``before`` (e.g. the audit record) runs under the GUN's lock just before the change;
        if it raises, nothing changes."""
        return self.updater.forget(gun, before)

    def pin_root(
        self,
        registry: str,
        gun: str,
        key_ids: Sequence[str],
        before: BeforeRootChange | None = None,
    ) -> tuple[Root | None, Root]:
        """Trust the root ``gun``'s server serves now if a threshold of ``key_ids`` signs it,
        instead of the cached one; (root trusted before, root trusted now). Raises (and changes
        nothing) if the served root is not signed so, or if ``before`` raises."""
        notary = self._settings.notary_for(registry)
        limits = _size_limits(notary)
        pinning = TrustPinning(pinned_key_ids=tuple(key_ids), allow_tofu=False)
        return self.updater.replace_root(
            gun, self._transport(notary), pinning, limits, before=before
        )

    # --- configuration -> objects ----------------------------------------------------------------

    def _transport(self, notary: NotarySettings) -> NotaryTransport:
        key = (
            notary.url,
            notary.ca,
            notary.client_cert,
            notary.client_key,
            notary.username,
            notary.password_file,
            notary.timeout,
            notary.retries,
        )
        with self._lock:
            transport = self._transports.get(key)
            if transport is None:
                endpoint = NotaryEndpoint(
                    url=notary.url,
                    ca_file=notary.ca,
                    client_cert=notary.client_cert,
                    client_key=notary.client_key,
                    timeout=notary.timeout,
                    default_credentials=_configured_credentials(notary),
                    retries=notary.retries,
                )
                transport = NotaryTransport(endpoint)
                self._transports[key] = transport
            return transport

    def _pinning(self, gun: str) -> TrustPinning:
        rule = self._settings.pinning_for(gun)
        certificates: tuple[x509.Certificate, ...] = ()
        if rule.ca_file is not None:
            with self._lock:
                certificates = self._pinning_cas.get(rule.ca_file, ())
            if not certificates:
                certificates = _load_certificates(rule.ca_file)
                with self._lock:
                    self._pinning_cas[rule.ca_file] = certificates
        return TrustPinning(
            pinned_key_ids=tuple(rule.root_key_ids),
            ca_certificates=certificates,
            allow_tofu=rule.allow_tofu,
        )


def _size_limits(notary: NotarySettings) -> SizeLimits:
    return SizeLimits(
        root=notary.root_max_bytes,
        timestamp=notary.timestamp_max_bytes,
        other=notary.max_metadata_bytes,
    )


def _configured_credentials(notary: NotarySettings) -> Credentials | None:
    if not notary.username:
        return None
    password = ""
    if notary.password_file is not None:
        try:
            password = notary.password_file.read_text().strip()
        except OSError as error:
            raise ConfigError(
                f"cannot read the Notary password file {notary.password_file}: {error.strerror}"
            ) from error
    return Credentials(username=notary.username, password=password)


def _load_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load the trust pinning CA {path}: {error}") from error
