"""Independent Go programs the tests run as peers (notation, cosign, crane ...).

``python3 -m tests.peers.build`` builds them from pinned module versions into a cache outside
the repository (test.sh does it before pytest). A test that needs one calls ``require_peer``,
which skips the test only when the peer could not be built here, saying why.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["peer_path", "peer_unavailable_reason", "require_peer"]

# tests.peers.build is imported inside the functions: importing it here, with the package, would
# make 'python3 -m tests.peers.build' run a module that is already imported.


def peer_path(name: str) -> Path | None:
    """The built binary of peer ``name``, or None when it is missing or built from another pin."""
    from tests.peers import build

    peer = build.peer_named(name)
    return build.binary_path(peer) if build.is_built(peer) else None


def peer_unavailable_reason(name: str) -> str:
    """Why peer ``name`` has no usable binary (empty when it has one)."""
    from tests.peers import build

    peer = build.peer_named(name)
    if build.is_built(peer):
        return ""
    try:
        recorded = build.reason_path(peer).read_text().strip()
    except OSError:
        recorded = ""
    if recorded:
        return recorded
    binary = build.binary_path(peer)
    if binary.exists() and build.stamp_path(peer).exists():
        return (
            f"{name}: {binary} was built from another pin than {peer.pinned}; "
            f"rebuild with: python3 -m tests.peers.build {name}"
        )
    return (
        f"{name} ({peer.pinned}) has not been built in {build.cache_dir()}; "
        f"build it with: python3 -m tests.peers.build {name}"
    )


def require_peer(name: str) -> Path:
    """The peer's binary; skips the calling test, with the recorded reason, when it has none.

    A peer never built here (or built from another pin), with no recorded failure, is built now
    (the build step may not have run, e.g. pytest run by hand), so a test skips only when the
    build itself failed.
    """
    from tests.peers import build

    path = peer_path(name)
    if path is None and not build.reason_path(build.peer_named(name)).exists():
        build.ensure_locked(build.peer_named(name))
        path = peer_path(name)
    if path is not None:
        return path
    import pytest  # only tests call this; the build step must not need pytest

    # The first line says why; the build's full output stays in the reason file.
    reason = peer_unavailable_reason(name)
    first_line = reason.splitlines()[0] if reason else f"{name} is not available"
    pytest.skip(first_line)
