"""Free TCP ports on 127.0.0.1 and waiting for a service to come up."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


class StackError(RuntimeError):
    """A program of the test stack could not be started or used."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(log_path: Path, lines: int = 30) -> str:
    """The last lines of a log file, or a note that there is none yet."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log file at {log_path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    log_path: Path | None = None,
    still_running: Callable[[], bool] | None = None,
    interval: float = 0.02,
) -> None:
    """Poll ``predicate`` until it is true; raise ``StackError`` naming ``what`` otherwise.

    Exceptions from the predicate count as "not yet" (a socket that refuses connections is the
    normal state while a server starts). ``still_running`` lets a dead process fail at once
    instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if predicate():
                return
        except Exception as error:  # the service is not up yet; remember why for the message
            last_error = error
        if still_running is not None and not still_running():
            problem = "exited while starting"
            break
        if time.monotonic() >= deadline:
            problem = f"did not come up within {timeout:g}s"
            break
        time.sleep(interval)
    message = f"{what} {problem}"
    if last_error is not None:
        message += f" (last error: {last_error})"
    if log_path is not None:
        message += f"\nlog: {log_path}\n--- last lines ---\n{log_tail(log_path)}"
    raise StackError(message)
