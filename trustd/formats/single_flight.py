"""One lookup per key at a time; concurrent callers wait for it, never past their deadline.

A burst of parallel pulls of one repository then costs its Notary server (or its registry) one
round of requests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from trustd.errors import SourceUnavailable
from trustd.net.credentials import Credentials
from trustd.net.deadline import remaining

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs ``work`` for a key unless a call for that key is in flight, whose result is shared."""

    def __init__(
        self,
        unavailable: type[SourceUnavailable],
        refused: type[SourceUnavailable],
        what: str = "a lookup",
    ) -> None:
        """``unavailable`` is raised when a joined call outlasts the caller's deadline, saying
        that ``what`` was under way; ``refused`` is the source's refusal of credentials, after
        which a caller with other credentials gets a try of its own."""
        self._what = what
        self._unavailable = unavailable
        self._refused = refused
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[Future[T], Credentials | None]] = {}

    def run(self, key: str, credentials: Credentials | None, work: Callable[[], T]) -> T:
        """The result of ``work``, or of the call for ``key`` already in flight.

        A joined call that failed authentication ran with someone else's credentials (an
        ImageStatus carries none): a caller with credentials of its own then gets its own try.
        Waiting for a joined call is bounded by the caller's deadline (``call_deadline``).
        """
        while True:
            with self._lock:
                joined = self._inflight.get(key)
                if joined is None:
                    pending: Future[T] = Future()
                    self._inflight[key] = (pending, credentials)
                    break
            shared, leader_credentials = joined
            try:
                return self.wait(shared)
            except FutureTimeout:
                raise self._unavailable(
                    f"{key}: {self._what} already under way did not finish before this "
                    "call's deadline"
                ) from None
            except self._refused:
                if credentials == leader_credentials:
                    raise
        try:
            result = work()
        except BaseException as error:
            pending.set_exception(error)
            raise
        else:
            pending.set_result(result)
            return result
        finally:
            with self._lock:
                del self._inflight[key]

    def wait(self, call: Future[T]) -> T:
        """The result of a joined ``call``; TimeoutError at the caller's deadline."""
        return call.result(timeout=remaining())
