"""Results a refresh confirmed less than ``freshness_window`` seconds ago, per GUN.

kubelet asks ImageStatus, PullImage and ImageStatus again for one container start; within the
window those share one refresh, so a re-signed or removed tag is seen at most a window later.
"""

from __future__ import annotations

import threading
import time

from trustd.formats.notary.view import VerifiedRepository

# Entries past the window are pruned once this many GUNs are held.
_PRUNE_SIZE = 256


class RecentResults:
    """The last verified view per GUN with when (monotonic) the server confirmed it."""

    def __init__(self) -> None:
        self.window = 0.0  # seconds; 0 keeps nothing
        self._results: dict[str, tuple[VerifiedRepository, float]] = {}
        self._lock = threading.Lock()

    def get(self, gun: str) -> VerifiedRepository | None:
        if self.window <= 0:
            return None
        with self._lock:
            held = self._results.get(gun)
        if held is None or time.monotonic() - held[1] >= self.window:
            return None
        return held[0]

    def remember(self, gun: str, result: VerifiedRepository) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._results) >= _PRUNE_SIZE:
                stale = [g for g, (_, at) in self._results.items() if now - at >= self.window]
                for gone in stale:
                    del self._results[gone]
            self._results[gun] = (result, now)

    def forget(self, gun: str | None = None) -> None:
        """Drop the result held for ``gun`` (every GUN's if None)."""
        with self._lock:
            if gun is None:
                self._results.clear()
            else:
                self._results.pop(gun, None)
