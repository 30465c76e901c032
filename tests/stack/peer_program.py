"""A peer program (tests/peers: notation, cosign, ...) run with a home of its own.

The programs read their config, keys and registry credentials from HOME, XDG_CONFIG_HOME,
XDG_CACHE_HOME, DOCKER_CONFIG and TUF_ROOT: each ``PeerProgram`` points all of them under its
``home`` and passes on nothing else of the environment but PATH, so no run sees the user's files
or another run's. Used by the end-to-end tests and the bench.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.stack.ports import StackError

RUN_TIMEOUT = 180.0
_SHOWN = 2000  # characters of a failed run's output shown, from the end


class PeerProgram:
    """``program`` run with its own HOME and config dirs under ``home``, plus ``extra_env``."""

    def __init__(
        self, program: Path, home: Path, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.program = program
        self.home = home
        self.config = home / "config"
        for directory in (home, self.config, home / "cache", home / "docker"):
            directory.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(self.config),
            "XDG_CACHE_HOME": str(home / "cache"),
            "DOCKER_CONFIG": str(home / "docker"),
            "TUF_ROOT": str(home / "sigstore-tuf"),
            **(extra_env or {}),
        }

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The run's outcome, whatever its exit status."""
        return subprocess.run(
            [str(self.program), *args],
            env=self.env,
            cwd=cwd or self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    def ok(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The run's outcome; StackError, with its output, unless it exits 0."""
        result = self.run(*args, cwd=cwd)
        if result.returncode != 0:
            raise StackError(describe(self.program, args, result))
        return result


def describe(program: Path, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    """``program args -> exit N`` and the end of what it wrote, for a failure message."""
    return (
        f"{program.name} {' '.join(args)} -> exit {result.returncode}\n"
        f"stdout: {result.stdout.strip()[-_SHOWN:]}\nstderr: {result.stderr.strip()[-_SHOWN:]}"
    )
