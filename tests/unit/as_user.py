"""Running a piece of a test as another user: a forked child that drops to that user's uid.

The tests run as root; a child forked from the test process calls ``setgroups``, ``setgid`` and
``setuid`` and then runs a function of the test, so the kernel (``SO_PEERCRED``, file
permissions) sees that user at the other end of a socket. The child needs no program of its own
to execute: the test's modules are already in its memory.
"""

from __future__ import annotations

import grp
import os
import pwd
import select
import signal
import time
from collections.abc import Callable


class ChildFailed(AssertionError):
    """The function raised in the child; the message is its exception."""


class AsUser:
    """A function running in a child as another user; ``result()`` waits for what it returned."""

    def __init__(
        self,
        user: str,
        action: Callable[[], bytes],
        *,
        group: str | None = None,
        supplementary: tuple[str, ...] = (),
    ) -> None:
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group is not None else entry.pw_gid
        groups = [grp.getgrnam(name).gr_gid for name in supplementary]
        reader, writer = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into the test
            status = 0
            try:
                os.close(reader)
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(entry.pw_uid)
                output = b"ok " + action()
            except BaseException as error:
                output = f"error {type(error).__name__}: {error}".encode()
                status = 1
            try:
                view = memoryview(output)
                while view:
                    view = view[os.write(writer, view) :]
            finally:
                os._exit(status)
        os.close(writer)
        self._reader = reader

    def result(self, timeout: float = 60.0) -> bytes:
        """What the function returned; ChildFailed with its exception when it raised."""
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._reader], [], [], left)[0]:
                    os.kill(self.pid, signal.SIGKILL)
                    raise AssertionError(f"the child (pid {self.pid}) did not finish in time")
                chunk = os.read(self._reader, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self._reader)
            os.waitpid(self.pid, 0)
        output = b"".join(chunks)
        if output.startswith(b"ok "):
            return output.removeprefix(b"ok ")
        raise ChildFailed(output.decode(errors="replace") or "the child died without a word")


def as_user(
    user: str,
    action: Callable[[], bytes],
    *,
    group: str | None = None,
    supplementary: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> bytes:
    """``action()`` run as ``user`` (with ``group``, else the user's own, and only the
    ``supplementary`` groups given) in a forked child."""
    return AsUser(user, action, group=group, supplementary=supplementary).result(timeout)
