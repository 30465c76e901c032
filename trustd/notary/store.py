"""On-disk cache of verified Notary metadata, one directory per GUN.

Only bytes that the trusted set has verified are ever written here. Each file is replaced
atomically (write to a temporary file in the same directory, fsync, rename, fsync the directory),
so a crash half-way through a write leaves either the old or the new file, never a torn one.

Layout: ``STATE_DIR/tuf/<gun, percent-encoded>/<role with "/" encoded>.json``. Encoding keeps
every GUN and delegation role in a single path component, so no name can escape the cache.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from urllib.parse import quote, unquote

from trustd.errors import CacheCorrupt

_SAFE_CHARACTERS = "-_.:"  # everything else (including "/") is percent-encoded


def _component(name: str) -> str:
    encoded = quote(name, safe=_SAFE_CHARACTERS)
    # "." and ".." are the only names quote() leaves that could walk the tree.
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


class MetadataStore:
    """Verified metadata per GUN under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.root_dir = Path(state_dir) / "tuf"

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


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
