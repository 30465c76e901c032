"""``trustctl verify`` asking the daemon: the query on the verifier socket, the daemon's side of it
with the real ``verify_answer`` over a stand-in trust engine, and the program's fast path, its
argument handling and every way back to judging in its own process.

Against the real daemon, notary-server and registry: tests/e2e/test_trustctl_daemon.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.test_policy import GOOD, engine
from tests.unit.test_verifier import (
    assert_fast_path,
    exchange,
    fast_path_run,
    serving,
    write_config,
)
from trustd.localapi.client import DaemonAbsent, ask_daemon
from trustd.localapi.server import MAX_QUERY_TIMEOUT, VerifierSocketServer
from trustd.localapi.wire import (
    MAX_REQUEST_BYTES,
    ProtocolError,
    Refused,
    TrustctlVerify,
    error_frame,
    frame,
    parse_request,
    parse_trustctl_verify_answer,
    parse_verify_pull_answer,
    read_frame,
    trustctl_verify_answer_frame,
    trustctl_verify_frame,
    verify_pull_answer_frame,
    verify_pull_frame,
)
from trustd.policy.engine import PolicyEngine
from trustd.policy.queries import VerifyAnswer, verify_answer
from trustd.programs import trustctl as ctl

SIGNED = "example.com/app:1"
CONFIG = "/etc/trustd/trustd.toml"


# --- wire format ---------------------------------------------------------------------------------


def _payload(data: bytes) -> bytes:
    return data[4:]


def test_query_round_trip() -> None:
    image = 'example.com/app:1"\\\u00e9\t'
    assert parse_request(_payload(trustctl_verify_frame(CONFIG, image, True, 59.5))) == (
        TrustctlVerify(CONFIG, image, True, 59.5)
    )
    assert parse_request(_payload(trustctl_verify_frame(CONFIG, image, False))) == (
        TrustctlVerify(CONFIG, image, False)
    )


def test_query_answer_round_trip() -> None:
    stdout = f"{SIGNED}@{GOOD}\tsize 100\tsigned by targets\n"
    stderr = "trustctl: tag 2 is not signed in example.com/app \u00e9\n"
    for status in (0, 1, 2, 3, 255):
        payload = _payload(trustctl_verify_answer_frame(status, stdout, stderr))
        assert parse_trustctl_verify_answer(payload) == (status, stdout, stderr)


def test_an_answer_of_the_other_kind_is_not_a_query_answer() -> None:
    with pytest.raises(
        ProtocolError, match="an answer of kind 'verify-pull' to a \"trustctl-verify"
    ):
        parse_trustctl_verify_answer(_payload(verify_pull_answer_frame(True, "x")))


_QUERY = ("trustctl-verify", "config", "/t.toml")


def _fields(*items: str) -> bytes:
    """A version 2 payload of ``items`` (kind, key, value, ...), in the format's bytes."""
    data = [item.encode() for item in items]
    return b"\x02" + b"".join(len(item).to_bytes(4, "big") + item for item in data)


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        (_QUERY, 'a "trustctl-verify" request needs "image"'),
        ((*_QUERY, "json", "false"), 'needs "image"'),
        ((*_QUERY, "image", "a:1", "json", "yes"), '"json" must be true or false'),
        ((*_QUERY, "image", "a:1", "json", "1"), '"json" must be true or false'),
        ((*_QUERY, "image", "a:1", "json", ""), '"json" must be true or false'),
        ((*_QUERY, "image", "a:1", "timeout", "0"), '"timeout" must be seconds'),
        ((*_QUERY, "image", "a:1", "timeout", "true"), '"timeout" must be seconds'),
        ((*_QUERY, "image", "a:1", "timeout", ""), '"timeout" must be seconds'),
        ((*_QUERY, "image", "a:1", "timeout", "3601"), '"timeout" must be seconds'),
    ],
)
def test_malformed_queries(items: tuple[str, ...], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse_request(_fields(*items))


def test_a_query_without_json_is_not_json() -> None:
    assert parse_request(_fields(*_QUERY, "image", "a:1")) == TrustctlVerify(
        "/t.toml", "a:1", False
    )


_ANSWER = ("trustctl-verify", "stdout", "", "stderr", "")


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (_fields("trustctl-verify", "status", "0"), '"stdout" and "stderr"'),
        (_fields(*_ANSWER), '"status", an exit status'),
        (_fields(*_ANSWER, "status", "true"), '"status", an exit status'),
        (_fields(*_ANSWER, "status", "256"), '"status", an exit status'),
        (_fields(*_ANSWER, "status", "-1"), '"status", an exit status'),
        (_fields(*_ANSWER, "status", "0000"), '"status", an exit status'),
        (_fields(*_ANSWER, "status", "1.0"), '"status", an exit status'),
        (_fields(*_ANSWER, "status", " 1"), '"status", an exit status'),
        (_fields(*_ANSWER, "status", "\u0661"), '"status", an exit status'),
        (_fields(*_ANSWER, "status", ""), '"status", an exit status'),
        (b'{"version": 1, "kind": "trustctl-verify"}', "version 1 \\(JSON\\); this program"),
        (b"\x02\x00\x00\x00", "item 1 cut short"),
    ],
)
def test_malformed_query_answers(payload: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse_trustctl_verify_answer(payload)


# --- the daemon's side ---------------------------------------------------------------------------


def _socket_dir() -> Path:
    # pytest's tmp paths can exceed the 107-byte limit of a unix socket path.
    return Path(tempfile.mkdtemp(prefix="trustctl-"))


def _answer_with(policy: PolicyEngine) -> Callable[[TrustctlVerify], VerifyAnswer]:
    """The daemon's handler (trustd.service.daemon.Daemon.answer_query) over a stand-in trust
    engine."""

    def answer(query: TrustctlVerify) -> VerifyAnswer:
        return verify_answer(policy, query.image, None, query.as_json)

    return answer


@pytest.fixture
def daemon() -> Iterator[tuple[VerifierSocketServer, list, list[TrustctlVerify]]]:
    """A verifier socket answering queries as the daemon does; (server, decisions, queries)."""
    policy, decisions = engine({("example.com/app", "1"): GOOD})
    queries: list[TrustctlVerify] = []
    answer = _answer_with(policy)

    def handler(query: TrustctlVerify) -> VerifyAnswer:
        queries.append(query)
        return answer(query)

    with serving(policy, handler) as server:
        yield server, decisions, queries


def query(server: VerifierSocketServer, image: str, as_json: bool, timeout: float | None = None):
    request = trustctl_verify_frame(str(server.config), image, as_json, timeout)
    return parse_trustctl_verify_answer(exchange(server.path, request))


def test_the_daemon_answers_queries_as_the_command_prints(daemon) -> None:
    server, decisions, queries = daemon
    signed = query(server, SIGNED, False, 5)
    assert signed == (0, f"example.com/app@{GOOD}\tsize 100\tsigned by targets\n", "")
    status, stdout, stderr = query(server, SIGNED, True)
    assert (status, stderr) == (0, "")
    assert stdout.startswith('{\n  "reference": "example.com/app:1",\n') and stdout.endswith("}\n")
    unsigned = query(server, "example.com/app:2", False)
    assert unsigned == (1, "", "trustctl: tag 2 is not signed in example.com/app\n")
    status, stdout, stderr = query(server, "A B", False)
    assert (status, stdout) == (2, "")
    assert stderr.startswith('trustctl: invalid image reference "A B"')
    # What is left of the timeout asked for (5 s), or of the daemon's cap when none was asked.
    timeouts = [query.timeout for query in queries]
    assert timeouts[0] is not None and 0 < timeouts[0] <= 5.0
    assert all(timeout is not None and 0 < timeout <= MAX_QUERY_TIMEOUT for timeout in timeouts)
    assert decisions == []  # a query is not a decision: nothing audited, nothing counted


def test_the_daemon_answers_a_notary_outage_with_status_3() -> None:
    policy, _ = engine({}, down=True)
    answer = _answer_with(policy)(TrustctlVerify(CONFIG, SIGNED, False))
    assert answer == (
        3,
        "",
        "trustctl: cannot reach notary at https://notary.test for example.com/app: "
        "connection refused\n",
    )


def test_the_daemon_refuses_malformed_queries_and_goes_on(daemon) -> None:
    server, _, queries = daemon
    malformed = _fields("trustctl-verify", "config", "/t.toml", "images", "a:1")
    with pytest.raises(Refused, match=r'^bad request: a "trustctl-verify" request needs "image"'):
        parse_trustctl_verify_answer(exchange(server.path, frame(malformed)))
    with pytest.raises(Refused, match=r"^bad request: unsupported protocol version 255; this"):
        parse_trustctl_verify_answer(exchange(server.path, frame(b"\xff")))
    with pytest.raises(Refused, match=r"^bad request: item 3 is not UTF-8"):
        parse_trustctl_verify_answer(exchange(server.path, frame(_fields(*_QUERY)[:-1] + b"\xff")))
    assert queries == []
    assert query(server, SIGNED, False)[0] == 0
    # The image verifier's request on the same socket.
    request = verify_pull_frame(str(server.config), SIGNED, GOOD)
    assert parse_verify_pull_answer(exchange(server.path, request)) == (
        True,
        f"trustd: signed by targets as {GOOD}",
    )


def test_a_failing_handler_is_an_answer_not_a_dead_daemon() -> None:
    policy, _ = engine({})

    def broken(query: TrustctlVerify) -> VerifyAnswer:
        raise RuntimeError("a bug")

    with serving(policy, broken) as server:
        for _ in range(2):
            status, stdout, stderr = query(server, SIGNED, False)
            assert (status, stdout) == (1, "")
            assert stderr.startswith("trustctl: internal error in the trustd daemon (see its log)")


# --- the program's arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "fast"),
    [
        (["verify", "a:1"], ("a:1", None, False)),
        (["verify", "--json", "a:1"], ("a:1", None, True)),
        (["verify", "a:1", "-c", "/t.toml", "--json"], ("a:1", "/t.toml", True)),
        (["verify", "--config", "/t.toml", "a:1"], ("a:1", "/t.toml", False)),
        (["verify", "--config=/t.toml", "a:1"], ("a:1", "/t.toml", False)),
        (["verify", "-c", "/a.toml", "-c", "/b.toml", "a:1"], ("a:1", "/b.toml", False)),
        (["verify", "--config=", "a:1"], ("a:1", "", False)),
        (["verify", "a:1", "--local"], None),
        (["verify", "a:1", "--state-dir", "/s"], None),
        (["verify", "a:1", "--username", "u"], None),
        (["verify", "a:1", "--password-stdin"], None),
        (["verify", "-h"], None),
        (["verify", "a:1", "--js"], None),  # argparse would take the abbreviation
        (["verify", "a:1", "-c/t.toml"], None),
        (["verify", "a:1", "-c"], None),
        (["verify", "a:1", "-c", "--json"], None),
        (["verify", "a:1", "b:1"], None),
        (["verify", "--", "a:1"], None),
        (["verify"], None),
        (["inspect", "a"], None),
        (["explain", "a:1"], None),
        (["--help"], None),
        ([], None),
    ],
)
def test_only_a_plain_verify_is_asked_of_the_daemon(
    arguments: list[str], fast: tuple[str, str | None, bool] | None
) -> None:
    assert ctl.fast_verify_arguments(arguments) == fast


# --- the program ---------------------------------------------------------------------------------


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """trustd.programs.trustctl_commands.trustctl_main replaced: the arguments of each in-process
    run (it returns 42)."""
    import trustd.programs.trustctl_commands

    calls: list[list[str]] = []

    def judge_here(argv: list[str]) -> int:
        calls.append(list(argv))
        return 42

    monkeypatch.setattr(trustd.programs.trustctl_commands, "trustctl_main", judge_here)
    monkeypatch.setenv("TRUSTCTL_DEBUG", "1")
    return calls


def test_verify_prints_the_daemons_answer(
    daemon, in_process, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _, queries = daemon
    config = server.config
    assert ctl.main(["verify", SIGNED, "-c", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out == f"example.com/app@{GOOD}\tsize 100\tsigned by targets\n"
    assert err == f"trustctl: debug: answered by the trustd daemon on {server.path}\n"
    assert ctl.main(["verify", "example.com/app:2", "--json", f"--config={config}"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("trustctl: tag 2 is not signed in example.com/app\n")
    assert in_process == []
    asked = [(query.config, query.image, query.as_json) for query in queries]
    assert asked == [(str(config), SIGNED, False), (str(config), "example.com/app:2", True)]
    # trustctl waits DAEMON_TIMEOUT; the daemon gives a query no more than its cap.
    assert ctl.DAEMON_TIMEOUT - 0.5 > MAX_QUERY_TIMEOUT
    assert all(
        query.timeout is not None and query.timeout <= MAX_QUERY_TIMEOUT for query in queries
    )


def test_trustd_config_names_the_config(
    daemon, in_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _, _ = daemon
    monkeypatch.setenv("TRUSTD_CONFIG", str(server.config))
    assert ctl.main(["verify", SIGNED]) == 0
    assert in_process == []


def test_everything_else_is_judged_in_process(daemon, in_process, tmp_path: Path) -> None:
    server, _, queries = daemon
    config = str(server.config)
    for arguments in (
        ["verify", SIGNED, "-c", config, "--local"],
        ["verify", SIGNED, "-c", config, "--state-dir", str(tmp_path)],
        ["inspect", "example.com/app", "-c", config],
    ):
        assert ctl.main(arguments) == 42
    assert [call[-1] for call in in_process] == ["--local", str(tmp_path), config]
    assert queries == []


def _fallback(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Runs ``trustctl verify`` expecting it to judge in process; its debug line."""
    assert ctl.main(["verify", SIGNED, "-c", str(config)]) == 42
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.endswith("; judging in this process"), line
    return line


def test_no_daemon_listening(in_process, tmp_path: Path, capsys) -> None:
    absent = tmp_path / "nothing-here.sock"
    assert "(No such file or directory)" in _fallback(write_config(tmp_path, absent), capsys)

    directory = _socket_dir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(directory / "verify.sock"))  # a socket file nobody listens on
    stale.close()
    try:
        line = _fallback(write_config(tmp_path, directory / "verify.sock"), capsys)
    finally:
        (directory / "verify.sock").unlink()
        directory.rmdir()
    assert "(Connection refused)" in line

    not_served = write_config(tmp_path, "")
    assert "serves no verifier socket" in _fallback(not_served, capsys)
    assert len(in_process) == 3


def test_a_refusal_or_a_garbled_answer(daemon, in_process, tmp_path: Path, capsys) -> None:
    server, _, queries = daemon
    line = _fallback(write_config(tmp_path, server.path), capsys)
    assert line.endswith(
        f"the trustd daemon on {server.path} refused the request: this daemon serves "
        f"{server.config}, not {tmp_path / 'trustd.toml'}; judging in this process"
    )
    assert queries == []

    newer = error_frame("bad request: unsupported protocol version 2; this daemon speaks version 3")
    with one_shot_server(newer) as path:
        line = _fallback(write_config(tmp_path, path), capsys)
    assert "refused the request: bad request: unsupported protocol version 2; this daemon" in line

    future = b"\x03" + _fields("trustctl-verify", "status", "0", "stdout", "", "stderr", "")[1:]
    with one_shot_server(frame(future)) as path:
        line = _fallback(write_config(tmp_path, path), capsys)
    assert "gave no usable answer (unsupported protocol version 3; this program speaks" in line

    # A daemon of protocol version 1 (JSON), e.g. between an upgrade and its restart.
    older = b'{"version": 1, "kind": "error", "error": "bad request: not JSON"}'
    with one_shot_server(frame(older)) as path:
        line = _fallback(write_config(tmp_path, path), capsys)
    assert "gave no usable answer (unsupported protocol version 1 (JSON); this program" in line

    garbled = _fields("trustctl-verify", "status", "0", "stdout", "7")
    with one_shot_server(frame(garbled)) as path:
        line = _fallback(write_config(tmp_path, path), capsys)
    assert 'gave no usable answer (an answer needs "stdout" and "stderr")' in line
    assert len(in_process) == 5


def test_a_daemon_that_does_not_answer_in_time(
    in_process, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ctl, "DAEMON_TIMEOUT", 0.5)
    with one_shot_server(None) as path:
        started = time.monotonic()
        line = _fallback(write_config(tmp_path, path), capsys)
        assert 0.5 <= time.monotonic() - started < 5
    assert "did not answer before the deadline" in line


def test_an_image_too_long_to_ask_is_judged_in_process(daemon, in_process, capsys):
    server, _, queries = daemon
    config = server.config
    assert ctl.main(["verify", "x" * MAX_REQUEST_BYTES, "-c", str(config)]) == 42
    assert "too long to ask the daemon" in capsys.readouterr().err
    assert queries == []


class _OneShot:
    """A unix socket that takes one connection, reads the request and answers ``answer`` (None:
    never answers)."""

    def __init__(self, answer: bytes | None) -> None:
        self.directory = _socket_dir()
        self.path = self.directory / "verify.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(1)
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            read_frame(connection, MAX_REQUEST_BYTES, time.monotonic() + 10)
            if self.answer is not None:
                connection.sendall(self.answer)
            else:
                connection.recv(1)  # until the client gives up and closes

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()
        self.path.unlink()
        self.directory.rmdir()


@contextlib.contextmanager
def one_shot_server(answer: bytes | None) -> Iterator[Path]:
    server = _OneShot(answer)
    try:
        yield server.path
    finally:
        server.close()


def test_a_socket_this_user_may_not_open(daemon, in_process, capsys) -> None:
    """The socket is root's, mode 0600: an operator without root judges in process. Checked in
    a child process that drops to nobody (root may open any socket)."""
    server, _, queries = daemon
    directory = server.path.parent
    directory.chmod(0o755)  # only the socket's own mode keeps nobody out
    config = server.config
    config.chmod(0o644)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - reported through the pipe and the exit status
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                deadline = time.monotonic() + 5
                request = trustctl_verify_frame(str(config), SIGNED, False)
                ask_daemon(str(server.path), request, deadline, repr)
            except DaemonAbsent as error:
                os.write(writer, str(error).encode())
            code = ctl.main(["verify", SIGNED, "-c", str(config)])
        finally:
            os._exit(code)
    os.close(writer)
    _, status = os.waitpid(child, 0)
    with os.fdopen(reader, "rb") as pipe:
        reason = pipe.read().decode()
    assert reason == f"no daemon on {server.path} (Permission denied)"
    assert os.waitstatus_to_exitcode(status) == 42  # judged in process, by the child
    assert queries == []


# --- the imports it costs ------------------------------------------------------------------------


def test_the_daemon_path_imports_nothing_heavy(daemon, tmp_path: Path) -> None:
    """With the daemon answering, the program loads three small modules of trustd, the standard
    library's socket (and tomllib to read a config of its own), and no json, argparse, logging
    or trust engine."""
    server, _, queries = daemon
    program = "trustd.programs.trustctl"
    arguments = ["verify", SIGNED, "--json", "-c", str(server.config)]
    for default_install in (False, True):
        result, modules = fast_path_run(tmp_path, server, default_install, program, arguments)
        assert result.stdout.startswith('{\n  "reference": "example.com/app:1"')
        assert_fast_path(modules, program, default_install)
    assert len(queries) == 2
