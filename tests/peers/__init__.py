"""Independent Go programs the tests run as peers (notation, cosign, crane ...).

``python3 -m tests.peers.build`` builds them from pinned module versions into a cache outside
the repository (test.sh does it before pytest). A test that needs one calls ``require_peer``,
which skips the test only when the peer could not be built here, saying why.
"""

from __future__ import annotations

from pathlib import Path

from tests.peers.build import (
    PEERS,
    Peer,
    binary_path,
    cache_dir,
    is_built,
    peer_named,
    reason_path,
    stamp_path,
)

__all__ = [
    "PEERS",
    "Peer",
    "peer_path",
    "peer_unavailable_reason",
    "require_peer",
]


def peer_path(name: str) -> Path | None:
    """The built binary of peer ``name``, or None when it is missing or built from another pin."""
    peer = peer_named(name)
    return binary_path(peer) if is_built(peer) else None


def peer_unavailable_reason(name: str) -> str:
    """Why peer ``name`` has no usable binary (empty when it has one)."""
    peer = peer_named(name)
    if is_built(peer):
        return ""
    try:
        recorded = reason_path(peer).read_text().strip()
    except OSError:
        recorded = ""
    if recorded:
        return recorded
    binary = binary_path(peer)
    if binary.exists() and stamp_path(peer).exists():
        return (
            f"{name}: {binary} was built from another pin than {peer.pinned}; "
            f"rebuild with: python3 -m tests.peers.build {name}"
        )
    return (
        f"{name} ({peer.pinned}) has not been built in {cache_dir()}; "
        f"build it with: python3 -m tests.peers.build {name}"
    )


def require_peer(name: str) -> Path:
    """The peer's binary; skips the calling test, with the recorded reason, when it has none."""
    path = peer_path(name)
    if path is not None:
        return path
    import pytest  # only tests call this; the build step must not need pytest

    pytest.skip(peer_unavailable_reason(name))
