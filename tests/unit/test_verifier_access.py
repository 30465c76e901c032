"""Who may use the verifier socket, and how much: peer credentials on both sides, the socket's
directory, capacity kept for containerd's verifier, and the cap on a query's timeout.

Other users are real: a forked child drops to ``nobody`` or ``daemon`` (tests.unit.as_user), so
the kernel's ``SO_PEERCRED`` and the socket's permissions are what is tested.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.as_user import as_user
from tests.unit.test_policy import GOOD, engine
from tests.unit.test_verifier import exchange, write_config
from trustd.localapi.client import DaemonAbsent, DaemonRefused, DaemonUntrusted, ask_daemon
from trustd.localapi.peer import peer_credentials, socket_directory_problem
from trustd.localapi.server import (
    MAX_QUERY_TIMEOUT,
    MAX_WAITING_QUERIES,
    RequestKind,
    SocketDirectoryUnsafe,
    VerifierSocketServer,
    Workers,
)
from trustd.localapi.wire import (
    Refused,
    TrustctlVerify,
    parse_trustctl_verify_answer,
    parse_verify_pull_answer,
    read_frame,
    trustctl_verify_frame,
    verify_pull_answer_frame,
    verify_pull_frame,
)
from trustd.policy.engine import Decision

NOBODY = 65534


def _directory(mode: int = 0o755) -> Path:
    """A directory of root's with ``mode`` (short: a socket path has at most 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="trustd-access-"))
    directory.chmod(mode)
    return directory


@contextlib.contextmanager
def serving(
    *,
    group: str | None = None,
    pull_timeout: float | None = None,
    max_workers: int = 8,
    query: Callable[[TrustctlVerify], tuple[int, str, str]] | None = None,
    judge: Callable[[str, str, float | None], Decision] | None = None,
) -> Iterator[tuple[VerifierSocketServer, list[Decision]]]:
    """A verifier socket in a directory others may enter (0755), as the daemon serves it."""
    policy, decisions = engine({("example.com/app", "1"): GOOD})
    directory = _directory()
    path = directory / "verify.sock"

    def no_queries(request: TrustctlVerify) -> tuple[int, str, str]:
        return 0, f"asked {request.image}\n", ""

    server = VerifierSocketServer(
        path,
        write_config(directory, path),
        judge or policy.judge_resolved,
        query or no_queries,
        group=group,
        pull_timeout=pull_timeout,
        max_workers=max_workers,
    )
    server.start()
    try:
        yield server, decisions
    finally:
        server.stop()
        shutil.rmtree(directory)


def pull_request(server: VerifierSocketServer, timeout: float | None = None) -> bytes:
    return verify_pull_frame(str(server.config), "example.com/app:1", GOOD, timeout)


# --- peer credentials ----------------------------------------------------------------------------


def test_a_socketpair_names_this_process_on_both_ends() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert peer_credentials(left) == (os.getpid(), os.geteuid(), os.getegid())
        assert peer_credentials(right) == (os.getpid(), 0, 0)


def test_the_credentials_are_the_connecting_users() -> None:
    directory = _directory()
    path = directory / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        path.chmod(0o666)
        listener.listen(1)

        def connect() -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
                client.recv(1)  # until the test has looked
            return b""

        child = threading.Thread(target=lambda: seen.append(as_user("nobody", connect)))
        seen: list[bytes] = []
        child.start()
        listener.settimeout(30)
        connection, _ = listener.accept()
        with connection:
            pid, uid, gid = peer_credentials(connection)
            connection.send(b"x")
        child.join(60)
        assert (uid, gid) == (NOBODY, NOBODY) and pid not in (0, os.getpid())
        assert seen == [b""]
    finally:
        listener.close()
        shutil.rmtree(directory)


# --- the daemon's side: who is answered ----------------------------------------------------------


def _ask_as(user: str, server: VerifierSocketServer, request: bytes, **groups: str) -> bytes:
    """The answer frame's payload ``user`` gets for ``request`` (raw bytes: the child speaks the
    protocol itself)."""

    def ask() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(server.path))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                client.sendall(request)
            return read_frame(client, 1 << 16, time.monotonic() + 30)

    return as_user(user, ask, **groups)


def test_root_only_by_default_even_through_a_loosened_socket() -> None:
    with serving() as (server, decisions):
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        # The socket's mode keeps other users out before trustd sees them...
        with pytest.raises(AssertionError, match="PermissionError"):
            _ask_as("nobody", server, pull_request(server))
        # ...and with it loosened, trustd refuses them itself.
        server.path.chmod(0o666)
        with pytest.raises(Refused) as refused:
            parse_verify_pull_answer(_ask_as("nobody", server, pull_request(server)))
        assert str(refused.value) == (
            "uid 65534 (nobody) may not ask this daemon: only root (server.verifier_group)"
        )
        assert decisions == []  # never judged
        allowed, _ = parse_verify_pull_answer(exchange(server.path, pull_request(server)))
        assert allowed and len(decisions) == 1  # root is


def test_a_configured_group_is_answered_and_others_are_not() -> None:
    with serving(group="nogroup") as (server, decisions):
        status = server.path.stat()
        assert stat.S_IMODE(status.st_mode) == 0o660 and status.st_gid == NOBODY
        # nobody's group is nogroup: the socket's mode lets it in, and so does trustd.
        allowed, message = parse_verify_pull_answer(_ask_as("nobody", server, pull_request(server)))
        assert allowed and message.startswith("trustd: ")
        assert len(decisions) == 1
        # daemon (uid 1) is not in nogroup: refused by the mode, and by trustd when loosened.
        with pytest.raises(AssertionError, match="PermissionError"):
            _ask_as("daemon", server, pull_request(server))
        server.path.chmod(0o666)
        with pytest.raises(Refused, match=r"^uid 1 \(daemon\) may not ask this daemon: only root"):
            parse_verify_pull_answer(_ask_as("daemon", server, pull_request(server)))
        # Running with the group as its own (sg, newgrp) is answered too.
        answer = _ask_as("daemon", server, pull_request(server), group="nogroup")
        assert parse_verify_pull_answer(answer)[0]
        assert len(decisions) == 2

        # The group can change while it serves (a reload): back to root only.
        server.set_group(None)
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        server.path.chmod(0o666)
        with pytest.raises(Refused, match=r"^uid 65534 \(nobody\) may not ask"):
            parse_verify_pull_answer(_ask_as("nobody", server, pull_request(server)))
        assert len(decisions) == 2


def test_membership_follows_the_group_database() -> None:
    with serving(group="nogroup") as (server, _):
        assert server.allowed(0, 0) and server.allowed(os.geteuid(), 12345)
        assert server.allowed(NOBODY, NOBODY)
        assert server.allowed(NOBODY, 1)  # nobody's primary group is nogroup
        assert not server.allowed(1, 1)  # daemon is not a member
        assert not server.allowed(4242, 4242)  # a user the node does not know
        assert server.allowed(4242, NOBODY)  # ...running with the group


# --- the client's side: whose answer is used -----------------------------------------------------


def test_the_client_does_not_ask_a_socket_another_user_listens_on() -> None:
    """A process of another user listening where the daemon should: the request is not even
    sent, and its answer ("allowed") never used."""
    directory = _directory()
    path = directory / "verify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))  # bound by root in root's directory...
    path.chmod(0o666)

    def impostor() -> bytes:
        listener.listen(1)  # ...listening as nobody: SO_PEERCRED names who called listen()
        listener.settimeout(30)
        connection, _ = listener.accept()
        with connection:
            with contextlib.suppress(OSError):  # the client may be gone already
                connection.sendall(verify_pull_answer_frame(True, "trustd: allowed, says nobody"))
            connection.settimeout(30)
            received = b""
            # Reset, not closed, when the client left the answer unread.
            with contextlib.suppress(ConnectionResetError):
                while chunk := connection.recv(65536):
                    received += chunk
            return received

    from tests.unit.as_user import AsUser

    child = AsUser("nobody", impostor)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ask_daemon(
                    str(path),
                    pull_request_for(path),
                    time.monotonic() + 10,
                    parse_verify_pull_answer,
                )
            except DaemonUntrusted as error:
                untrusted = str(error)
                break
            except DaemonAbsent:  # not listening yet
                assert time.monotonic() < deadline, "the child never listened"
                time.sleep(0.05)
                continue
            raise AssertionError("the impostor's answer was used")
        assert untrusted == (
            f"the process listening on {path} runs as uid 65534 (nobody), neither root nor this "
            "user: not asking it"
        )
        assert child.result() == b""  # no request reached it
    finally:
        listener.close()
        shutil.rmtree(directory)


def pull_request_for(path: Path) -> bytes:
    return verify_pull_frame(str(path.parent / "trustd.toml"), "example.com/app:1", GOOD)


def test_a_refused_user_falls_back_with_the_daemons_reason() -> None:
    """What a client not allowed to ask gets: the daemon's refusal (read even when the daemon
    closed before the request was sent), so it judges in its own process, saying why."""
    with serving() as (server, _):
        server.path.chmod(0o666)

        def ask() -> bytes:
            try:
                ask_daemon(
                    str(server.path),
                    pull_request(server),
                    time.monotonic() + 30,
                    parse_verify_pull_answer,
                )
            except DaemonRefused as error:
                return str(error).encode()
            return b"answered"

        assert as_user("nobody", ask).decode() == (
            f"the trustd daemon on {server.path} refused the request: uid 65534 (nobody) may not "
            "ask this daemon: only root (server.verifier_group)"
        )


# --- the socket's directory ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "owner", "group", "problem"),
    [
        (0o755, 0, 0, None),
        (0o700, 0, 0, None),
        (0o775, 0, 0, None),  # root's group
        (0o777, 0, 0, "has mode 0777: every user can write in it"),
        (0o1777, 0, 0, "has mode 1777: every user can write in it"),  # sticky: still theirs
        (0o775, 0, 1, "has mode 0775: group daemon (gid 1) can write in it"),
        (0o755, NOBODY, 0, "is owned by uid 65534 (nobody)"),
    ],
)
def test_the_sockets_own_directory(mode: int, owner: int, group: int, problem: str | None) -> None:
    directory = _directory()
    try:
        os.chown(directory, owner, group)
        directory.chmod(mode)
        found = socket_directory_problem(str(directory / "verify.sock"))
        if problem is None:
            assert found is None
        else:
            assert found == f"the socket's directory {directory} {problem}"
    finally:
        shutil.rmtree(directory)


def test_the_directories_above_it() -> None:
    top = _directory()
    try:
        below = top / "run" / "trustd"
        below.mkdir(parents=True, mode=0o755)
        socket_path = str(below / "verify.sock")
        (top / "run").chmod(0o1777)  # others may add entries, not move ours: like /tmp
        assert socket_directory_problem(socket_path) is None
        (top / "run").chmod(0o777)  # anyone could rename trustd/ and put their own in its place
        assert socket_directory_problem(socket_path) == (
            f"the directory {top / 'run'} has mode 0777: every user can write in it"
        )
        (top / "run").chmod(0o755)
        # A link to a directory others can write is followed.
        loose = top / "loose"
        loose.mkdir(mode=0o755)
        loose.chmod(0o777)
        (top / "link").symlink_to(loose)
        assert socket_directory_problem(str(top / "link" / "verify.sock")) == (
            f"the socket's directory {top / 'link'} has mode 0777: every user can write in it"
        )
        # Not there yet: nothing listens in it (the daemon creates it).
        assert socket_directory_problem(str(top / "none" / "verify.sock")) is None
    finally:
        shutil.rmtree(top)


def test_the_daemon_does_not_serve_from_a_directory_others_can_write() -> None:
    policy, _ = engine({})
    directory = _directory(0o777)
    path = directory / "verify.sock"
    try:
        server = VerifierSocketServer(
            path, write_config(directory, path), policy.judge_resolved, lambda query: (0, "", "")
        )
        with pytest.raises(SocketDirectoryUnsafe) as refused:
            server.start()
        assert str(refused.value) == (
            f"verifier socket {path} (server.verifier_socket): the socket's directory "
            f"{directory} has mode 0777: every user can write in it, so another user could "
            f"listen in trustd's place; chmod go-w {directory} (and chown root if needed) or "
            "choose another directory"
        )
        assert not path.exists()
        server.stop()
    finally:
        shutil.rmtree(directory)


def test_the_client_does_not_connect_through_a_directory_others_can_write() -> None:
    with serving() as (server, decisions):
        server.path.parent.chmod(0o777)
        with pytest.raises(DaemonUntrusted) as untrusted:
            ask_daemon(
                str(server.path),
                pull_request(server),
                time.monotonic() + 10,
                parse_verify_pull_answer,
            )
        assert str(untrusted.value) == (
            f"not asking the daemon on {server.path}: the socket's directory "
            f"{server.path.parent} has mode 0777: every user can write in it"
        )
        assert isinstance(untrusted.value, DaemonAbsent)  # judged in process, as without one
        server.path.parent.chmod(0o755)
        assert decisions == []


# --- capacity kept for containerd's verifier -----------------------------------------------------


def _poll(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        time.sleep(0.01)


def fill_query_share(server: VerifierSocketServer, askers: list[threading.Thread]) -> None:
    """Start ``askers`` (one blocking query each): the first ``query_limit`` until they run,
    then the rest until they wait."""
    limit = server.query_limit
    for asker in askers[:limit]:
        asker.start()
    _poll(lambda: server.query_load() == (limit, 0), "the queries' share running")
    for asker in askers[limit:]:
        asker.start()
    waiting = len(askers) - limit
    _poll(lambda: server.query_load() == (limit, waiting), "the queries' waiting line full")


def test_queries_cannot_take_the_workers_kept_for_pulls() -> None:
    """trustctl queries stuck on a slow Notary fill their share and their waiting line; the next
    query is told "busy" at once, and a verify-pull is still answered."""
    release = threading.Event()
    started: list[str] = []

    def slow_query(request: TrustctlVerify) -> tuple[int, str, str]:
        started.append(request.image)
        assert release.wait(60)
        return 0, f"{request.image}\n", ""

    with serving(max_workers=4, query=slow_query) as (server, decisions):
        limit = server.query_limit
        assert limit == 2
        answers: list[tuple[int, str, str]] = []

        def ask(image: str) -> None:
            request = trustctl_verify_frame(str(server.config), image, False)
            answers.append(parse_trustctl_verify_answer(exchange(server.path, request)))

        askers = [
            threading.Thread(target=ask, args=(f"example.com/q:{number}",))
            for number in range(limit + MAX_WAITING_QUERIES)
        ]
        try:
            fill_query_share(server, askers)
            assert len(started) == limit  # no more run than their share

            with pytest.raises(Refused) as busy:
                parse_trustctl_verify_answer(
                    exchange(
                        server.path,
                        trustctl_verify_frame(str(server.config), "example.com/q:more", False),
                    )
                )
            assert str(busy.value) == (
                f"busy: {limit} trustctl queries running and {MAX_WAITING_QUERIES} waiting (at "
                f"most {limit} run at once; the other workers are kept for containerd's image "
                "verifier)"
            )
            # containerd's verifier is answered meanwhile, by a worker queries cannot take.
            for _ in range(3):
                allowed, _ = parse_verify_pull_answer(exchange(server.path, pull_request(server)))
                assert allowed
            assert len(decisions) == 3
            assert len(started) == limit
        finally:
            release.set()
            for asker in askers:
                if asker.ident is not None:
                    asker.join(60)
        assert sorted(answers) == sorted(
            (0, f"example.com/q:{number}\n", "") for number in range(len(askers))
        )


def test_a_busy_daemon_sends_trustctl_to_judge_in_its_own_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import trustd.programs.trustctl_commands
    from trustd.programs import trustctl as ctl

    release = threading.Event()

    def slow_query(request: TrustctlVerify) -> tuple[int, str, str]:
        assert release.wait(60)
        return 0, "", ""

    in_process: list[list[str]] = []
    monkeypatch.setattr(
        trustd.programs.trustctl_commands,
        "trustctl_main",
        lambda argv: in_process.append(argv) or 42,
    )
    monkeypatch.setenv("TRUSTCTL_DEBUG", "1")
    with serving(max_workers=3, query=slow_query) as (server, _):
        config = str(server.config)
        askers = [
            threading.Thread(
                target=exchange,
                args=(server.path, trustctl_verify_frame(config, f"example.com/q:{n}", False)),
            )
            for n in range(server.query_limit + MAX_WAITING_QUERIES)
        ]
        try:
            fill_query_share(server, askers)
            assert ctl.main(["verify", "example.com/app:1", "-c", config]) == 42
        finally:
            release.set()
            for asker in askers:
                if asker.ident is not None:
                    asker.join(60)
    assert in_process == [["verify", "example.com/app:1", "-c", config]]
    _, err = capsys.readouterr()
    assert f"the trustd daemon on {server.path} refused the request: busy: 1 trustctl" in err
    assert err.endswith("; judging in this process\n")


def test_the_workers_run_pulls_first_and_queries_only_on_their_share() -> None:
    gate = threading.Event()
    ran: list[str] = []
    lock = threading.Lock()

    def task(name: str) -> Callable[[], None]:
        def run() -> None:
            with lock:
                ran.append(name)
            assert gate.wait(60)

        return run

    workers = Workers(3, 1, max_waiting_pulls=2, max_waiting_queries=1)
    try:
        assert workers.submit(RequestKind.QUERY, task("q1"))
        _poll(lambda: ran == ["q1"], "the first query started")
        assert workers.submit(RequestKind.QUERY, task("q2"))  # waits: the share is 1
        assert not workers.submit(RequestKind.QUERY, task("q3"))  # its line is full
        assert workers.submit(RequestKind.PULL, task("p1"))
        assert workers.submit(RequestKind.PULL, task("p2"))
        _poll(lambda: sorted(ran) == ["p1", "p2", "q1"], "both pulls started")
        assert workers.load() == (1, 1)
        gate.set()
        _poll(lambda: len(ran) == 4, "the waiting query ran")
        assert ran[-1] == "q2"
    finally:
        gate.set()
        workers.stop()
    assert not workers.submit(RequestKind.PULL, task("late"))
    with pytest.raises(ValueError):
        Workers(2, 2)


# --- timeouts ------------------------------------------------------------------------------------


def test_a_querys_timeout_is_capped() -> None:
    asked: list[float | None] = []

    def query(request: TrustctlVerify) -> tuple[int, str, str]:
        asked.append(request.timeout)
        return 0, "", ""

    with serving(query=query) as (server, _):
        for timeout in (3600.0, None, 5.0):
            request = trustctl_verify_frame(str(server.config), "example.com/app:1", False, timeout)
            assert parse_trustctl_verify_answer(exchange(server.path, request))[0] == 0
    assert len(asked) == 3
    assert all(timeout is not None and 0 < timeout <= MAX_QUERY_TIMEOUT for timeout in asked)
    assert asked[2] is not None and asked[2] <= 5.0
    assert MAX_QUERY_TIMEOUT == 30.0  # docs/operations.md, "The local socket"


def test_a_pulls_timeout_is_capped_by_pull_timeout() -> None:
    policy, _ = engine({("example.com/app", "1"): GOOD})
    asked: list[float | None] = []

    def judge(name: str, digest: str, timeout: float | None) -> Decision:
        asked.append(timeout)
        return policy.judge_resolved(name, digest, timeout)

    with serving(judge=judge, pull_timeout=7.0) as (server, _):
        for timeout in (3600.0, None, 2.0):
            assert parse_verify_pull_answer(exchange(server.path, pull_request(server, timeout)))
        server.pull_timeout = 3.0  # a reload
        assert parse_verify_pull_answer(exchange(server.path, pull_request(server, 60.0)))
    assert all(timeout is not None and timeout > 0 for timeout in asked)
    assert max(asked[:2]) <= 7.0  # type: ignore[type-var]
    assert asked[2] is not None and asked[2] <= 2.0
    assert asked[3] is not None and asked[3] <= 3.0


def test_trustctl_warns_when_it_does_not_trust_the_socket(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import trustd.programs.trustctl_commands
    from trustd.programs import trustctl as ctl

    in_process: list[list[str]] = []
    monkeypatch.setattr(
        trustd.programs.trustctl_commands,
        "trustctl_main",
        lambda argv: in_process.append(argv) or 42,
    )
    monkeypatch.delenv("TRUSTCTL_DEBUG", raising=False)
    with serving() as (server, _):
        server.path.parent.chmod(0o777)
        try:
            assert ctl.main(["verify", "example.com/app:1", "-c", str(server.config)]) == 42
        finally:
            server.path.parent.chmod(0o755)
    assert len(in_process) == 1
    _, err = capsys.readouterr()
    assert err == (
        f"trustctl: warning: not asking the daemon on {server.path}: the socket's directory "
        f"{server.path.parent} has mode 0777: every user can write in it; judging in this "
        "process\n"
    )
