"""On-disk cache of verified Notary metadata, one directory per GUN.

Only bytes that the trusted set has verified are ever written here. Each file is replaced
atomically (write to a temporary file in the same directory, fsync, rename, fsync the directory),
so a crash half-way through a write leaves either the old or the new file, never a torn one.

Layout: ``STATE_DIR/tuf/<gun, percent-encoded>/<role with "/" encoded>.json``. Encoding keeps
every GUN and delegation role in a single path component, so no name can escape the cache.

Several processes share one state directory (the daemon, ``trustctl``, containerd's verifier
hook): ``locked(gun)`` serialises whoever changes a GUN's cache, through ``flock`` on
``STATE_DIR/locks/<gun>.lock`` (outside the GUN's directory, so forgetting a GUN cannot pull
the lock file from under a holder). Waiting for it is bounded by the deadline of the call being
served (``trustd.net.deadline``): a lookup stuck behind another's slow download gives up then.
``root_stamp`` lets a process that holds verified state in memory notice that another one
replaced or removed the root it started from.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

from trustd.errors import CacheCorrupt, NotaryUnavailable
from trustd.net.deadline import remaining

log = logging.getLogger(__name__)

_SAFE_CHARACTERS = "-_.:"  # everything else (including "/") is percent-encoded
# While another process holds a GUN's lock, try again after this long, doubling up to the most:
# flock itself cannot wait with a timeout.
_FIRST_LOCK_PAUSE = 0.002
_MOST_LOCK_PAUSE = 0.05


def _component(name: str) -> str:
    encoded = quote(name, safe=_SAFE_CHARACTERS)
    # "." and ".." are the only names quote() leaves that could walk the tree.
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


class MetadataStore:
    """Verified metadata per GUN under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.root_dir = self.state_dir / "tuf"
        self.lock_dir = self.state_dir / "locks"

    @contextlib.contextmanager
    def locked(self, gun: str) -> Iterator[None]:
        """Hold the cross-process lock of ``gun``'s cache.

        Waits until it is free, but not past the call's deadline: then NotaryUnavailable says
        that another lookup holds it.
        """
        path = self.lock_dir / f"{_component(gun)}.lock"
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            # A read-only state directory (a user's trustctl): nothing can be written either.
            log.debug("no lock for %s in %s: %s", gun, self.lock_dir, error)
            yield
            return
        try:
            _lock_within_deadline(descriptor, gun, path)
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def root_stamp(self, gun: str) -> tuple[int, int, int] | None:
        """Identity of the cached root file (inode, mtime, size); None when there is none."""
        try:
            status = self.path(gun, "root").stat()
        except FileNotFoundError:
            return None
        return (status.st_ino, status.st_mtime_ns, status.st_size)

    def mark_confirmed(self, gun: str, moment: datetime) -> None:
        """Record that the server confirmed ``gun``'s cached data at ``moment``.

        Kept as the modification time of timestamp.json: no extra file and no fsync on every
        lookup. Lost in a crash, it only makes the data look older, which is the safe side.
        """
        with contextlib.suppress(OSError):
            stamp = moment.timestamp()
            os.utime(self.path(gun, "timestamp"), (stamp, stamp))

    def confirmed_at(self, gun: str) -> datetime | None:
        """When the server last confirmed ``gun``'s cached data (see ``mark_confirmed``)."""
        try:
            stamp = self.path(gun, "timestamp").stat().st_mtime
        except OSError:
            return None
        return datetime.fromtimestamp(stamp, UTC)

    def stamp(self, gun: str) -> tuple[tuple[str, int, int, int], ...]:
        """Identity of every cached file of ``gun`` (name, inode, mtime, size): equal stamps mean
        nothing was written or removed in between (files are only ever replaced whole).
        timestamp.json's mtime is left out: ``mark_confirmed`` moves it on every lookup."""
        directory = self._gun_dir(gun)
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return ()
        found = []
        for entry in entries:
            if entry.name.endswith(".json") and not entry.name.startswith(".tmp-"):
                try:
                    status = entry.stat()
                except FileNotFoundError:
                    continue  # removed while listed
                modified = 0 if entry.name == "timestamp.json" else status.st_mtime_ns
                found.append((entry.name, status.st_ino, modified, status.st_size))
        return tuple(sorted(found))

    def forget(self, gun: str) -> bool:
        """Remove everything cached for ``gun``; True if there was anything. Hold ``locked``."""
        directory = self._gun_dir(gun)
        if not directory.is_dir():
            return False
        import shutil  # here, not at the top: `trustctl` starts quicker without it

        shutil.rmtree(directory)
        return True

    def cached_guns(self) -> list[str]:
        """Every GUN with a cached root."""
        if not self.root_dir.is_dir():
            return []
        return sorted(
            unquote(entry.name)
            for entry in self.root_dir.iterdir()
            if (entry / "root.json").is_file()
        )

    def _gun_dir(self, gun: str) -> Path:
        return self.root_dir / _component(gun)

    def path(self, gun: str, role: str) -> Path:
        return self._gun_dir(gun) / f"{_component(role)}.json"

    def load(self, gun: str, role: str) -> bytes | None:
        """The cached bytes of ``role`` for ``gun``, or None when nothing is cached."""
        path = self.path(gun, role)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CacheCorrupt(
                f"cannot read cached {role}.json for {gun} at {path}: {error.strerror}"
            ) from error

    def save(self, gun: str, role: str, data: bytes) -> None:
        """Atomically replace the cached ``role`` of ``gun`` with ``data``."""
        directory = self._gun_dir(gun)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path(gun, role)
        if target.exists() and target.read_bytes() == data:
            return
        import tempfile  # here: a warm lookup saves nothing, and `trustctl` starts quicker

        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_directory(directory)

    def delete(self, gun: str, role: str) -> None:
        """Forget a role that no longer exists (e.g. a removed delegation)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(gun, role).unlink()

    def cached_roles(self, gun: str) -> list[str]:
        directory = self._gun_dir(gun)
        if not directory.is_dir():
            return []
        return sorted(
            unquote(entry.name[: -len(".json")])
            for entry in directory.iterdir()
            if entry.name.endswith(".json") and not entry.name.startswith(".tmp-")
        )


def _lock_within_deadline(descriptor: int, gun: str, path: Path) -> None:
    if _try_lock(descriptor):
        return
    pause = _FIRST_LOCK_PAUSE
    while True:
        left = remaining()
        if left is None:
            # No deadline to keep: wait for the holder, whose own downloads are bounded.
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            return
        if left <= 0:
            raise NotaryUnavailable(
                f"{gun}: another lookup of it holds the lock on its cached trust data ({path}) "
                "and did not release it before this call's deadline"
            )
        time.sleep(min(pause, left))
        if _try_lock(descriptor):
            return
        pause = min(pause * 2, _MOST_LOCK_PAUSE)


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
