"""The deadline of the call being served, carried through every wait made on its behalf.

A CRI call, a verifier request or a trustctl query sets it once (``call_deadline``); every
download, lock and join below reads what is left (``remaining``) instead of taking a timeout of
its own, so nothing waits past the caller.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

# When (time.monotonic()) the call being served must be answered; None: no deadline.
_call_deadline: ContextVar[float | None] = ContextVar("trustd_call_deadline", default=None)


@contextlib.contextmanager
def call_deadline(seconds: float | None) -> Iterator[None]:
    """Bound the waits made in this context to ``seconds`` from now (None: no bound).

    A nested call can only shorten the deadline it inherits, never extend it.
    """
    inherited = _call_deadline.get()
    wanted = None if seconds is None else time.monotonic() + seconds
    if inherited is not None and (wanted is None or inherited < wanted):
        wanted = inherited
    token = _call_deadline.set(wanted)
    try:
        yield
    finally:
        _call_deadline.reset(token)


def current_deadline() -> float | None:
    """The monotonic time by which the call being served must be answered, if any."""
    return _call_deadline.get()


def remaining(cap: float | None = None) -> float | None:
    """Seconds left before the call's deadline, at most ``cap``; None when neither bounds it.

    Never negative: a deadline already passed gives 0.
    """
    deadline = _call_deadline.get()
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    if cap is None:
        return left
    return cap if left is None else min(cap, left)
