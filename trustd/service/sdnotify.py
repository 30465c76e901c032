"""Telling systemd how the service is doing: the sd_notify datagram protocol.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for an abstract socket) to a
``Type=notify`` service; each notification is one datagram of newline-separated ``KEY=value``
assignments. Without ``NOTIFY_SOCKET`` (run by hand, in tests) every call does nothing.

A notification that cannot be sent is logged and otherwise ignored: systemd being unreachable
must never stop trustd from serving. Nor may a service manager that stops reading: a unix datagram
socket queues only ``net.unix.max_dgram_qlen`` messages (10 unless systemd's sysctl raises it), and
a plain send to a full queue blocks for good, so a send gives up after ``SEND_TIMEOUT``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

_SUPPORTED_PREFIXES = ("/", "@")

# Seconds one notification may wait for room in the service manager's queue.
SEND_TIMEOUT = 2.0


class SystemdNotifier:
    """Sends READY / RELOADING / STOPPING / STATUS / WATCHDOG to the service manager."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = environ.get("WATCHDOG_USEC", "")
        self._watchdog_pid = environ.get("WATCHDOG_PID", "")

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self) -> bool:
        return self.send("READY=1")

    def reloading(self) -> bool:
        # systemd 253+ (Type=notify-reload) wants the CLOCK_MONOTONIC time with RELOADING=1 to tell
        # this reload from an earlier one; older versions ignore the extra field.
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        # A newline would start a new assignment; the status is one line in `systemctl status`.
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds within which ``watchdog()`` must be called, or None if no watchdog is armed."""
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None  # the watchdog is meant for another process (we were forked or exec'd)
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None

    def send(self, *assignments: str) -> bool:
        """Send one notification; True if it was delivered, False if disabled or it failed."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(message, self._address)
        except OSError as error:
            log.warning("cannot notify systemd (%s): %s", assignments[0], error)
            return False
        return True


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if not value.startswith(_SUPPORTED_PREFIXES):
        log.warning("NOTIFY_SOCKET %r is not a unix socket address; not notifying systemd", value)
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # Linux abstract namespace
    return value
