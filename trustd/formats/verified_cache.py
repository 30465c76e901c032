"""Digests this node verified signatures for, kept so an outage does not stop what ran before.

Notary v1 keeps its verified trust data and judges from it during an outage. Formats whose
signatures live in the registry (Notation, cosign) keep what they concluded instead: which digest
a tag resolved to and was verified as, and when. Under ``offline = "cached"`` a rule may answer
from an entry no older than its ``max_offline_age`` while the registry cannot be reached; the
entry says nothing while the registry answers (every lookup then verifies again).

One small JSON file per format in the state directory, replaced atomically; a file that cannot
be read is set aside and reported, never silently trusted or dropped. The file is written by a
thread of its own shortly after a verification (and on ``close``), not on the pull's path: the
decision never waits for the disk, and a burst of verifications is one write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from trustd.net.descriptor import is_digest

log = logging.getLogger(__name__)

# Entries kept per format; the oldest go first. A node runs far fewer images than this.
MAX_ENTRIES = 4096
_FILE_LIMIT = 8 * 1024 * 1024
# Seconds the writer waits after a verification for more to write with it.
SAVE_DELAY = 0.5
_CLOSE_WAIT = 10.0


@dataclass(frozen=True)
class VerifiedEntry:
    """``name`` (a tag, or the digest itself) of ``repository`` verified as ``digest``."""

    repository: str
    name: str
    digest: str
    signer: str
    size: int | None
    verified_at: float  # seconds since the epoch

    def age(self, now: float) -> float:
        return max(now - self.verified_at, 0.0)


class VerifiedDigests:
    """What one format verified on this node, by (repository, tag or digest)."""

    def __init__(self, path: Path | None, save_delay: float = SAVE_DELAY) -> None:
        # ``path`` None keeps entries in memory only (trustctl's --local without a state dir).
        self.path = path
        self.save_delay = save_delay
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], VerifiedEntry] = {}
        self._loaded = False
        self._dirty = False  # entries not yet written
        self._save_lock = threading.Lock()  # one write of the file at a time
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._writer: threading.Thread | None = None

    def remember(
        self, repository: str, name: str, digest: str, signer: str, size: int | None
    ) -> None:
        """Record a verification that just succeeded (``name`` a tag or the digest)."""
        entry = VerifiedEntry(repository, name, digest, signer, size, time.time())
        with self._lock:
            self._load()
            self._entries.pop((repository, name), None)
            self._entries[(repository, name)] = entry
            if name != digest:
                # The digest itself was verified too: a pull by digest may use it.
                self._entries.pop((repository, digest), None)
                self._entries[(repository, digest)] = VerifiedEntry(
                    repository, digest, digest, signer, size, entry.verified_at
                )
            while len(self._entries) > MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]
            if self.path is None:
                return
            self._dirty = True
            closed = self._closing.is_set()
            if self._writer is None and not closed:
                self._writer = threading.Thread(
                    target=self._write_behind, name="trustd-verified-writer", daemon=True
                )
                self._writer.start()
        if closed:
            self.flush()
        else:
            self._wake.set()

    def lookup(self, repository: str, name: str) -> VerifiedEntry | None:
        with self._lock:
            self._load()
            return self._entries.get((repository, name))

    def flush(self) -> None:
        """Write what is not written yet, now."""
        with self._save_lock:
            with self._lock:
                if not self._dirty:
                    return
                entries = list(self._entries.values())
                self._dirty = False
            if not self._save(entries):
                with self._lock:
                    self._dirty = True  # tried again after the next verification

    def close(self) -> None:
        """Stop the writer and write what is pending; later verifications are written at once."""
        self._closing.set()
        self._wake.set()
        with self._lock:
            writer = self._writer
        if writer is not None:
            writer.join(_CLOSE_WAIT)
        self.flush()

    # --- disk ------------------------------------------------------------------------------------

    def _write_behind(self) -> None:
        while True:
            self._wake.wait()
            # More verifications may follow (a pod's images, a rollout): one write for them.
            if self._closing.wait(self.save_delay):
                return  # close() writes what is pending
            self._wake.clear()
            self.flush()

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.path is None:
            return
        try:
            with self.path.open("rb") as handle:
                data = handle.read(_FILE_LIMIT + 1)
        except FileNotFoundError:
            return
        except OSError as error:
            log.warning("cannot read %s: %s; starting without it", self.path, error)
            return
        try:
            if len(data) > _FILE_LIMIT:
                raise ValueError(f"larger than {_FILE_LIMIT} bytes")
            self._entries = _parse(json.loads(data))
        except (ValueError, TypeError, KeyError) as error:
            aside = self.path.with_name(self.path.name + ".unreadable")
            log.error("%s cannot be read (%s); kept as %s", self.path, error, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)

    def _save(self, entries: list[VerifiedEntry]) -> bool:
        if self.path is None:
            return True
        document = {
            "version": 1,
            "entries": [
                {
                    "repository": e.repository,
                    "name": e.name,
                    "digest": e.digest,
                    "signer": e.signer,
                    "size": e.size,
                    "verified_at": e.verified_at,
                }
                for e in entries
            ],
        }
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".verified-")
            try:
                with os.fdopen(fd, "w") as handle:
                    json.dump(document, handle, separators=(",", ":"))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as error:
            # The verification stands; only the outage fallback for it is lost.
            log.warning("cannot write %s: %s", self.path, error)
            return False
        return True


def _parse(document: object) -> dict[tuple[str, str], VerifiedEntry]:
    if not isinstance(document, dict) or document.get("version") != 1:
        raise ValueError("not a version 1 document")
    entries = document["entries"]
    if not isinstance(entries, list):
        raise ValueError("entries is not an array")
    parsed: dict[tuple[str, str], VerifiedEntry] = {}
    for item in entries[-MAX_ENTRIES:]:
        if not isinstance(item, dict):
            raise ValueError("an entry is not an object")
        repository, name, digest = item["repository"], item["name"], item["digest"]
        signer, size, verified_at = item["signer"], item["size"], item["verified_at"]
        if not all(isinstance(v, str) for v in (repository, name, signer)) or not is_digest(digest):
            raise ValueError("an entry has a field of the wrong type")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            raise ValueError("an entry's size is not an integer")
        if not isinstance(verified_at, int | float) or isinstance(verified_at, bool):
            raise ValueError("an entry's time is not a number")
        parsed[(repository, name)] = VerifiedEntry(
            repository, name, digest, signer, size, float(verified_at)
        )
    return parsed
