"""Verified trusted sets kept in memory between refreshes, per GUN.

Each is kept with the stamp of the cached root it goes with: when another process replaces or
removes that root (``trustctl forget-root`` repairing a re-keyed repository), the held set no
longer counts and the next refresh reads the cache again.
"""

from __future__ import annotations

import logging
import threading

from trustd.formats.notary.store import MetadataStore
from trustd.formats.notary.trusted_set import TrustedSet

log = logging.getLogger(__name__)


class HeldSets:
    """The trusted set held per GUN; only the refresh in flight for a GUN (which holds the GUN's
    cross-process lock) reads or replaces that GUN's entry."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._sets: dict[str, tuple[TrustedSet, tuple[int, int, int] | None]] = {}
        self._lock = threading.Lock()

    def get(self, gun: str) -> TrustedSet | None:
        with self._lock:
            held = self._sets.get(gun)
        if held is None:
            return None
        trusted, stamp = held
        if stamp != self._store.root_stamp(gun):
            log.info("the cached root of %s changed on disk; reading the cache again", gun)
            return None
        return trusted

    def keep(self, gun: str, trusted: TrustedSet) -> None:
        stamp = self._store.root_stamp(gun)
        with self._lock:
            self._sets[gun] = (trusted, stamp)

    def drop(self, gun: str) -> None:
        with self._lock:
            self._sets.pop(gun, None)
