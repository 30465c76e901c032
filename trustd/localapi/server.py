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

Who may ask, and how much: the socket is root's (mode 0600; 0660 and ``server.verifier_group``'s
when that is set) and every connection's credentials are checked as well (``SO_PEERCRED``, see
``trustd.localapi.peer``): root, the daemon's own user and members of the group are answered,
anyone else (a socket whose mode someone loosened) gets an error answer. The socket is not
served from a directory other users can write. One thread reads every request (a selector loop,
at most ``MAX_PENDING`` connections, ``REQUEST_TIMEOUT`` each), and ``max_workers`` threads
answer them: pulls first, and at most ``max_workers - RESERVED_FOR_PULLS`` on trustctl queries,
so that queries, however many and however slow (a Notary outage), never take the workers
containerd's verifier needs. Waiting lines are bounded; a request that finds its line full is
answered "busy" at once, and its client judges in its own process. A query's timeout is capped
at ``MAX_QUERY_TIMEOUT``, a pull's at the daemon's ``server.pull_timeout``.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from trustd.localapi.peer import (
    peer_credentials,
    socket_directory_problem,
    trusted_uids,
    user_name,
)
from trustd.localapi.wire import (
    HEADER_BYTES,
    MAX_REQUEST_BYTES,
    ProtocolError,
    Request,
    TrustctlVerify,
    VerifyPull,
    error_frame,
    parse_request,
    trustctl_verify_answer_frame,
    verify_pull_answer_frame,
)
from trustd.policy.engine import Decision, Verdict
from trustd.policy.queries import EXIT_UNTRUSTED
from trustd.service.unix_socket import prepare_socket_path

log = logging.getLogger(__name__)

# How long one connection may take to send its request; the clients send it at once.
REQUEST_TIMEOUT = 5.0
# Workers kept for containerd's verifier: trustctl queries never run on them.
RESERVED_FOR_PULLS = 2
# Seconds a trustctl query may take, whatever timeout it asks for.
MAX_QUERY_TIMEOUT = 30.0
# Connections whose request is being read; a new one beyond pushes out the oldest.
MAX_PENDING = 64
# Requests read and waiting for a worker: pulls, and queries (beyond those running).
MAX_WAITING_PULLS = 64
MAX_WAITING_QUERIES = 4
SOCKET_MODE = 0o600
GROUP_SOCKET_MODE = 0o660
# A refused user is logged at most this often (seconds), however often it connects.
_REFUSAL_LOG_INTERVAL = 60.0
_IDLE_TICK = 1.0  # the intake loop's longest sleep: it checks for a stop at least this often
_RECEIVE_CHUNK = 65536


class SocketDirectoryUnsafe(OSError):
    """The verifier socket's directory can be written by other users; the daemon does not serve
    the socket there."""


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


class RequestKind(Enum):
    PULL = "verify-pull"
    QUERY = "trustctl-verify"


class Workers:
    """``count`` threads running tasks of two kinds: pulls first, and queries on at most
    ``query_limit`` threads at once; ``submit`` refuses a task whose waiting line is full."""

    def __init__(
        self,
        count: int,
        query_limit: int,
        *,
        max_waiting_pulls: int = MAX_WAITING_PULLS,
        max_waiting_queries: int = MAX_WAITING_QUERIES,
        name: str = "verify",
    ) -> None:
        if not 1 <= query_limit < count:
            raise ValueError(f"query_limit must be from 1 to {count - 1} (got {query_limit})")
        self.count = count
        self.query_limit = query_limit
        self._max_waiting = {
            RequestKind.PULL: max_waiting_pulls,
            RequestKind.QUERY: max_waiting_queries,
        }
        self._waiting: dict[RequestKind, deque[Callable[[], None]]] = {
            kind: deque() for kind in RequestKind
        }
        self._running_queries = 0
        self._stopping = False
        self._changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True)
            for number in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, kind: RequestKind, task: Callable[[], None]) -> bool:
        """Queue ``task``; False (and nothing queued) when its line is full or the pool stops."""
        with self._changed:
            waiting = self._waiting[kind]
            if self._stopping or len(waiting) >= self._max_waiting[kind]:
                return False
            waiting.append(task)
            self._changed.notify()
        return True

    def load(self) -> tuple[int, int]:
        """(queries running, queries waiting), for messages."""
        with self._changed:
            return self._running_queries, len(self._waiting[RequestKind.QUERY])

    def stop(self) -> None:
        """Run what is queued, then end every thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _next(self) -> tuple[Callable[[], None], RequestKind] | None:
        pulls, queries = self._waiting[RequestKind.PULL], self._waiting[RequestKind.QUERY]
        with self._changed:
            while True:
                if pulls:
                    return pulls.popleft(), RequestKind.PULL
                if queries and self._running_queries < self.query_limit:
                    self._running_queries += 1
                    return queries.popleft(), RequestKind.QUERY
                if self._stopping and not queries:
                    return None
                self._changed.wait()

    def _work(self) -> None:
        while (item := self._next()) is not None:
            task, kind = item
            try:
                task()
            except Exception:  # a task answers its own failures; this is a bug
                log.exception("verifier socket worker: %s request failed", kind.value)
            finally:
                if kind is RequestKind.QUERY:
                    with self._changed:
                        self._running_queries -= 1
                        # Another worker may wait for a query slot, or for the last to end.
                        self._changed.notify_all()


@dataclass(eq=False)
class _Pending:
    """A connection whose request is being read."""

    sock: socket.socket
    accepted: float
    received: bytearray = field(default_factory=bytearray)


class VerifierSocketServer:
    """Answers on a unix socket, for the config file ``config``: the image verifier's requests
    with ``judge(name, digest, timeout)``, trustctl's with ``query(request)``.

    ``group`` (a group name) may ask besides root and the daemon's user; ``pull_timeout`` caps a
    verify-pull's timeout. Both can change while it serves (``set_group``, ``pull_timeout``).
    """

    def __init__(
        self,
        path: Path,
        config: Path,
        judge: Judge,
        query: QueryHandler,
        *,
        group: str | None = None,
        pull_timeout: float | None = None,
        max_workers: int = 8,
    ) -> None:
        if max_workers <= RESERVED_FOR_PULLS:
            raise ValueError(f"max_workers must be more than {RESERVED_FOR_PULLS}")
        self.path = path
        self.config = config.absolute()
        self.pull_timeout = pull_timeout
        self._judge = judge
        self._query = query
        self._group: str | None = None
        self._gid: int | None = None
        self._max_workers = max_workers
        self._listener: socket.socket | None = None
        self._intake: threading.Thread | None = None
        self._workers: Workers | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._pending: dict[socket.socket, _Pending] = {}
        self._stopping = threading.Event()
        self._refusals_logged: dict[int, float] = {}
        self._resolve_group(group)

    # --- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen; SocketDirectoryUnsafe (an OSError) when other users can write the socket's
        directory, OSError when the path is taken by something that is not a socket."""
        self._check_directory()
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._check_directory()  # as created, under whatever umask
        prepare_socket_path(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            # Before listen(): until then a connect() is refused, so no one can get in through a
            # mode the umask left.
            self._set_socket_access()
            listener.listen(64)
        except BaseException:
            listener.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        listener.setblocking(False)
        self._listener = listener
        self._workers = Workers(self._max_workers, self._max_workers - RESERVED_FOR_PULLS)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._wake_reader.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._intake = threading.Thread(target=self._intake_loop, name="verify-intake", daemon=True)
        self._intake.start()

    def stop(self) -> None:
        """Stop accepting; questions already read are answered first (their deadlines bound
        them), connections still sending their request are closed."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")
        if self._intake is not None:
            self._intake.join(timeout=10)
        else:
            self._wake_reader.close()  # the intake closes it
        if self._workers is not None:
            self._workers.stop()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._wake_writer.close()

    def query_load(self) -> tuple[int, int]:
        """(trustctl queries running, trustctl queries waiting for a worker)."""
        return self._workers.load() if self._workers is not None else (0, 0)

    @property
    def query_limit(self) -> int:
        """How many trustctl queries run at once, at most."""
        return self._max_workers - RESERVED_FOR_PULLS

    # --- who may ask -----------------------------------------------------------------------------

    @property
    def group(self) -> str | None:
        return self._group

    def set_group(self, group: str | None) -> None:
        """Answer ``group`` (a group name, None for none) from now on; the socket's group and
        mode follow. KeyError when the node has no such group."""
        self._resolve_group(group)
        if self._listener is not None:
            self._set_socket_access()

    def _resolve_group(self, group: str | None) -> None:
        self._gid = None if group is None else grp.getgrnam(group).gr_gid
        self._group = group

    def _set_socket_access(self) -> None:
        if self._gid is None:
            os.chmod(self.path, SOCKET_MODE)  # the socket's group, whichever, has no access
        else:
            os.chown(self.path, -1, self._gid)
            os.chmod(self.path, GROUP_SOCKET_MODE)

    def allowed(self, uid: int, gid: int) -> bool:
        """Whether a client running as ``uid`` with group ``gid`` is answered."""
        if uid in trusted_uids():
            return True
        group = self._gid
        if group is None:
            return False
        if gid == group:
            return True
        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            return False
        return group in os.getgrouplist(user.pw_name, user.pw_gid)

    def _check_directory(self) -> None:
        problem = socket_directory_problem(str(self.path))
        if problem is not None:
            raise SocketDirectoryUnsafe(
                f"verifier socket {self.path} (server.verifier_socket): {problem}, so another "
                f"user could listen in trustd's place; chmod go-w {self.path.parent} (and chown "
                "root if needed) or choose another directory"
            )

    def _refusal(self, pid: int, uid: int) -> bytes:
        who = user_name(uid)
        now = time.monotonic()
        if now - self._refusals_logged.get(uid, -_REFUSAL_LOG_INTERVAL) >= _REFUSAL_LOG_INTERVAL:
            self._refusals_logged[uid] = now
            log.warning(
                "verifier socket %s: refused a connection of %s (pid %d): only root%s may ask "
                "(is the socket's mode loosened?)",
                self.path,
                who,
                pid,
                f" and group {self._group}" if self._group else "",
            )
        allowed = "root" + (f" and members of group {self._group}" if self._group else "")
        return error_frame(f"{who} may not ask this daemon: only {allowed} (server.verifier_group)")

    # --- reading requests: one thread for all -----------------------------------------------------

    def _intake_loop(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(self._wait_seconds()):
                    if key.fileobj is self._listener:
                        self._accept_waiting()
                    elif key.fileobj is self._wake_reader:
                        with contextlib.suppress(OSError):
                            self._wake_reader.recv(64)
                    elif isinstance(key.data, _Pending):
                        self._receive(key.data)
                self._drop_expired()
        except Exception:
            log.exception("verifier socket %s: the intake failed; no more questions", self.path)
        finally:
            for pending in list(self._pending.values()):
                self._forget(pending)
                pending.sock.close()
            selector.close()
            if self._listener is not None:
                self._listener.close()
            self._wake_reader.close()

    def _wait_seconds(self) -> float:
        if not self._pending:
            return _IDLE_TICK
        oldest = min(pending.accepted for pending in self._pending.values())
        return min(max(oldest + REQUEST_TIMEOUT - time.monotonic(), 0.0), _IDLE_TICK)

    def _accept_waiting(self) -> None:
        listener = self._listener
        assert listener is not None and self._selector is not None
        # What is queued, but a bounded number per round: a flood of connections must not keep
        # the loop from reading the requests already accepted.
        for _ in range(MAX_PENDING):
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors, say: next round
                log.warning("verifier socket %s: cannot accept: %s", self.path, error)
                return
            connection.setblocking(False)
            try:
                pid, uid, gid = peer_credentials(connection)
            except OSError as error:
                log.warning("verifier socket %s: no peer credentials: %s", self.path, error)
                connection.close()
                continue
            if not self.allowed(uid, gid):
                _answer_now(connection, self._refusal(pid, uid))
                continue
            if len(self._pending) >= MAX_PENDING:
                oldest = min(self._pending.values(), key=lambda pending: pending.accepted)
                log.warning(
                    "verifier socket %s: %d connections sending requests; dropped the oldest",
                    self.path,
                    len(self._pending),
                )
                self._forget(oldest)
                oldest.sock.close()
            pending = _Pending(connection, time.monotonic())
            self._pending[connection] = pending
            self._selector.register(connection, selectors.EVENT_READ, pending)

    def _receive(self, pending: _Pending) -> None:
        if pending.sock not in self._pending:
            return  # pushed out earlier in this round
        try:
            chunk = pending.sock.recv(_RECEIVE_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            log.warning("verifier socket %s: %s", self.path, error)
            self._forget(pending)
            pending.sock.close()
            return
        if not chunk:  # the client gave up before its request was complete
            self._forget(pending)
            pending.sock.close()
            return
        pending.received += chunk
        if len(pending.received) < HEADER_BYTES:
            return
        length = int.from_bytes(pending.received[:HEADER_BYTES], "big")
        if length > MAX_REQUEST_BYTES:
            self._forget(pending)
            problem = f"frame of {length} bytes; at most {MAX_REQUEST_BYTES} are accepted"
            self._not_taken(pending.sock, problem)
            return
        if len(pending.received) < HEADER_BYTES + length:
            return
        self._forget(pending)
        payload = bytes(pending.received[HEADER_BYTES : HEADER_BYTES + length])
        self._dispatch(pending.sock, payload, pending.accepted)

    def _forget(self, pending: _Pending) -> None:
        if self._pending.pop(pending.sock, None) is not None and self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(pending.sock)

    def _drop_expired(self) -> None:
        expired = time.monotonic() - REQUEST_TIMEOUT
        for pending in [p for p in self._pending.values() if p.accepted <= expired]:
            log.warning(
                "verifier socket %s: a request not complete after %gs; connection closed",
                self.path,
                REQUEST_TIMEOUT,
            )
            self._forget(pending)
            pending.sock.close()

    def _not_taken(self, connection: socket.socket, problem: str) -> None:
        log.warning("verifier socket %s: request not taken: %s", self.path, problem)
        _answer_now(connection, error_frame(f"bad request: {problem}"))

    def _dispatch(self, connection: socket.socket, payload: bytes, received: float) -> None:
        try:
            request = parse_request(payload)
        except ProtocolError as error:
            self._not_taken(connection, str(error))
            return
        if not self._serves(request.config):
            log.warning(
                "verifier socket %s: a request about %s, not %s",
                self.path,
                request.config,
                self.config,
            )
            message = f"this daemon serves {self.config}, not {request.config}"
            _answer_now(connection, error_frame(message))
            return
        kind = RequestKind.QUERY if isinstance(request, TrustctlVerify) else RequestKind.PULL
        timeout = self._timeout(request)
        deadline = None if timeout is None else received + timeout
        workers = self._workers
        assert workers is not None

        def answer() -> None:
            self._answer(connection, request, deadline)

        if not workers.submit(kind, answer):
            _answer_now(connection, error_frame(self._busy(kind)))

    def _busy(self, kind: RequestKind) -> str:
        workers = self._workers
        assert workers is not None
        if self._stopping.is_set():
            return "busy: the daemon is stopping"
        if kind is RequestKind.QUERY:
            running, waiting = workers.load()
            log.info(
                "verifier socket %s: busy: %d trustctl queries running, %d waiting",
                self.path,
                running,
                waiting,
            )
            return (
                f"busy: {running} trustctl queries running and {waiting} waiting (at most "
                f"{workers.query_limit} run at once; the other workers are kept for "
                "containerd's image verifier)"
            )
        log.warning(
            "verifier socket %s: busy: %d image-verifier requests already waiting",
            self.path,
            MAX_WAITING_PULLS,
        )
        return f"busy: {MAX_WAITING_PULLS} image-verifier requests already waiting"

    def _timeout(self, request: Request) -> float | None:
        """Seconds the answer may take from the request's arrival: what the client asked for,
        within the cap of its kind (None: unbounded, a pull without ``pull_timeout``)."""
        cap = MAX_QUERY_TIMEOUT if isinstance(request, TrustctlVerify) else self.pull_timeout
        asked = request.timeout
        if cap is None or asked is None:
            return asked if cap is None else cap
        return min(asked, cap)

    def _serves(self, config: str) -> bool:
        """Whether ``config`` is the file this daemon serves (by any name)."""
        try:
            return os.path.samefile(config, self.config)
        except OSError:  # e.g. one of them was removed: then the names must match
            return os.path.realpath(config) == os.path.realpath(self.config)

    # --- answering: in a worker ------------------------------------------------------------------

    def _answer(self, connection: socket.socket, request: Request, deadline: float | None) -> None:
        with connection:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                log.warning(
                    "verifier socket %s: a %s request waited past its deadline; not answered",
                    self.path,
                    "trustctl" if isinstance(request, TrustctlVerify) else "verify-pull",
                )
                return
            if isinstance(request, TrustctlVerify):
                capped = TrustctlVerify(request.config, request.image, request.as_json, left)
                self._send(connection, self._answer_query(capped))
                return
            self._send(connection, self._answer_pull(request, left))

    def _answer_pull(self, request: VerifyPull, timeout: float | None) -> bytes:
        name, digest = request.name, request.digest
        try:
            allowed, message = judgement_of(self._judge(name, digest, timeout))
        except Exception:  # the policy never raises for bad input; this is a bug
            log.exception("judging %s (%s) for containerd failed", name, digest)
            allowed, message = False, "trustd: internal error in the daemon; see its log"
        return verify_pull_answer_frame(allowed, message)

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


def _answer_now(connection: socket.socket, answer: bytes) -> None:
    """Send a short answer without waiting (a fresh socket's buffer holds it) and close."""
    with connection:
        try:
            connection.setblocking(False)
            connection.send(answer)
        except OSError:
            pass  # the client is gone or sends nothing but junk: nothing to tell it


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
