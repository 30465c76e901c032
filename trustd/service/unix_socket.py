"""Making room for a unix socket that trustd is about to listen on."""

from __future__ import annotations

import stat
from pathlib import Path


def prepare_socket_path(path: Path) -> None:
    """Create ``path``'s directory and remove a stale socket an earlier run left there.

    Anything else at ``path`` (a file, a directory) is refused rather than replaced: a mistyped
    setting must not delete an operator's file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()
