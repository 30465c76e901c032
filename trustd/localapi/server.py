"""The daemon's side of the local socket, and the judgement behind containerd's image-verifier hook
in a process without the daemon.

``trustd.programs.image_verifier`` (the program containerd runs per pull) asks the running daemon
through ``VerifierSocketServer`` (``verify-pull`` requests): one cache owner, whose single-flight
refreshes serve the CRI shim and the verifier alike. When no daemon answers, the verifier calls
``judge_locally``: an engine built as the daemon builds it (``trustd.service.engine``), with the
same config, state directory (the store's per-repository lock serialises it with any other
process) and audit log, in its own process.

Either way the question goes to ``PolicyEngine.judge_resolved`` and the answer is
``judgement_of(decision)``: whether containerd may go on, and the line it reports.

The same socket answers ``trustctl verify`` (``trustd.programs.trustctl``, ``trustctl-verify``
requests) with the daemon's query handler: what the command prints and its exit status, not a
decision (nothing is pulled, nothing audited).

The server answers only requests about the config file the daemon serves: a client that names
another file gets an error answer and judges in its own process, under its own file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trustd.localapi.wire import (
    MAX_REQUEST_BYTES,
    ProtocolError,
    TrustctlVerify,
    error_frame,
    parse_request,
    read_frame,
    trustctl_verify_answer_frame,
    verify_pull_answer_frame,
)
from trustd.policy.engine import Decision, Verdict
from trustd.policy.queries import EXIT_UNTRUSTED
from trustd.service.unix_socket import prepare_socket_path

log = logging.getLogger(__name__)

# How long one connection may take to send its request; the verifier sends it at once.
REQUEST_TIMEOUT = 5.0


def judgement_of(decision: Decision) -> tuple[bool, str]:
    """(allowed, the first line of the verifier's stdout) for ``decision``."""
    if decision.verdict is Verdict.DENY:
        return False, decision.message  # the same text the shim's denial carries
    if decision.verdict is Verdict.AUDIT_FAIL:
        return True, f"trustd: admitted in audit mode ({decision.rule}): {decision.reason}"
    return True, f"trustd: {decision.reason}"


Judge = Callable[[str, str, float | None], Decision]  # (name, digest, timeout)
# trustctl's query -> (exit status, stdout, stderr), e.g. a trustd.policy.queries.VerifyAnswer.
QueryHandler = Callable[[TrustctlVerify], tuple[int, str, str]]


class VerifierSocketServer:
    """Answers on a unix socket, for the config file ``config``: the image verifier's requests
    with ``judge(name, digest, timeout)``, trustctl's with ``query(request)``."""

    def __init__(
        self,
        path: Path,
        config: Path,
        judge: Judge,
        query: QueryHandler,
        *,
        mode: int = 0o600,
        max_workers: int = 8,
    ) -> None:
        self.path = path
        self.config = config.absolute()
        self._judge = judge
        self._query = query
        self._mode = mode
        self._max_workers = max_workers
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        prepare_socket_path(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            # Before listen(): until then a connect() is refused, so no one can get in through a
            # mode the umask left.
            os.chmod(self.path, self._mode)
            listener.listen(64)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="verify")
        self._accepting = threading.Thread(
            target=self._accept_loop, name="verify-accept", daemon=True
        )
        self._accepting.start()

    def stop(self) -> None:
        """Stop accepting; questions in flight are answered first (Notary timeouts bound them)."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
            listener.close()
        if self._accepting is not None:
            self._accepting.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None and self._executor is not None
        while not self._stopping.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("verifier socket %s: accept failed", self.path)
                time.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            try:
                self._executor.submit(self._answer, connection)
            except RuntimeError:  # the pool is shutting down
                connection.close()
                return

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            try:
                payload = read_frame(
                    connection, MAX_REQUEST_BYTES, time.monotonic() + REQUEST_TIMEOUT
                )
                request = parse_request(payload)
            except ProtocolError as error:
                log.warning("verifier socket %s: request not taken: %s", self.path, error)
                self._send(connection, error_frame(f"bad request: {error}"))
                return
            except OSError as error:
                log.warning("verifier socket %s: %s", self.path, error)
                return
            if not self._serves(request.config):
                log.warning(
                    "verifier socket %s: a request about %s, not %s",
                    self.path,
                    request.config,
                    self.config,
                )
                message = f"this daemon serves {self.config}, not {request.config}"
                self._send(connection, error_frame(message))
                return
            if isinstance(request, TrustctlVerify):
                self._send(connection, self._answer_query(request))
                return
            name, digest = request.name, request.digest
            try:
                allowed, message = judgement_of(self._judge(name, digest, request.timeout))
            except Exception:  # the policy never raises for bad input; this is a bug
                log.exception("judging %s (%s) for containerd failed", name, digest)
                allowed, message = False, "trustd: internal error in the daemon; see its log"
            self._send(connection, verify_pull_answer_frame(allowed, message))

    def _serves(self, config: str) -> bool:
        """Whether ``config`` is the file this daemon serves (by any name)."""
        try:
            return os.path.samefile(config, self.config)
        except OSError:  # e.g. one of them was removed: then the names must match
            return os.path.realpath(config) == os.path.realpath(self.config)

    def _answer_query(self, query: TrustctlVerify) -> bytes:
        started = time.monotonic()
        try:
            status, stdout, stderr = self._query(query)
        except Exception:  # verify_answer reports bad input in its answer; this is a bug
            log.exception("answering trustctl verify %r failed", query.image)
            # Not confirmed signed, as any failure to verify.
            status, stdout = EXIT_UNTRUSTED, ""
            stderr = (
                "trustctl: internal error in the trustd daemon (see its log); "
                "trustctl verify --local judges in this process\n"
            )
        # A query is not a decision (nothing is pulled): a debug line, no audit record.
        log.debug(
            "answered trustctl verify %r: exit status %d in %.1f ms",
            query.image,
            status,
            (time.monotonic() - started) * 1000,
        )
        return trustctl_verify_answer_frame(status, stdout, stderr)

    def _send(self, connection: socket.socket, answer: bytes) -> None:
        try:
            connection.settimeout(REQUEST_TIMEOUT)
            connection.sendall(answer)
        except OSError as error:  # the client gave up (its own deadline) or was killed
            log.warning("verifier socket %s: the answer was not delivered: %s", self.path, error)


def judge_locally(
    config_path: Path, name: str, digest: str, timeout: float | None = None
) -> tuple[bool, str]:
    """The judgement of ``name`` resolved to ``digest`` in this process, as the daemon would
    give it: an engine built as the daemon's (``trustd.service.engine``), same policy, same state
    directory, same audit log (never standard output, which carries the judgement to
    containerd). ConfigError, AuditLogUnavailable included, when it cannot be made."""
    from trustd.config.load import load_config
    from trustd.service.engine import Audit, build_engine

    config = load_config(config_path)
    with build_engine(config, audit=Audit.DECISIONS_TO_FILE) as engine:
        return judgement_of(engine.policy.judge_resolved(name, digest, timeout))
