"""Who is at the other end of the verifier socket, and whether its directory can be trusted.

Both ends check: the daemon answers only root, its own user and ``server.verifier_group``
(``trustd.localapi.server``), and a client (the image verifier, ``trustctl verify``) uses only an
answer of a daemon running as root or as the client's own user (``trustd.localapi.client``). The
kernel says who connected or listens (``SO_PEERCRED``: the credentials the peer had when it
called ``connect()`` or ``listen()``), so a process cannot claim to be another.

A socket in a directory another user can write is refused by both: that user could remove it and
listen in its place (while the daemon is stopped, or at any time), or replace the directory.

The owner and mode checks of a directory are the config's too (``trustd.config.permissions``).

Standard library only, and little of it: the clients import this on their fast path.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from collections.abc import Set

ROOT_UID = 0
ROOT_GID = 0
_INT_BYTES = 4  # struct ucred: pid_t, uid_t, gid_t, each 32 bits on Linux


def peer_credentials(connection: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a connected unix socket: its
    effective user and group when it connected (or, for a daemon, started listening)."""
    data = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 3 * _INT_BYTES)
    if len(data) != 3 * _INT_BYTES:
        raise OSError(f"SO_PEERCRED gave {len(data)} bytes, not {3 * _INT_BYTES}")
    pid, uid, gid = (
        int.from_bytes(data[start : start + _INT_BYTES], sys.byteorder, signed=start == 0)
        for start in range(0, 3 * _INT_BYTES, _INT_BYTES)
    )
    return pid, uid, gid


def trusted_uids() -> frozenset[int]:
    """The users whose sockets and directories this process trusts: root and itself."""
    return frozenset({ROOT_UID, os.geteuid()})


def user_name(uid: int) -> str:
    """``uid 1000 (alice)``, or ``uid 1000`` for a user the node does not know."""
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    """``group adm (gid 4)``, or ``gid 4`` for a group the node does not know."""
    import grp

    try:
        return f"group {grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def directory_problem(
    status: os.stat_result, trusted: Set[int], *, sticky_protects: bool = True
) -> str | None:
    """Why a directory with ``status`` lets a user outside ``trusted`` (and root's group) put an
    entry of theirs in place of one of ours (``is owned by ...``, ``has mode ...``), or None.
    With ``sticky_protects``, the sticky bit keeps others to their own entries."""
    if status.st_uid not in trusted:
        return f"is owned by {user_name(status.st_uid)}"
    mode = stat.S_IMODE(status.st_mode)
    if sticky_protects and mode & stat.S_ISVTX:
        return None
    if mode & 0o002:
        return f"has mode {mode:04o}: every user can write in it"
    if mode & 0o020 and status.st_gid != ROOT_GID:
        return f"has mode {mode:04o}: {group_name(status.st_gid)} can write in it"
    return None


def socket_directory_problem(socket_path: str, trusted: frozenset[int] | None = None) -> str | None:
    """Why a socket at ``socket_path`` is not safe to use, or None: its directory, or a
    directory above it, can be written by a user other than ``trusted`` (root and this
    process's user by default).

    The socket's own directory must be writable by trusted users only: anyone else who can
    write there can put a socket of their own at the path. A directory above it may be
    writable by others when its sticky bit keeps them to their own entries (``/tmp``).
    Symbolic links are followed, and the directories of the path as written are checked too.
    """
    trusted = trusted_uids() if trusted is None else trusted
    written = os.path.dirname(os.path.abspath(socket_path))
    real = os.path.realpath(written)
    checked: set[str] = set()
    for chain in (written, real):
        directory, own = chain, True
        while True:
            if directory not in checked:
                checked.add(directory)
                problem = _problem_at(directory, own, trusted)
                if problem is not None:
                    return problem
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory, own = parent, False
    return None


def _problem_at(directory: str, own: bool, trusted: frozenset[int]) -> str | None:
    try:
        status = os.stat(directory)
    except FileNotFoundError:
        return None  # not there yet: nothing listens in it; the daemon creates it
    except OSError as error:
        return f"the directory {directory} cannot be checked ({error.strerror or error})"
    what = "the socket's directory" if own else "the directory"
    # In the socket's own directory the sticky bit is no help: another user can create the
    # socket's path while ours is not there.
    problem = directory_problem(status, trusted, sticky_protects=not own)
    return None if problem is None else f"{what} {directory} {problem}"
