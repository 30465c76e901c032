"""Who else can read trustd's secrets or change what it trusts: warnings on file permissions.

The config decides which images the node runs, the CA files and the trust cache decide whom
trustd believes, and ``password_file`` and client keys are secrets. A file among them that
another user can change (or, for a secret, read) is reported; nothing is refused, so a node
whose files are loose keeps pulling while the operator fixes them. ``trustd check-config``
prints these warnings and the daemon logs them when it starts and on every reload.

"Another user" is anyone but root and the user running trustd: a file owned by someone else,
write (for secrets: any) permission for others, and the same for the file's group unless that
group is root's. A directory holding the config counts too: whoever can write it can put
another file in its place (unless the sticky bit keeps them to their own files).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trustd.config.model import Config
from trustd.localapi.peer import ROOT_GID, ROOT_UID, directory_problem, group_name, user_name

Stat = Callable[[Path], os.stat_result]


@dataclass(frozen=True)
class _Checked:
    label: str  # "the config file", "notary[0].password_file", ...
    path: Path
    secret: bool  # others must not read it, not only not change it


def permission_warnings(
    config: Config, *, stat_path: Stat = os.stat, euid: int | None = None
) -> list[str]:
    """One sentence for each file or directory of ``config`` others can change or read."""
    trusted_uids = {ROOT_UID, os.geteuid() if euid is None else euid}
    warnings: list[str] = []
    for item in _files_of(config):
        try:
            status = stat_path(item.path)
        except OSError:
            continue  # gone since the config was loaded; loading it again says so
        problem = _problem(status, item.secret, trusted_uids)
        if problem is not None:
            warnings.append(f"{item.label} {item.path} {problem}; {_advice(item)}")
    if config.source is not None:
        directory = config.source.parent
        try:
            problem = directory_problem(stat_path(directory), trusted_uids)
        except OSError:
            problem = None
        if problem is not None:
            warnings.append(
                f"the directory {directory} of the config file {problem}, so the config "
                f"can be replaced; chmod go-w {directory} (and chown root if needed)"
            )
    return warnings


def _files_of(config: Config) -> Iterator[_Checked]:
    if config.source is not None:
        yield _Checked("the config file", config.source, secret=False)
    for server in config.notary:
        if server.password_file is not None:
            yield _Checked(f"{server.source}.password_file", server.password_file, secret=True)
        if server.client_key is not None:
            yield _Checked(f"{server.source}.client_key", server.client_key, secret=True)
        if server.ca is not None:
            yield _Checked(f"{server.source}.ca", server.ca, secret=False)
    for prefix, ca_file in config.trust_pinning.ca:
        yield _Checked(f'trust_pinning.ca."{prefix}"', ca_file, secret=False)
    yield _Checked("the trust cache (server.state_dir)", config.server.state_dir, secret=False)


def _problem(status: os.stat_result, secret: bool, trusted_uids: set[int]) -> str | None:
    if status.st_uid not in trusted_uids:
        access = "read and change" if secret else "change"
        return f"is owned by {user_name(status.st_uid)}, who can {access} it"
    mode = stat.S_IMODE(status.st_mode)
    for who, shift in (("every user", 0), (group_name(status.st_gid), 3)):
        if shift and status.st_gid == ROOT_GID:
            continue  # root's group: as trusted as root
        bits = (mode >> shift) & 0o7
        allowed = [word for word, bit in (("read", 0o4 * secret), ("change", 0o2)) if bits & bit]
        if allowed:
            return f"has mode {mode:04o}: {who} can {' and '.join(allowed)} it"
    return None


def _advice(item: _Checked) -> str:
    if item.secret:
        return f"chmod 600 {item.path} (and chown root if needed)"
    return f"chmod go-w {item.path} (and chown root if needed)"
