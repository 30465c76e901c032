"""The trust data of every GUN this node is asked about: refreshed, shared, held and forgotten.

``Updater.refresh`` answers a lookup: from a result confirmed within ``freshness_window``
(``freshness``), by joining a refresh of the same GUN already in flight (``single_flight``), or
by running one (``refresh``) under the GUN's cross-process lock. ``cached`` answers from what
this node verified before while the server cannot be reached; the policy decides whether that is
acceptable. ``forget`` and ``replace_root`` are the repairs ``trustctl forget-root`` makes.

An optional ``on_refresh(hit)`` callback is told, once per successful refresh, whether it was
answered from what this node already held (nothing but ``timestamp.json`` downloaded) or had to
download more; the daemon counts these as cache hits and misses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from trustd.errors import AuthenticationFailed, NotaryUnavailable
from trustd.formats.notary.cached import cached_root, load_cached_set
from trustd.formats.notary.freshness import RecentResults
from trustd.formats.notary.held_sets import HeldSets
from trustd.formats.notary.metadata import Root
from trustd.formats.notary.pinning import TrustPinning, check_first_root
from trustd.formats.notary.refresh import Refresh, SizeLimits
from trustd.formats.notary.store import MetadataStore
from trustd.formats.notary.transport import NotaryTransport
from trustd.formats.notary.trusted_set import TrustedSet
from trustd.formats.notary.view import VerifiedRepository, verified_view
from trustd.formats.single_flight import SingleFlight
from trustd.net.credentials import Credentials

log = logging.getLogger(__name__)

# (root trusted until now, root trusted from now on or None) -> None; raising stops the change.
BeforeRootChange = Callable[[Root | None, Root | None], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Updater:
    """Keeps the verified trust data of every GUN it is asked about, in memory and on disk."""

    def __init__(
        self,
        store: MetadataStore,
        clock: Callable[[], datetime] = utc_now,
        on_refresh: Callable[[bool], None] | None = None,
        on_verified: Callable[[VerifiedRepository], None] | None = None,
        *,
        held: HeldSets | None = None,
        flight: SingleFlight[VerifiedRepository] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_refresh = on_refresh
        # Told every verified view a refresh produced (the daemon's expiry gauges).
        self.on_verified = on_verified
        self.recent = RecentResults()
        self._held = held or HeldSets(store)
        self._flight: SingleFlight[VerifiedRepository] = flight or SingleFlight(
            NotaryUnavailable, AuthenticationFailed, "a refresh of its trust data"
        )

    @property
    def freshness_window(self) -> float:
        return self.recent.window

    @freshness_window.setter
    def freshness_window(self, seconds: float) -> None:
        self.recent.window = seconds

    def refresh(
        self,
        gun: str,
        transport: NotaryTransport,
        pinning: TrustPinning,
        credentials: Credentials | None = None,
        limits: SizeLimits | None = None,
    ) -> VerifiedRepository:
        """Fetch and verify the current trust data of ``gun``; shared by concurrent callers."""
        recent = self.recent.get(gun)
        if recent is not None:
            return recent

        def run() -> VerifiedRepository:
            refresh = Refresh(
                self.store,
                self._held,
                gun,
                transport,
                pinning,
                self.clock(),
                credentials=credentials,
                limits=limits,
            )
            with self.store.locked(gun):
                result = refresh.run()
            self.recent.remember(gun, result)
            self._report(refresh.downloaded == ["timestamp"])
            self._tell_verified(result)
            return result

        return self._flight.run(gun, credentials, run)

    def cached(
        self, gun: str, pinning: TrustPinning, outage: NotaryUnavailable
    ) -> VerifiedRepository:
        """The trust data of ``gun`` this node verified before, for use while ``outage`` lasts.

        Loaded and verified again from what is held or cached, never downloaded; it must be
        unexpired now. Raises NotaryUnavailable (naming the outage) when nothing usable is held.
        """
        refresh = Refresh(self.store, self._held, gun, None, pinning, self.clock(), outage=outage)
        with self.store.locked(gun):
            view = refresh.run()
        confirmed = self.store.confirmed_at(gun)
        age = 0.0 if confirmed is None else max((refresh.now - confirmed).total_seconds(), 0.0)
        return replace(view, cached_age=age, outage=str(outage))

    def forget_recent(self, gun: str | None = None) -> None:
        """Drop the result held for the freshness window for ``gun`` (every GUN's if None).

        After a config change, or after this process forgot or re-pinned ``gun``: another
        process (the daemon) keeps its own result for at most the window.
        """
        self.recent.forget(gun)

    def _report(self, hit: bool) -> None:
        if self.on_refresh is None:
            return
        try:
            self.on_refresh(hit)
        except Exception:
            # Counting must never turn a verified answer into a failed lookup.
            log.exception("the on_refresh callback failed")

    def _tell_verified(self, repository: VerifiedRepository) -> None:
        if self.on_verified is None:
            return
        try:
            self.on_verified(repository)
        except Exception:
            log.exception("the on_verified callback failed")

    # --- the cache without the network (trustctl, the daemon's expiry scan) ----------------------

    def cached_repository(self, gun: str) -> VerifiedRepository | None:
        """What this node holds for ``gun``, read from the cache and verified again; no network.

        Expired files count (the point is to see what expires); None when nothing is cached.
        A cached root that no longer verifies raises TrustError, as a refresh would.
        """
        with self.store.locked(gun):
            trusted = load_cached_set(self.store, gun, self.clock(), delegations=True)
        if trusted is None:
            return None
        return verified_view(trusted, "cache", self.clock(), {})

    def forget(self, gun: str, before: BeforeRootChange | None = None) -> Root | None:
        """Drop everything this node holds for ``gun``; the next lookup trusts a first root again.

        Waits for a refresh of ``gun`` in flight (in any process sharing the state directory).
        Returns the root that was trusted, if it still verified, for the record. ``before`` is
        called under the lock with (that root, None) just before the change; if it raises,
        nothing changes.
        """
        with self.store.locked(gun):
            old = cached_root(self.store, gun)
            if before is not None:
                before(old, None)
            self.store.forget(gun)
            self._held.drop(gun)
            self.forget_recent(gun)
        return old

    def replace_root(
        self,
        gun: str,
        transport: NotaryTransport,
        pinning: TrustPinning,
        limits: SizeLimits | None = None,
        before: BeforeRootChange | None = None,
    ) -> tuple[Root | None, Root]:
        """Forget ``gun`` and trust the root the server serves now, through ``pinning`` only.

        Under the GUN's lock, so no refresh runs between the check and the replacement. Returns
        (the root trusted before, if it verified; the root trusted now). Nothing changes unless
        the served root satisfies ``pinning``, or if ``before`` (called with both roots once the
        new one is checked, just before the change) raises.
        """
        now = self.clock()
        refresh = Refresh(self.store, self._held, gun, transport, pinning, now, limits=limits)
        with self.store.locked(gun):
            old = cached_root(self.store, gun)
            data = refresh.fetch_root()
            trusted = TrustedSet(gun, data)
            check_first_root(gun, trusted.root, data, now, pinning)
            if before is not None:
                before(old, trusted.root)
            self.store.forget(gun)
            self.store.save(gun, "root", data)
            self._held.drop(gun)
            self.forget_recent(gun)
        return old, trusted.root
