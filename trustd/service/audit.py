"""The audit log: one JSON object per line for every policy decision.

An ``AuditLog`` is a ``PolicyEngine`` observer. Each decision becomes one line, written with a
single ``write(2)`` on a file opened ``O_APPEND``, so concurrent decisions never interleave
within a line and every line reaches the kernel as soon as it is decided. A copy can go to
standard output, where journald makes one journal entry of each line.

Rotation: logrotate renames the file and sends SIGHUP; the daemon calls ``reopen()``, which
opens the configured path afresh (creating it) and closes the renamed file. A reload that
changes ``audit.file`` or ``audit.stdout`` moves the log there (``open_target``, ``retarget``).

Writing is best effort: the decision has already been made when it is audited, so an I/O error
is logged and the decision stands.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trustd.policy.engine import Decision

log = logging.getLogger(__name__)

FILE_MODE = 0o640
DIRECTORY_MODE = 0o750
MAX_FIELD_CHARS = 2048  # a hostile image name must not turn into a megabyte audit line

# "scheme://user:secret@host" inside a message: the user info is replaced, never written out.
# The scheme length is bounded so the search stays linear on long hostile input.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)[^/@\s]+@")


class AuditLog:
    """Writes decisions as JSON lines to ``path`` (if any) and to stdout (if ``stdout``)."""

    def __init__(self, path: Path | None, stdout: bool) -> None:
        self.path = path
        self.stdout = stdout
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path is not None:
            self._fd = _open_append(path)

    def __call__(self, decision: Decision) -> None:
        self.record(decision)

    def record(self, decision: Decision) -> None:
        line = json.dumps(audit_record(decision), separators=(",", ":")) + "\n"
        # ensure_ascii (the default) escapes U+2028 and friends too: one record is one line for
        # every reader, not only for those that split on "\n".
        self.write_line(line)

    def write_line(self, line: str) -> None:
        data = line.encode()
        with self._lock:
            if self._fd is not None:
                try:
                    _write_all(self._fd, data)
                except OSError as error:
                    log.error("cannot write the audit log %s: %s", self.path, error)
            if self.stdout:
                try:
                    sys.stdout.write(line)
                    sys.stdout.flush()  # stdout to a pipe is block-buffered: journald would lag
                except (OSError, ValueError) as error:
                    log.error("cannot write the audit record to stdout: %s", error)

    def append_or_raise(self, line: str) -> None:
        """Write ``line`` to the file, raising OSError if it cannot be written whole: for a
        record that must exist before the change it records is made (``trustctl
        forget-root``). Nothing goes to stdout."""
        with self._lock:
            if self._fd is None:
                raise OSError(f"the audit log {self.path} is not open")
            _write_all(self._fd, line.encode())

    def reopen(self) -> None:
        """Open the configured path again (after logrotate moved it); keep the old file if not."""
        if self.path is None:
            return
        try:
            new_fd = _open_append(self.path)
        except OSError as error:
            log.error(
                "cannot reopen the audit log %s, still writing the old file: %s", self.path, error
            )
            return
        with self._lock:
            old_fd, self._fd = self._fd, new_fd
        if old_fd is not None:
            os.close(old_fd)

    def open_target(self, path: Path | None) -> int | None:
        """A new descriptor of ``path`` (None for none) for ``retarget``; OSError when it
        cannot be opened. Nothing changes until ``retarget``."""
        return None if path is None else _open_append(path)

    def retarget(self, path: Path | None, stdout: bool, fd: int | None) -> None:
        """Write to ``path`` through ``fd`` (from ``open_target``) and to stdout if ``stdout``
        from the next record on (``audit.file`` and ``audit.stdout`` changed by a reload)."""
        with self._lock:
            old_fd, self._fd = self._fd, fd
            self.path, self.stdout = path, stdout
        if old_fd is not None:
            os.close(old_fd)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def audit_record(decision: Decision, now: datetime | None = None) -> dict[str, Any]:
    """The audit fields of one decision, in the order they are written."""
    now = now or datetime.now(UTC)
    reference = decision.reference
    signed = decision.signed
    return {
        "time": rfc3339_millis(now),
        "action": str(decision.action),
        "image": _clean(decision.image),
        "reference": str(reference) if reference is not None else None,
        "gun": decision.gun,
        "digest": signed.digest if signed is not None else None,
        "size": signed.size if signed is not None else None,
        # Notary v1's signing role(s), as before other formats existed.
        "role": signed.signer if signed is not None and signed.format == "notary-v1" else None,
        # What verified; for a decision without a signed digest, what the rule required.
        "format": signed.format if signed is not None else (decision.format or None),
        "signer": signed.signer if signed is not None else None,
        "mode": decision.mode,
        "verdict": str(decision.verdict),
        "reason": _clean(decision.reason),
        "error": type(decision.error).__name__ if decision.error is not None else None,
        "rule": _clean(decision.rule),
        "pull_ref": decision.pull_ref,
        "latency_ms": round(decision.latency_seconds * 1000, 3),
        # Judged from trust data cached on this node during a Notary outage, and how old it was.
        "from_cache": decision.cached_age is not None,
        "trust_data_age_s": (
            round(decision.cached_age, 1) if decision.cached_age is not None else None
        ),
    }


def rfc3339_millis(moment: datetime) -> str:
    """UTC, millisecond precision, ``Z``: the time format of every audit record."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(text: str) -> str:
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    if len(text) > MAX_FIELD_CHARS:
        return text[:MAX_FIELD_CHARS] + "...(cut)"
    return text


def _open_append(path: Path) -> int:
    path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    return os.open(path, flags, FILE_MODE)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
