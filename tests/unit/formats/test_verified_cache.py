"""What a node verified (Notation, cosign), kept for outages: written behind the pull, and on
close; read back by the next process."""

from __future__ import annotations

import json
import time
from pathlib import Path

from trustd.formats.verified_cache import VerifiedDigests

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
_POLL_SECONDS = 30.0


def _names_on_disk(path: Path) -> set[tuple[str, str]]:
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return set()
    return {(entry["repository"], entry["name"]) for entry in document["entries"]}


def test_a_verification_is_written_by_the_writer_soon_after(tmp_path: Path) -> None:
    path = tmp_path / "verified" / "notation.json"
    verified = VerifiedDigests(path, save_delay=0.0)
    try:
        verified.remember("r/app", "v1", DIGEST, "CN=release", 10)
        verified.remember("r/app", "v2", OTHER, "CN=release", 11)
        wanted = {("r/app", "v1"), ("r/app", DIGEST), ("r/app", "v2"), ("r/app", OTHER)}
        deadline = time.monotonic() + _POLL_SECONDS
        while _names_on_disk(path) != wanted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _names_on_disk(path) == wanted
    finally:
        verified.close()


def test_the_pull_does_not_wait_for_the_disk_and_close_writes_what_is_pending(
    tmp_path: Path,
) -> None:
    path = tmp_path / "verified" / "cosign.json"
    # A writer that waits longer than this test: only close() can have written the file.
    verified = VerifiedDigests(path, save_delay=3600.0)
    verified.remember("r/app", "v1", DIGEST, "key abc", 10)
    assert not path.exists()
    assert verified.lookup("r/app", "v1") is not None  # answered from memory meanwhile
    verified.close()
    assert _names_on_disk(path) == {("r/app", "v1"), ("r/app", DIGEST)}

    again = VerifiedDigests(path)
    entry = again.lookup("r/app", "v1")
    assert entry is not None and entry.digest == DIGEST and entry.signer == "key abc"
    again.close()


def test_after_close_a_verification_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "notation.json"
    verified = VerifiedDigests(path, save_delay=3600.0)
    verified.close()
    assert not path.exists()  # nothing was pending
    verified.remember("r/app", "v1", DIGEST, "CN=release", 10)
    assert _names_on_disk(path) == {("r/app", "v1"), ("r/app", DIGEST)}


def test_without_a_path_nothing_is_written(tmp_path: Path) -> None:
    verified = VerifiedDigests(None, save_delay=0.0)
    verified.remember("r/app", "v1", DIGEST, "CN=release", 10)
    assert verified.lookup("r/app", DIGEST) is not None
    verified.close()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_is_tried_again(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "notation.json"
    verified = VerifiedDigests(path, save_delay=3600.0)
    verified.remember("r/app", "v1", DIGEST, "CN=release", 10)
    verified.flush()  # cannot create the directory: logged, still pending
    assert not path.exists()
    blocker.unlink()
    verified.close()
    assert _names_on_disk(path) == {("r/app", "v1"), ("r/app", DIGEST)}
