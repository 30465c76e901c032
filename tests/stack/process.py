"""A child process of the test stack, logging to a file and always stopped at exit."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.stack.ports import log_tail, wait_for

# Strong references: a process whose owner was dropped must still be stopped at exit.
_running: set[ManagedProcess] = set()


class ManagedProcess:
    """One long-running program; stdout and stderr go to ``log_path``."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> ManagedProcess:
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **self.env} if self.env is not None else None
        # Append, so a restarted program keeps the earlier log for diagnosis.
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=self.cwd,
                # Own process group: a Ctrl-C in the test runner must not kill it half-way;
                # stop() and the exit hook do that in order.
                start_new_session=True,
            )
        _running.add(self)
        return self

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        _running.discard(self)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait for ``predicate``; fail early with the log tail if this process dies."""
        wait_for(predicate, timeout, what, log_path=self.log_path, still_running=self.running)


@atexit.register
def _stop_all() -> None:
    for process in list(_running):
        process.stop(timeout=2.0)
