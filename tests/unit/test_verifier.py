"""The image verifier's pieces without Notary: wire format, the daemon's socket, the program's
arguments, stdin and output, and the file installed into containerd's bin_dir.

The real judgement against the real notary-server is tested in tests/e2e/test_image_verifier.py.
"""

from __future__ import annotations

import ast
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_policy import GOOD, OTHER, engine
from trustd.localapi.server import VerifierSocketServer, judgement_of
from trustd.localapi.wire import (
    MAX_REQUEST_BYTES,
    AnswerTimeout,
    ProtocolError,
    answer_frame,
    frame,
    loads_object,
    parse_answer,
    parse_request,
    read_frame,
    request_frame,
)
from trustd.policy.engine import Decision, PolicyEngine
from trustd.programs.image_verifier import DESCRIPTOR_MEDIA_TYPE, entry_script, main

REPO_ROOT = Path(__file__).resolve().parents[2]
# What the fast paths must never import: the trust engine's dependencies.
HEAVY = {"cryptography", "requests", "urllib3", "grpc", "google", "prometheus_client"}


# --- wire format ---------------------------------------------------------------------------------


def _pipe_frames(data: bytes, limit: int, timeout: float = 2.0) -> bytes:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        return read_frame(right, limit, time.monotonic() + timeout)


def test_request_and_answer_round_trip() -> None:
    name = 'registry.example.com/app:1.4"\\\u00e9'
    payload = _pipe_frames(request_frame(name, GOOD), MAX_REQUEST_BYTES)
    assert parse_request(payload) == (name, GOOD, None)
    payload = _pipe_frames(request_frame(name, GOOD, 7.5), MAX_REQUEST_BYTES)
    assert parse_request(payload) == (name, GOOD, 7.5)
    message = "SignatureValidationFailed: trustd: tag 1.1 is not signed in …"
    assert parse_answer(_pipe_frames(answer_frame(False, message), 1000)) == (False, message)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (frame(b"x" * 101), "frame of 101 bytes; at most 100"),
        (b"\x00\x00\x00\x10{}", "connection closed 2 bytes into a 16-byte read"),
        (b"\x00\x00", "connection closed 2 bytes into a 4-byte read"),
    ],
)
def test_frames_are_bounded_and_complete(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        _pipe_frames(data, 100)


def test_a_frame_that_never_completes_times_out() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"\x00\x00\x00\x10{")
        with pytest.raises(AnswerTimeout):
            read_frame(right, 100, time.monotonic() + 0.05)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"[1]", "not a JSON object"),
        (b'{"name": "a"}', 'needs "name" and "digest"'),
        (b'{"name": 1, "digest": "b"}', 'needs "name" and "digest"'),
        (b'{"name": "a",', "not JSON"),
        (b'{"name": "\x01"}', "not JSON"),
        (b"\xff", "not UTF-8"),
        (b'{"name": "a", "digest": "b", "timeout": 0}', '"timeout" must be a number'),
        (b'{"name": "a", "digest": "b", "timeout": true}', '"timeout" must be a number'),
    ],
)
def test_malformed_requests(payload: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse_request(payload)


def test_json_objects() -> None:
    import json

    document = {"digest": GOOD, "size": 1234, "annotations": {"a": "\u00e9\n"}, "x": [1.5, None]}
    assert loads_object(json.dumps(document).encode()) == document
    assert loads_object(b' {"a": true}\n') == {"a": True}
    for payload, problem in (
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": -Infinity}', "-Infinity is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'{"a": 1} {"b": 2}', "Extra data"),
    ):
        with pytest.raises(ProtocolError, match=problem):
            loads_object(payload)


# --- what containerd reads on stdout -------------------------------------------------------------


def test_judgement_lines() -> None:
    policy, _ = engine({("example.com/app", "1"): GOOD, ("example.com/audited/app", "1"): GOOD})
    assert judgement_of(policy.judge_resolved("example.com/app:1", GOOD)) == (
        True,
        f"trustd: signed by targets as {GOOD}",
    )
    assert judgement_of(policy.judge_resolved("example.com/app:1", OTHER)) == (
        False,
        f"SignatureValidationFailed: trustd: tag 1 of example.com/app is signed as {GOOD}, "
        f"not {OTHER}",
    )
    allowed, line = judgement_of(policy.judge_resolved("example.com/audited/app:1", OTHER))
    assert allowed
    assert line.startswith("trustd: admitted in audit mode (policy[0]): tag 1 of")


# --- the daemon's socket -------------------------------------------------------------------------


def _socket_dir() -> Path:
    # pytest's tmp paths can exceed the 107-byte limit of a unix socket path.
    return Path(tempfile.mkdtemp(prefix="trustd-verify-"))


@pytest.fixture
def served() -> Iterator[tuple[VerifierSocketServer, list[Decision], PolicyEngine]]:
    policy, decisions = engine({("example.com/app", "1"): GOOD})
    directory = _socket_dir()
    server = VerifierSocketServer(directory / "verify.sock", policy.judge_resolved)
    server.start()
    try:
        yield server, decisions, policy
    finally:
        server.stop()
        directory.rmdir()


def ask(path: Path, data: bytes) -> tuple[bool, str]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(str(path))
        connection.sendall(data)
        return parse_answer(read_frame(connection, 1 << 16, time.monotonic() + 10))


def test_socket_answers_with_the_policy(served) -> None:
    server, decisions, _ = served
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    assert ask(server.path, request_frame("example.com/app:1", GOOD)) == (
        True,
        f"trustd: signed by targets as {GOOD}",
    )
    allowed, message = ask(server.path, request_frame("example.com/app:2", GOOD))
    assert not allowed
    assert message == "SignatureValidationFailed: trustd: tag 2 is not signed in example.com/app"
    assert [(d.action, d.image) for d in decisions] == [
        ("verify", "example.com/app:1"),
        ("verify", "example.com/app:2"),
    ]


def test_socket_refuses_a_bad_request_with_a_reason(served) -> None:
    server, decisions, _ = served
    allowed, message = ask(server.path, frame(b'{"name": "x"}'))
    assert not allowed
    assert message.startswith('trustd: bad request to the daemon: a request needs "name"')
    assert decisions == []


def test_socket_answers_concurrent_questions(served) -> None:
    server, decisions, _ = served
    answers: list[tuple[bool, str]] = []
    lock = threading.Lock()

    def one() -> None:
        answer = ask(server.path, request_frame("example.com/app:1", GOOD))
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 16 and all(allowed for allowed, _ in answers)
    assert len(decisions) == 16


def test_stop_removes_the_socket_and_a_stale_one_is_replaced() -> None:
    policy, _ = engine({})
    directory = _socket_dir()
    path = directory / "verify.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the path stays: a socket file nobody listens on
    server = VerifierSocketServer(path, policy.judge_resolved)
    server.start()
    assert ask(path, request_frame("example.com/app:1", GOOD))[0] is False
    server.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="exists and is not a socket"):
        VerifierSocketServer(path, policy.judge_resolved).start()
    path.unlink()
    directory.rmdir()


# --- the program, in this process ----------------------------------------------------------------


def write_config(directory: Path, verifier_socket: Path | str) -> Path:
    path = directory / "trustd.toml"
    path.write_text(
        f'[server]\nstate_dir = "{directory / "state"}"\nverifier_socket = "{verifier_socket}"\n'
        '[audit]\nfile = ""\n'
    )
    return path


def test_main_asks_the_daemon(served, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    server, decisions, _ = served
    config = write_config(tmp_path, server.path)
    status = main(["-name", "example.com/app:1", "-digest", GOOD, "--config", str(config)])
    out, err = capsys.readouterr()
    assert (status, out) == (0, f"trustd: signed by targets as {GOOD}\n")
    assert f"judged by the trustd daemon on {server.path}" in err
    denied = main(["-name=example.com/app:1", f"--digest={OTHER}", "-c", str(config)])
    out, _ = capsys.readouterr()
    assert denied == 1
    assert out.startswith("SignatureValidationFailed: trustd: tag 1 of example.com/app is signed")
    assert len(decisions) == 2


def test_main_relative_verifier_socket_is_relative_to_the_config(
    served, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _, _ = served
    config = write_config(server.path.parent, "verify.sock")
    assert main(["-name", "example.com/app:1", "-digest", GOOD, "--config", str(config)]) == 0
    assert "judged by the trustd daemon" in capsys.readouterr().err
    config.unlink()


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ([], "-name is required"),
        (["-name", "a:1"], "-digest is required"),
        (["-name"], "flag '-name' needs a value"),
        (["-name", "a:1", "-digest", GOOD, "-frobnicate", "1"], "unknown flag '-frobnicate'"),
        (["stray"], "unexpected argument 'stray'"),
        (["-name", "a:1", "-digest", GOOD, "--timeout", "soon"], "--timeout must be a number"),
    ],
)
def test_bad_arguments_block_the_pull_with_a_reason(
    arguments: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(arguments) == 2
    out, _ = capsys.readouterr()
    assert out.startswith("trustd: image verifier: ")
    assert problem in out
    assert out.count("\n") == 1


# --- the program as containerd runs it -----------------------------------------------------------


def run_verifier(
    arguments: list[str], stdin: bytes, config: Path
) -> subprocess.CompletedProcess[bytes]:
    script = entry_script(sys.executable, str(config), [str(REPO_ROOT)])
    directory = _socket_dir()
    executable = directory / "trustd"
    executable.write_text(script)
    executable.chmod(0o755)
    try:
        return subprocess.run(
            [str(executable), *arguments], input=stdin, capture_output=True, timeout=60
        )
    finally:
        executable.unlink()
        directory.rmdir()


def test_descriptor_on_stdin_must_match_the_digest(served, tmp_path: Path) -> None:
    server, decisions, _ = served
    config = write_config(tmp_path, server.path)
    base = ["-name", "example.com/app:1", "-digest", GOOD, "-stdin-media-type"]
    descriptor = (
        b'{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"%s","size":1}\n'
        % GOOD.encode()
    )
    ok = run_verifier([*base, DESCRIPTOR_MEDIA_TYPE], descriptor, config)
    assert (ok.returncode, ok.stdout) == (0, f"trustd: signed by targets as {GOOD}\n".encode())

    other = descriptor.replace(GOOD.encode(), OTHER.encode())
    mismatch = run_verifier([*base, DESCRIPTOR_MEDIA_TYPE], other, config)
    assert mismatch.returncode == 2
    assert mismatch.stdout.decode() == (
        f"trustd: image verifier: the descriptor on stdin is for {OTHER}, but -digest is {GOOD}\n"
    )
    garbage = run_verifier([*base, DESCRIPTOR_MEDIA_TYPE], b"<html>", config)
    assert garbage.returncode == 2
    assert garbage.stdout.startswith(b"trustd: image verifier: stdin is not an OCI descriptor")

    # A media type this verifier does not know: stdin is ignored, the arguments judged.
    future = run_verifier([*base, "application/vnd.example.future+cbor"], b"\x00\x01", config)
    assert future.returncode == 0, future
    assert b"not understood; judging from -name and -digest" in future.stderr
    assert len(decisions) == 2
    assert b"Traceback" not in ok.stderr + mismatch.stderr + garbage.stderr + future.stderr


def test_entry_script() -> None:
    script = entry_script("/opt/trustd/venv/bin/python", "/etc/trustd/trustd.toml")
    assert script.startswith("#!/opt/trustd/venv/bin/python -I\n")
    assert "sys.exit(main(['--config', '/etc/trustd/trustd.toml', *sys.argv[1:]]))" in script
    fast = entry_script("/v/bin/python", "/c.toml", ["/v/lib/python3.11/site-packages"])
    assert fast.startswith("#!/v/bin/python -IS\n")
    assert "sys.path[:0] = ['/v/lib/python3.11/site-packages']" in fast
    with pytest.raises(ValueError, match="cannot be named"):
        entry_script("/path with space/python", "/c.toml")


def test_fast_path_imports_no_trust_engine(served, tmp_path: Path) -> None:
    """With the daemon answering, the verifier process never loads the trust engine."""
    server, _, _ = served
    config = write_config(tmp_path, server.path)
    # -I -S: neither the environment nor site's .pth files bring modules of their own.
    code = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
        "from trustd.programs.image_verifier import main; "
        "status = main(sys.argv[1:]); "
        "print('modules', sorted(sys.modules), file=sys.stderr); sys.exit(status)"
    )
    arguments = ["-name", "example.com/app:1", "-digest", GOOD, "-c", str(config)]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("modules ")]
    modules = set(ast.literal_eval(line.removeprefix("modules ")))
    assert {m for m in modules if m.startswith("trustd")} == {
        "trustd",
        "trustd.programs",
        "trustd.localapi",
        "trustd.programs.image_verifier",
        "trustd.localapi.client",
        "trustd.localapi.wire",
    }
    # The standard library's json, socket and (for a config of its own) tomllib; nothing of the
    # trust engine.
    assert {"json", "socket", "tomllib"} <= modules
    assert not {m for m in modules if m.partition(".")[0] in HEAVY}


def test_where_the_verifier_looks_for_the_daemon(tmp_path: Path) -> None:
    from trustd.localapi.client import DEFAULT_VERIFIER_SOCKET, verifier_socket

    config = tmp_path / "trustd.toml"
    assert verifier_socket(str(config)) == DEFAULT_VERIFIER_SOCKET  # no file (yet)
    config.write_text('[server]\nstate_dir = "/srv/trustd"\n')
    assert verifier_socket(str(config)) == DEFAULT_VERIFIER_SOCKET
    config.write_text('[server]\nverifier_socket = ""\n')
    assert verifier_socket(str(config)) is None  # not served: judge in this process
    config.write_text('[server]\n"verifier_socket" = "run/v.sock"\n')
    assert verifier_socket(str(config)) == str(tmp_path / "run" / "v.sock")
    config.write_text('server.verifier_socket = "/x/v.sock"\n')
    assert verifier_socket(str(config)) == "/x/v.sock"
    config.write_text('[server]\nverifier_socket = "/x/v.sock\n')  # broken: the daemon's default
    assert verifier_socket(str(config)) == DEFAULT_VERIFIER_SOCKET


def test_a_daemon_that_does_not_answer_in_time_blocks_with_trustds_reason(tmp_path: Path) -> None:
    """A hung daemon: the verifier reports its own reason before containerd's timeout would."""
    directory = _socket_dir()
    path = directory / "verify.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(path))
    silent.listen(8)  # accepts (in the kernel's backlog), never answers
    try:
        config = write_config(tmp_path, path)
        started = time.monotonic()
        run = run_verifier(
            ["-name", "example.com/app:1", "-digest", GOOD, "--timeout", "1"], b"", config
        )
        assert time.monotonic() - started < 30
    finally:
        silent.close()
        path.unlink()
        directory.rmdir()
    assert run.returncode == 2
    assert run.stdout.decode() == (
        f"trustd: image verifier: no judgement within 1s: the trustd daemon on {path} did not "
        "answer before the deadline\n"
    )


def test_the_fast_path_defaults_are_the_configs() -> None:
    # The fast paths repeat them so that they never import trustd.config.model.
    from trustd.config import model as config
    from trustd.localapi import client as daemon_socket

    assert str(config.DEFAULT_VERIFIER_SOCKET) == daemon_socket.DEFAULT_VERIFIER_SOCKET
    assert str(config.DEFAULT_CONFIG_PATH) == daemon_socket.DEFAULT_CONFIG
