"""The image verifier's pieces without Notary: wire format, the daemon's socket, the program's
arguments, stdin and output, and the file installed into containerd's bin_dir.

The real judgement against the real notary-server is tested in tests/e2e/test_image_verifier.py.
"""

from __future__ import annotations

import ast
import contextlib
import random
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
    MAX_TIMEOUT,
    AnswerTimeout,
    ProtocolError,
    Refused,
    TrustctlVerify,
    VerifyPull,
    decode,
    encode,
    error_frame,
    frame,
    loads_object,
    parse_request,
    parse_trustctl_verify_answer,
    parse_verify_pull_answer,
    read_frame,
    trustctl_verify_answer_frame,
    trustctl_verify_frame,
    verify_pull_answer_frame,
    verify_pull_frame,
)
from trustd.policy.engine import Decision, PolicyEngine
from trustd.programs.image_verifier import DESCRIPTOR_MEDIA_TYPE, entry_script, main

REPO_ROOT = Path(__file__).resolve().parents[2]
# What the fast paths must never import: the trust engine's dependencies, and json (the daemon
# reads the image verifier's descriptor).
HEAVY = {"cryptography", "requests", "urllib3", "grpc", "google", "prometheus_client", "json"}
CONFIG = "/etc/trustd/trustd.toml"


# --- wire format ---------------------------------------------------------------------------------


def _pipe_frames(data: bytes, limit: int, timeout: float = 2.0) -> bytes:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        return read_frame(right, limit, time.monotonic() + timeout)


def _items(*texts: str | bytes) -> bytes:
    """Items as the format spells them, each a 4-byte big-endian size and its bytes."""
    data = [text.encode() if isinstance(text, str) else text for text in texts]
    return b"".join(len(item).to_bytes(4, "big") + item for item in data)


def test_request_and_answer_round_trip() -> None:
    name = 'registry.example.com/app:1.4"\\\u00e9\u2028\n\x00'
    payload = _pipe_frames(verify_pull_frame(CONFIG, name, GOOD), MAX_REQUEST_BYTES)
    assert parse_request(payload) == VerifyPull(CONFIG, name, GOOD, None)
    payload = _pipe_frames(verify_pull_frame(CONFIG, name, GOOD, 7.5), MAX_REQUEST_BYTES)
    assert parse_request(payload) == VerifyPull(CONFIG, name, GOOD, 7.5)
    message = "SignatureValidationFailed: trustd: tag 1.1 is not signed in …"
    answer = _pipe_frames(verify_pull_answer_frame(False, message), 1000)
    assert parse_verify_pull_answer(answer) == (False, message)


def test_every_frame_says_its_version_and_kind() -> None:
    """The bytes of the format as docs/architecture.md spells them."""
    request = verify_pull_frame(CONFIG, "a:1", GOOD, 1.25)
    payload = b"\x02" + _items(
        "verify-pull", "config", CONFIG, "name", "a:1", "digest", GOOD, "timeout", "1.250"
    )
    assert request == len(payload).to_bytes(4, "big") + payload
    assert decode(payload, "a test") == (
        "verify-pull",
        {"config": CONFIG, "name": "a:1", "digest": GOOD, "timeout": "1.250"},
    )
    assert verify_pull_answer_frame(True, "ok")[4:] == b"\x02" + _items(
        "verify-pull", "allowed", "true", "message", "ok"
    )
    assert error_frame("no")[4:] == b"\x02" + _items("error", "error", "no")
    # The example in docs/architecture.md, "The local socket's frames".
    assert verify_pull_answer_frame(True, "trustd: ok") == (
        b"\x00\x00\x00\x3c\x02\x00\x00\x00\x0bverify-pull\x00\x00\x00\x07allowed\x00\x00\x00\x04true"
        b"\x00\x00\x00\x07message\x00\x00\x00\x0atrustd: ok"
    )


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
        (b"", "an empty payload"),
        (b"\x02", 'a payload needs a "kind"'),
        (b"\x02\x00\x00", "item 1 cut short: 2 bytes left"),
        (b"\x02\x00\x00\x00\x05abc", "item 1 of 5 bytes, with 3 bytes left"),
        (b"\x02" + _items("verify-pull", "name"), "field 'name' has no value"),
        (b"\x02" + _items("verify-pull", "a", "1", "a", "2"), "field 'a' twice"),
        (b"\x02" + _items("verify-pull", b"\xff"), "item 2 is not UTF-8"),
        (b"\x02" + _items("verify-pull", b"\xed\xa0\x80"), "item 2 is not UTF-8"),
        (b"\x03" + _items("verify-pull"), "unsupported protocol version 3; the reader speaks"),
        (b'{"version": 1, "kind": "verify-pull"}', "unsupported protocol version 1 \\(JSON\\)"),
    ],
)
def test_malformed_payloads(payload: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode(payload, "the reader")


_PULL = ("verify-pull", "config", CONFIG)


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        (("pull", "config", CONFIG), "unknown request kind 'pull'; this daemon answers"),
        (("error", "error", "x"), "unknown request kind 'error'"),
        (("verify-pull",), 'needs "config", the absolute path'),
        (("verify-pull", "config", "t.toml"), 'needs "config"'),
        ((*_PULL, "name", "a"), 'needs "name" and "digest"'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "0"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "0.000"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "true"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "1e3"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "-1"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "nan"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", " 5"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "1.2.3"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "\u0665"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "3601"), '"timeout" must be seconds'),
        ((*_PULL, "name", "a", "digest", GOOD, "timeout", "9" * 400), '"timeout" must be seconds'),
    ],
)
def test_malformed_requests(items: tuple[str, ...], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse_request(b"\x02" + _items(*items))


def test_request_fields_a_daemon_does_not_know_are_ignored() -> None:
    payload = b"\x02" + _items(*_PULL, "name", "a:1", "digest", GOOD, "later", "x", "timeout", ".5")
    assert parse_request(payload) == VerifyPull(CONFIG, "a:1", GOOD, 0.5)


def test_the_daemon_checks_the_descriptor_it_is_sent() -> None:
    descriptor = '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s"}'
    request = verify_pull_frame(CONFIG, "a:1", GOOD, None, descriptor % GOOD)
    assert parse_request(request[4:]) == VerifyPull(CONFIG, "a:1", GOOD, None)
    for sent, problem in (
        (descriptor % OTHER, f"\"descriptor\" is for '{OTHER}', but \"digest\" is '{GOOD}'"),
        ("<html>", '"descriptor" is not an OCI descriptor: not JSON: Expecting value'),
        ("[1]", '"descriptor" is not an OCI descriptor: not a JSON object: list'),
        ('{"digest": 1}', '"descriptor" is not an OCI descriptor: it has no "digest" string'),
        ('{"digest": NaN}', "not JSON: NaN is not JSON"),
    ):
        with pytest.raises(ProtocolError) as raised:
            parse_request(verify_pull_frame(CONFIG, "a:1", GOOD, None, sent)[4:])
        assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\x03" + _items("verify-pull"), "unsupported protocol version 3; this program"),
        (b'{"version": 1, "kind": "verify-pull"}', r"version 1 \(JSON\); this program speaks"),
        (b"\x02" + _items("trustctl-verify", "status", "0"), "kind 'trustctl-verify' to a"),
        (b"\x02" + _items("verify-pull", "allowed", "yes", "message", "m"), '"allowed"'),
        (b"\x02" + _items("verify-pull", "allowed", "True", "message", "m"), '"allowed"'),
        (b"\x02" + _items("verify-pull", "allowed", "true"), '"allowed" .* and "message"'),
        (b"\x02" + _items("error"), 'an error answer needs "error"'),
    ],
)
def test_malformed_answers(payload: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as raised:
        parse_verify_pull_answer(payload)
    assert not isinstance(raised.value, Refused)


def test_an_error_answer_is_a_refusal_of_either_kind() -> None:
    payload = error_frame("unsupported protocol version 3; this daemon speaks version 2")[4:]
    for parse in (parse_verify_pull_answer, parse_trustctl_verify_answer):
        with pytest.raises(Refused, match=r"^unsupported protocol version 3; this daemon speaks"):
            parse(payload)


def test_text_that_is_not_unicode_makes_a_frame_the_reader_refuses() -> None:
    # Python holds argument bytes that are not UTF-8 as lone surrogates.
    request = verify_pull_frame(CONFIG, "a:1\udcff", GOOD)
    with pytest.raises(ProtocolError, match="item 5 is not UTF-8"):
        parse_request(request[4:])


def _random_text(generator: random.Random) -> str:
    alphabet = 'az:/@."\\\x00\n\t\u00e9\u2028\u20ac\U0001f600'
    return "".join(generator.choice(alphabet) for _ in range(generator.randrange(0, 40)))


def test_round_trips_of_random_text() -> None:
    generator = random.Random(20261202)
    for _ in range(500):
        config = "/" + _random_text(generator)
        name, digest, message = (_random_text(generator) for _ in range(3))
        timeout = generator.choice([None, generator.uniform(0.001, MAX_TIMEOUT)])
        request = parse_request(verify_pull_frame(config, name, digest, timeout)[4:])
        assert isinstance(request, VerifyPull)
        assert (request.config, request.name, request.digest) == (config, name, digest)
        if timeout is None:
            assert request.timeout is None
        else:
            assert request.timeout == pytest.approx(timeout, abs=0.0005)
        allowed = generator.random() < 0.5
        answer = verify_pull_answer_frame(allowed, message)[4:]
        assert parse_verify_pull_answer(answer) == (allowed, message)
        status, stdout, stderr = generator.randrange(256), name * 3, message
        answer = trustctl_verify_answer_frame(status, stdout, stderr)[4:]
        assert parse_trustctl_verify_answer(answer) == (status, stdout, stderr)
        fields = {_random_text(generator): _random_text(generator) for _ in range(5)}
        assert decode(encode(name, fields), "a test") == (name, fields)


def _mutated(generator: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(generator.randrange(1, 4)):
        choice = generator.randrange(4)
        if choice == 0 and data:
            data[generator.randrange(len(data))] = generator.randrange(256)
        elif choice == 1:
            del data[generator.randrange(len(data) + 1) :]
        elif choice == 2:
            position = generator.randrange(len(data) + 1)
            data[position:position] = generator.randbytes(generator.randrange(1, 9))
        elif data:
            position = generator.randrange(len(data))
            del data[position : position + generator.randrange(1, 9)]
    return bytes(data)


def test_random_bytes_never_crash_the_readers() -> None:
    """Whatever arrives, a reader returns its value or raises ProtocolError: never anything else,
    and it never reads past the payload it is given."""
    generator = random.Random(1202)
    valid = [
        verify_pull_frame(CONFIG, "example.com/app:1", GOOD, 7.5, f'{{"digest":"{GOOD}"}}')[4:],
        trustctl_verify_frame(CONFIG, "example.com/app:1", True, 59.5)[4:],
        verify_pull_answer_frame(True, "trustd: signed")[4:],
        trustctl_verify_answer_frame(0, "out\n", "")[4:],
        error_frame("bad request")[4:],
    ]
    readers = (parse_request, parse_verify_pull_answer, parse_trustctl_verify_answer)
    taken = 0
    for round_ in range(20_000):
        if round_ % 4 == 0:
            payload = generator.randbytes(generator.randrange(0, 64))
        elif round_ % 4 == 1:
            payload = b"\x02" + generator.randbytes(generator.randrange(0, 64))
        else:
            payload = _mutated(generator, generator.choice(valid))
        for reader in readers:
            try:
                reader(payload)
                taken += 1
            except ProtocolError:
                pass
    assert taken > 0  # the mutations leave some frames valid: the readers were reached


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
        (b"\xff", "not UTF-8"),
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
    # A client of protocol version 1 (JSON), e.g. between an upgrade and the daemon's restart.
    older = b'{"version": 1, "kind": "verify-pull", "config": "%s"}' % config.encode()
    assert refusal(server.path, frame(older)) == (
        "bad request: unsupported protocol version 1 (JSON); this daemon speaks version 2"
    )
    newer = b"\x03" + _items("verify-pull", "config", config)
    assert refusal(server.path, frame(newer)) == (
        "bad request: unsupported protocol version 3; this daemon speaks version 2"
    )
    other = encode("verify-image", {"config": config})
    assert refusal(server.path, frame(other)) == (
        "bad request: unknown request kind 'verify-image'; this daemon answers \"verify-pull\" "
        'and "trustctl-verify"'
    )
    mismatch = verify_pull_frame(config, "example.com/app:1", GOOD, None, f'{{"digest":"{OTHER}"}}')
    assert refusal(server.path, mismatch) == (
        f"bad request: \"descriptor\" is for '{OTHER}', but \"digest\" is '{GOOD}'"
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

    # The daemon checks the descriptor it is sent and refuses the question; the verifier then
    # says why in its own words.
    other = descriptor.replace(GOOD.encode(), OTHER.encode())
    mismatch = run_verifier([*base, DESCRIPTOR_MEDIA_TYPE], other, config)
    assert mismatch.returncode == 2
    assert mismatch.stdout.decode() == (
        f"trustd: image verifier: the descriptor on stdin is for {OTHER}, but -digest is {GOOD}\n"
    )
    assert b'refused the request: bad request: "descriptor" is for' in mismatch.stderr
    garbage = run_verifier([*base, DESCRIPTOR_MEDIA_TYPE], b"<html>", config)
    assert garbage.returncode == 2
    assert garbage.stdout.startswith(b"trustd: image verifier: stdin is not an OCI descriptor")
    assert b'refused the request: bad request: "descriptor" is not an OCI' in garbage.stderr

    # One that cannot be sent (not UTF-8, longer than a request may be) is checked here.
    latin = run_verifier([*base, DESCRIPTOR_MEDIA_TYPE], b'{"digest": "\xe9"}', config)
    assert latin.returncode == 2
    assert latin.stdout.startswith(b"trustd: image verifier: stdin is not an OCI descriptor: not")
    assert b"refused" not in latin.stderr
    padding = b' "annotations": {"a": "%s"},' % (b"x" * MAX_REQUEST_BYTES)
    long = run_verifier(
        [*base, DESCRIPTOR_MEDIA_TYPE], descriptor.replace(b"{", b"{" + padding, 1), config
    )
    assert (long.returncode, long.stdout) == (0, ok.stdout)
    assert f"judged by the trustd daemon on {server.path}".encode() in long.stderr
    long_other = other.replace(b"{", b"{" + padding, 1)
    long_mismatch = run_verifier([*base, DESCRIPTOR_MEDIA_TYPE], long_other, config)
    assert (long_mismatch.returncode, long_mismatch.stdout) == (2, mismatch.stdout)
    assert b"refused" not in long_mismatch.stderr

    # A media type this verifier does not know: stdin is ignored, the arguments judged.
    future = run_verifier([*base, "application/vnd.example.future+cbor"], b"\x00\x01", config)
    assert future.returncode == 0, future
    assert b"not understood; judging from -name and -digest" in future.stderr
    assert len(decisions) == 3
    runs = (ok, mismatch, garbage, latin, long, long_mismatch, future)
    assert not any(b"Traceback" in run.stderr for run in runs)


def test_entry_script() -> None:
    script = entry_script("/opt/trustd/venv/bin/python", "/etc/trustd/trustd.toml")
    assert script.startswith("#!/opt/trustd/venv/bin/python -I\n")
    assert "sys.exit(main(['--config', '/etc/trustd/trustd.toml', *sys.argv[1:]]))" in script
    fast = entry_script("/v/bin/python", "/c.toml", ["/v/lib/python3.11/site-packages"])
    assert fast.startswith("#!/v/bin/python -IS\n")
    assert "sys.path[:0] = ['/v/lib/python3.11/site-packages']" in fast
    with pytest.raises(ValueError, match="cannot be named"):
        entry_script("/path with space/python", "/c.toml")


def fast_path_run(
    tmp_path: Path,
    server: VerifierSocketServer,
    default_install: bool,
    program: str,
    arguments: list[str],
    stdin: str | None = None,
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``main`` of ``program`` (a module of trustd.programs) run in a process of its own with
    ``arguments``, the daemon of ``server`` answering: what it wrote, and the modules it loaded.
    ``default_install``: as one whose config and socket are the default paths (here: made so in
    the process)."""
    # -I -S: neither the environment nor site's .pth files bring modules of their own.
    code = f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
    if default_install:
        code += (
            "from trustd.localapi import client; "
            f"client.DEFAULT_CONFIG = {str(server.config)!r}; "
            f"client.DEFAULT_VERIFIER_SOCKET = {str(server.path)!r}; "
        )
    code += (
        f"from {program} import main; "
        "status = main(sys.argv[1:]); "
        "print('modules', sorted(sys.modules), file=sys.stderr); sys.exit(status)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("modules ")]
    return result, set(ast.literal_eval(line.removeprefix("modules ")))


def assert_fast_path(modules: set[str], program: str, default_install: bool) -> None:
    """``program`` loaded three small modules of trustd besides itself, the standard library's
    socket (and tomllib to read a config of its own), and no json, argparse, logging or trust
    engine."""
    assert {m for m in modules if m.startswith("trustd")} == {
        "trustd",
        "trustd.programs",
        "trustd.localapi",
        "trustd.config",
        "trustd.config.paths",
        program,
        "trustd.localapi.client",
        "trustd.localapi.wire",
        "trustd.localapi.peer",
    }
    assert "socket" in modules
    assert not {m for m in modules if m.partition(".")[0] in HEAVY}
    assert not modules & {"logging", "dataclasses", "argparse"}
    # A config of its own is read with tomllib; a default install's is not read at all.
    assert ("tomllib" in modules) is not default_install
    # Nor typing and re then, which tomllib imports: the fast path's modules do without.
    assert ("typing" in modules) is not default_install
    assert ("re" in modules) is not default_install


def test_fast_path_imports_no_trust_engine(served, tmp_path: Path) -> None:
    """With the daemon answering, the verifier process never loads the trust engine."""
    server, _, _ = served
    # As containerd runs it: the descriptor on stdin.
    arguments = ["-name", "example.com/app:1", "-digest", GOOD, "-c", str(server.config)]
    arguments += ["-stdin-media-type", DESCRIPTOR_MEDIA_TYPE]
    descriptor = f'{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{GOOD}"}}'
    program = "trustd.programs.image_verifier"
    for default_install in (False, True):
        result, modules = fast_path_run(
            tmp_path, server, default_install, program, arguments, descriptor
        )
        assert f"judged by the trustd daemon on {server.path}" in result.stderr
        assert_fast_path(modules, program, default_install)


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
