"""The daemon's watch over expiring trust data: gauges, and a warning before anything expires.

Fed two ways: every refresh hands over the view it verified (``observe``), and a scan of the
whole cache (``scan``, at start and every minute in a thread of its own) covers repositories no
pull has looked up since the daemon started and notices repositories ``trustctl forget-root``
removed. The scan reads each GUN under its cross-process lock and verifies the files again;
unverified bytes never become a figure.

A warning is logged once per item (repository, role or certificate, expiry time) when it is
within ``server.expiry_warning_days``; a re-signed role that again comes close warns again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from trustd.errors import TrustError
from trustd.formats.notary.lifetime import Expiry, due, repository_expiries
from trustd.formats.notary.updater import utc_now
from trustd.formats.notary.view import VerifiedRepository
from trustd.service.metrics import ExpiryGauges

log = logging.getLogger("trustd.service.expiry")

SCAN_INTERVAL = 60.0  # seconds between scans of the whole cache


class CachedTrust(Protocol):
    """What the watch reads (``trustd.formats.notary.engine.TrustEngine``)."""

    def cached_guns(self) -> list[str]: ...

    def cached_repository(self, gun: str) -> VerifiedRepository | None: ...

    def cache_stamp(self, gun: str) -> object: ...


def expiries_of(repository: VerifiedRepository) -> list[Expiry]:
    return repository_expiries(repository.gun, repository.root, repository.expires)


class ExpiryWatch:
    """Keeps the expiry gauges current and warns before anything expires."""

    def __init__(
        self,
        warning_days: int,
        gauges: ExpiryGauges | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.warning_days = warning_days
        self.gauges = gauges
        self.clock = clock
        self._warned: set[tuple[str, str, str, datetime]] = set()
        # The cache stamp of each GUN as last scanned: unchanged files are not verified again.
        self._scanned: dict[str, object] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, repository: VerifiedRepository) -> None:
        """A refresh verified ``repository`` (the updater's ``on_verified``)."""
        self._update(repository.gun, expiries_of(repository))

    def scan(self, trust: CachedTrust) -> None:
        """Read every cached repository again; drop figures of repositories no longer cached."""
        guns = trust.cached_guns()
        for gun in guns:
            stamp = trust.cache_stamp(gun)
            if self._scanned.get(gun) == stamp:
                continue  # nothing written since the last scan; seconds left move at scrape
            try:
                repository = trust.cached_repository(gun)
            except TrustError as error:
                log.warning("cannot read the cached trust data of %s: %s", gun, error)
                continue
            self._scanned[gun] = stamp
            if repository is not None:
                self._update(gun, expiries_of(repository))
        for gun in set(self._scanned) - set(guns):
            del self._scanned[gun]
        if self.gauges is not None:
            self.gauges.retain(guns)

    def start(self, trust: CachedTrust, interval: float = SCAN_INTERVAL) -> None:
        """Scan now and then every ``interval`` seconds, in a thread of its own (a scan waits
        for refreshes in flight, which must not hold up the daemon's main loop)."""

        def run() -> None:
            while True:
                try:
                    self.scan(trust)
                except Exception:  # a figure is not worth the daemon; try again next time
                    log.exception("scanning the trust cache for expiry failed")
                if self._stop.wait(interval):
                    return

        self._thread = threading.Thread(target=run, name="trustd-expiry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _update(self, gun: str, expiries: list[Expiry]) -> None:
        if self.gauges is not None:
            self.gauges.set_repository(gun, expiries)
        if self.warning_days <= 0:
            return
        now = self.clock()
        for item in due(expiries, now, timedelta(days=self.warning_days)):
            key = (item.gun, str(item.kind), item.name, item.expires)
            with self._lock:
                if key in self._warned:
                    continue
                self._warned.add(key)
            log.warning(
                "trust data expires soon: %s; %s (docs/operations.md: trust data expires soon)",
                item.describe(now),
                _advice(item),
            )


def _advice(item: Expiry) -> str:
    return f"{item.owner_advice()}, or every pull of it fails"
