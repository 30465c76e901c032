"""The image verifier's pieces without Notary: wire format, the daemon's socket, the program's
arguments, stdin and output, and the file installed into containerd's bin_dir.

The real judgement against the real notary-server is tested in tests/e2e/test_image_verifier.py.
"""

from __future__ import annotations

import ast
import contextlib
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.test_policy import GOOD, OTHER, engine
from trustd.localapi.client import DaemonAbsent, DaemonRefused, ask
from trustd.localapi.server import VerifierSocketServer, judgement_of
from trustd.localapi.wire import (
    MAX_REQUEST_BYTES,
    AnswerTimeout,
    ProtocolError,
    Refused,
    TrustctlVerify,
    VerifyPull,
    error_frame,
    frame,
    loads_object,
    parse_request,
    parse_trustctl_verify_answer,
    parse_verify_pull_answer,
    read_frame,
    verify_pull_answer_frame,
    verify_pull_frame,
)
from trustd.policy.engine import Decision, PolicyEngine
from trustd.programs.image_verifier import DESCRIPTOR_MEDIA_TYPE, entry_script, main

REPO_ROOT = Path(__file__).resolve().parents[2]
# What the fast paths must never import: the trust engine's dependencies.
HEAVY = {"cryptography", "requests", "urllib3", "grpc", "google", "prometheus_client"}
CONFIG = "/etc/trustd/trustd.toml"


# --- wire format ---------------------------------------------------------------------------------


def _pipe_frames(data: bytes, limit: int, timeout: float = 2.0) -> bytes:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        return read_frame(right, limit, time.monotonic() + timeout)


def test_request_and_answer_round_trip() -> None:
    name = 'registry.example.com/app:1.4"\\\u00e9\u2028'
    payload = _pipe_frames(verify_pull_frame(CONFIG, name, GOOD), MAX_REQUEST_BYTES)
    assert b"\n" not in payload and payload.isascii()  # one line of ASCII, whatever the name
    assert parse_request(payload) == VerifyPull(CONFIG, name, GOOD, None)
    payload = _pipe_frames(verify_pull_frame(CONFIG, name, GOOD, 7.5), MAX_REQUEST_BYTES)
    assert parse_request(payload) == VerifyPull(CONFIG, name, GOOD, 7.5)
    message = "SignatureValidationFailed: trustd: tag 1.1 is not signed in …"
    answer = _pipe_frames(verify_pull_answer_frame(False, message), 1000)
    assert parse_verify_pull_answer(answer) == (False, message)


def test_every_frame_says_its_version_and_kind() -> None:
    import json

    assert json.loads(verify_pull_frame(CONFIG, "a:1", GOOD, 1.25)[4:]) == {
        "version": 1,
        "kind": "verify-pull",
        "config": CONFIG,
        "name": "a:1",
        "digest": GOOD,
        "timeout": 1.25,
    }
    assert json.loads(verify_pull_answer_frame(True, "ok")[4:]) == {
        "version": 1,
        "kind": "verify-pull",
        "allowed": True,
        "message": "ok",
    }
    assert json.loads(error_frame("no")[4:]) == {"version": 1, "kind": "error", "error": "no"}


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


_PULL = f'"kind": "verify-pull", "config": "{CONFIG}"'


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"[1]", "not a JSON object"),
        (b'{"version": 1,', "not JSON"),
        (b"\xff", "not UTF-8"),
        (b'{"kind": "verify-pull"}', 'a request needs "version"; this daemon speaks version 1'),
        (b'{"version": 2, "kind": "verify-pull"}', "unsupported protocol version 2; this daemon"),
        (b'{"version": "1"}', 'unsupported protocol version "1"'),
        (b'{"version": true}', "unsupported protocol version true"),
        (b'{"version": 1}', 'a request needs a "kind"'),
        (b'{"version": 1, "kind": "pull"}', 'unknown request kind "pull"; this daemon answers'),
        (b'{"version": 1, "kind": ["x"]}', "unknown request kind list"),
        (b'{"version": 1, "kind": "verify-pull"}', 'needs "config", the absolute path'),
        (b'{"version": 1, "kind": "verify-pull", "config": "t.toml"}', 'needs "config"'),
        (b'{"version": 1, %s, "name": "a"}' % _PULL.encode(), 'needs "name" and "digest"'),
        (b'{"version": 1, %s, "name": 1, "digest": "b"}' % _PULL.encode(), '"name" and "digest"'),
        (b'{"version": 1, %s, "timeout": 0}' % _PULL.encode(), '"timeout" must be seconds'),
        (b'{"version": 1, %s, "timeout": true}' % _PULL.encode(), '"timeout" must be seconds'),
        (b'{"version": 1, %s, "timeout": 1e400}' % _PULL.encode(), '"timeout" must be seconds'),
    ],
)
def test_malformed_requests(payload: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse_request(payload)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b'{"allowed": true, "message": "m"}', 'an answer needs "version"; this program speaks'),
        (b'{"version": 2, "kind": "verify-pull"}', "unsupported protocol version 2; this program"),
        (b'{"version": 1, "allowed": true, "message": "m"}', 'an answer of kind null to a "verify'),
        (b'{"version": 1, "kind": "trustctl-verify", "status": 0}', 'kind "trustctl-verify" to'),
        (b'{"version": 1, "kind": "verify-pull", "allowed": 1, "message": "m"}', '"allowed"'),
        (b'{"version": 1, "kind": "error"}', 'an error answer needs an "error" string'),
    ],
)
def test_malformed_answers(payload: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as raised:
        parse_verify_pull_answer(payload)
    assert not isinstance(raised.value, Refused)


def test_an_error_answer_is_a_refusal_of_either_kind() -> None:
    payload = error_frame("unsupported protocol version 2; this daemon speaks version 1")[4:]
    for parse in (parse_verify_pull_answer, parse_trustctl_verify_answer):
        with pytest.raises(Refused, match=r"^unsupported protocol version 2; this daemon speaks"):
            parse(payload)


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


def write_config(directory: Path, verifier_socket: Path | str, extra: str = "") -> Path:
    path = directory / "trustd.toml"
    path.write_text(
        f'{extra}[server]\nstate_dir = "{directory / "state"}"\n'
        f'verifier_socket = "{verifier_socket}"\n[audit]\nfile = ""\n'
    )
    return path


def no_queries(request: TrustctlVerify) -> tuple[int, str, str]:
    raise AssertionError(f"not asked here: {request}")


@contextlib.contextmanager
def serving(
    policy: PolicyEngine, query: Callable[[TrustctlVerify], tuple[int, str, str]] = no_queries
) -> Iterator[VerifierSocketServer]:
    """A verifier socket answering with ``policy``, for a config file of its own that names it."""
    directory = _socket_dir()
    path = directory / "verify.sock"
    server = VerifierSocketServer(path, write_config(directory, path), policy.judge_resolved, query)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory)


@pytest.fixture
def served() -> Iterator[tuple[VerifierSocketServer, list[Decision], PolicyEngine]]:
    policy, decisions = engine({("example.com/app", "1"): GOOD})
    with serving(policy) as server:
        yield server, decisions, policy


def exchange(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(str(path))
        connection.sendall(data)
        return read_frame(connection, 1 << 16, time.monotonic() + 10)


def judged(server: VerifierSocketServer, name: str, digest: str = GOOD) -> tuple[bool, str]:
    request = verify_pull_frame(str(server.config), name, digest)
    return parse_verify_pull_answer(exchange(server.path, request))


def refusal(path: Path, data: bytes) -> str:
    with pytest.raises(Refused) as refused:
        parse_verify_pull_answer(exchange(path, data))
    return str(refused.value)


def test_socket_answers_with_the_policy(served) -> None:
    server, decisions, _ = served
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    assert judged(server, "example.com/app:1") == (True, f"trustd: signed by targets as {GOOD}")
    allowed, message = judged(server, "example.com/app:2")
    assert not allowed
    assert message == "SignatureValidationFailed: trustd: tag 2 is not signed in example.com/app"
    assert [(d.action, d.image) for d in decisions] == [
        ("verify", "example.com/app:1"),
        ("verify", "example.com/app:2"),
    ]


def test_socket_refuses_what_it_cannot_take_with_a_reason(served) -> None:
    server, decisions, _ = served
    config = str(server.config)
    assert refusal(server.path, frame(b'{"name": "x"}')) == (
        'bad request: a request needs "version"; this daemon speaks version 1'
    )
    newer = b'{"version": 2, "kind": "verify-pull", "name": "x", "digest": "y"}'
    assert refusal(server.path, frame(newer)) == (
        "bad request: unsupported protocol version 2; this daemon speaks version 1"
    )
    other = b'{"version": 1, "kind": "verify-image", "config": "%s"}' % config.encode()
    assert refusal(server.path, frame(other)) == (
        'bad request: unknown request kind "verify-image"; this daemon answers "verify-pull" and '
        '"trustctl-verify"'
    )
    too_long = frame(b" " * (MAX_REQUEST_BYTES + 1))
    assert refusal(server.path, too_long) == (
        f"bad request: frame of {MAX_REQUEST_BYTES + 1} bytes; at most {MAX_REQUEST_BYTES} are "
        "accepted"
    )
    assert decisions == []
    assert judged(server, "example.com/app:1")[0]  # and it goes on answering


def test_socket_answers_only_about_the_config_file_it_serves(served, tmp_path: Path) -> None:
    server, decisions, _ = served
    other = write_config(tmp_path, server.path)
    request = verify_pull_frame(str(other), "example.com/app:1", GOOD)
    assert refusal(server.path, request) == f"this daemon serves {server.config}, not {other}"
    missing = tmp_path / "missing.toml"
    request = verify_pull_frame(str(missing), "example.com/app:1", GOOD)
    assert refusal(server.path, request) == f"this daemon serves {server.config}, not {missing}"
    assert decisions == []
    # The same file by another name is the same config.
    link = tmp_path / "link.toml"
    link.symlink_to(server.config)
    request = verify_pull_frame(str(link), "example.com/app:1", GOOD)
    assert parse_verify_pull_answer(exchange(server.path, request))[0]
    assert len(decisions) == 1


def test_socket_answers_concurrent_questions(served) -> None:
    server, decisions, _ = served
    answers: list[tuple[bool, str]] = []
    lock = threading.Lock()

    def one() -> None:
        answer = judged(server, "example.com/app:1")
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
    config = write_config(directory, path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the path stays: a socket file nobody listens on
    server = VerifierSocketServer(path, config, policy.judge_resolved, no_queries)
    server.start()
    assert judged(server, "example.com/app:1")[0] is False
    server.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="exists and is not a socket"):
        VerifierSocketServer(path, config, policy.judge_resolved, no_queries).start()
    shutil.rmtree(directory)


# --- finding the daemon --------------------------------------------------------------------------


def test_a_default_install_asks_without_reading_its_config(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustd.localapi import client

    server, decisions, _ = served
    monkeypatch.setattr(client, "DEFAULT_CONFIG", str(server.config))
    monkeypatch.setattr(client, "DEFAULT_VERIFIER_SOCKET", str(server.path))

    def unread(config: str) -> str | None:
        raise AssertionError(f"{config} was read")

    monkeypatch.setattr(client, "verifier_socket", unread)
    request = verify_pull_frame(str(server.config), "example.com/app:1", GOOD)
    deadline = time.monotonic() + 10
    answer, path = ask(str(server.config), request, deadline, parse_verify_pull_answer)
    assert (answer, path) == ((True, f"trustd: signed by targets as {GOOD}"), str(server.path))
    assert len(decisions) == 1


def test_a_daemon_on_the_default_socket_serving_another_config(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config is read, and the daemon it names asked, when the daemon on the default socket
    serves another file."""
    from trustd.localapi import client

    server, decisions, _ = served
    config = str(server.config)
    request = verify_pull_frame(config, "example.com/app:1", GOOD)
    deadline = time.monotonic() + 10
    stranger_policy, stranger_decisions = engine({})
    monkeypatch.setattr(client, "DEFAULT_CONFIG", config)
    with serving(stranger_policy) as stranger:
        monkeypatch.setattr(client, "DEFAULT_VERIFIER_SOCKET", str(stranger.path))
        answer, path = ask(config, request, deadline, parse_verify_pull_answer)
        assert answer[0] is True and path == str(server.path)
        assert (len(decisions), stranger_decisions) == (1, [])

        # The config names the default socket too: that refusal is the answer, asked once.
        server.config.write_text(f'[server]\nverifier_socket = "{stranger.path}"\n')
        with pytest.raises(DaemonRefused, match="refused the request: this daemon serves"):
            ask(config, request, deadline, parse_verify_pull_answer)
    # Nothing listens there: the one attempt's reason.
    with pytest.raises(DaemonAbsent, match=f"^no daemon on {stranger.path} "):
        ask(config, request, deadline, parse_verify_pull_answer)
    server.config.write_text('[server]\nverifier_socket = ""\n')
    with pytest.raises(DaemonAbsent, match=f"^{config} serves no verifier socket$"):
        ask(config, request, deadline, parse_verify_pull_answer)
    assert stranger_decisions == []


# --- the program, in this process ----------------------------------------------------------------


def test_main_asks_the_daemon(served, capsys: pytest.CaptureFixture[str]) -> None:
    server, decisions, _ = served
    config = server.config
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
    assert config == server.config
    assert main(["-name", "example.com/app:1", "-digest", GOOD, "--config", str(config)]) == 0
    assert f"judged by the trustd daemon on {server.path}" in capsys.readouterr().err


def test_main_judges_here_when_the_daemon_serves_another_config(
    served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server, decisions, _ = served
    # Exempt here (judging it needs no Notary), signed there.
    config = write_config(tmp_path, server.path, 'exempt = ["example.com/app:*"]\n')
    assert main(["-name", "example.com/app:1", "-digest", GOOD, "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out == "trustd: exempt by pattern 'example.com/app:*'\n"
    assert (
        f"trustd-image-verifier: the trustd daemon on {server.path} refused the request: this "
        f"daemon serves {server.config}, not {config}; judging in this process\n"
    ) in err
    assert "judged by this process (no daemon)" in err
    assert decisions == []


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


def test_descriptor_on_stdin_must_match_the_digest(served) -> None:
    server, decisions, _ = served
    config = server.config
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


def _fast_path_modules(
    tmp_path: Path, server: VerifierSocketServer, default_install: bool
) -> set[str]:
    """The modules a verifier process loaded to have the daemon judge; ``default_install``: as
    one whose config and socket are the default paths (here: made so in the process)."""
    # -I -S: neither the environment nor site's .pth files bring modules of their own.
    code = f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
    if default_install:
        code += (
            "from trustd.localapi import client; "
            f"client.DEFAULT_CONFIG = {str(server.config)!r}; "
            f"client.DEFAULT_VERIFIER_SOCKET = {str(server.path)!r}; "
        )
    code += (
        "from trustd.programs.image_verifier import main; "
        "status = main(sys.argv[1:]); "
        "print('modules', sorted(sys.modules), file=sys.stderr); sys.exit(status)"
    )
    arguments = ["-name", "example.com/app:1", "-digest", GOOD, "-c", str(server.config)]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"judged by the trustd daemon on {server.path}" in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("modules ")]
    return set(ast.literal_eval(line.removeprefix("modules ")))


def test_fast_path_imports_no_trust_engine(served, tmp_path: Path) -> None:
    """With the daemon answering, the verifier process never loads the trust engine."""
    server, _, _ = served
    for default_install in (False, True):
        modules = _fast_path_modules(tmp_path, server, default_install)
        assert {m for m in modules if m.startswith("trustd")} == {
            "trustd",
            "trustd.programs",
            "trustd.localapi",
            "trustd.config",
            "trustd.config.paths",
            "trustd.programs.image_verifier",
            "trustd.localapi.client",
            "trustd.localapi.wire",
        }
        # The standard library's json and socket; nothing of the trust engine.
        assert {"json", "socket"} <= modules
        assert not {m for m in modules if m.partition(".")[0] in HEAVY}
        assert not modules & {"logging", "dataclasses", "argparse"}
        # A config of its own is read with tomllib; a default install's is not read at all.
        assert ("tomllib" in modules) is not default_install
        # Nor typing then, which tomllib imports: the fast path's modules do without it.
        assert ("typing" in modules) is not default_install


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


def test_the_fast_path_reads_the_configs_default_socket() -> None:
    from trustd.config.model import ServerConfig
    from trustd.localapi import client as daemon_socket

    assert str(ServerConfig().verifier_socket) == daemon_socket.DEFAULT_VERIFIER_SOCKET
