"""``trustd serve`` on a node's local interfaces: who the verifier socket answers, the directory it
refuses to serve from, and SIGHUP reloads of the keys that apply and one that needs a restart.

The daemon is the real program in its own process; its policy exempts the image asked about, so
no Notary or containerd is needed (the CRI socket is served, containerd never asked). Other
users are real: a forked child drops to ``nobody`` or ``daemon`` (tests.unit.as_user).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_daemon import FakeServiceManager, serving, start_serve, stop_process
from tests.unit.as_user import as_user
from tests.unit.test_policy import GOOD
from tests.unit.test_reload import scrape
from trustd.localapi.wire import (
    Refused,
    parse_verify_pull_answer,
    read_frame,
    verify_pull_frame,
)

NOBODY = 65534
IMAGE = "localhost/exempt/app:1"


def config_text(directory: Path, **changes: str) -> str:
    settings = {
        "socket": str(directory / "cri.sock"),
        "state_dir": str(directory / "state"),
        "verifier_socket": str(directory / "run" / "verify.sock"),
        "verifier_group": "",
        "socket_mode": "0660",
        "audit_file": str(directory / "audit.log"),
        "metrics": f"unix:{directory / 'metrics.sock'}",
    }
    settings.update(changes)
    return (
        'exempt = ["localhost/exempt/**"]\n'
        "[server]\n"
        f"socket = {json.dumps(settings['socket'])}\n"
        f"containerd = {json.dumps(f'unix://{directory}/containerd.sock')}\n"
        f"state_dir = {json.dumps(settings['state_dir'])}\n"
        f"verifier_socket = {json.dumps(settings['verifier_socket'])}\n"
        f"verifier_group = {json.dumps(settings['verifier_group'])}\n"
        f"socket_mode = {json.dumps(settings['socket_mode'])}\n"
        "[audit]\n"
        f"file = {json.dumps(settings['audit_file'])}\n"
        "stdout = false\n"
        "[metrics]\n"
        f"listen = {json.dumps(settings['metrics'])}\n"
    )


@dataclass
class Served:
    directory: Path
    config: Path
    process: subprocess.Popen[bytes]
    manager: FakeServiceManager
    log: Path

    @property
    def verifier_socket(self) -> Path:
        return self.directory / "run" / "verify.sock"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def reload(self, **changes: str) -> None:
        """Write the config with ``changes``, send SIGHUP and wait until trustd is ready again."""
        self.config.write_text(config_text(self.directory, **changes))
        before = self.manager.received()
        self.process.send_signal(signal.SIGHUP)
        reloading = self.manager.wait_for("RELOADING", "1", since=before)
        self.manager.wait_for("READY", "1", since=reloading + 1)

    def pull_request(self) -> bytes:
        return verify_pull_frame(str(self.config), IMAGE, GOOD, 10)


def _directory() -> Path:
    # Short: a unix socket path has at most 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="trustd-local-"))
    directory.chmod(0o755)
    return directory


@pytest.fixture
def served() -> Iterator[Served]:
    directory = _directory()
    config = directory / "trustd.toml"
    config.write_text(config_text(directory))
    manager = FakeServiceManager(directory / "notify.sock")
    log = directory / "trustd.log"
    try:
        with serving(config, log, manager) as process:
            yield Served(directory, config, process, manager, log)
    finally:
        manager.close()
        shutil.rmtree(directory)


def ask_as(user: str, path: Path, request: bytes, group: str | None = None) -> bytes:
    """The answer frame ``user`` gets on the socket at ``path``."""

    def ask() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            # Refused before the request was read: the refusal is still there to read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                client.sendall(request)
            return read_frame(client, 1 << 16, time.monotonic() + 30)

    return as_user(user, ask, group=group)


def ask_as_root(path: Path, request: bytes) -> tuple[bool, str]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        client.sendall(request)
        return parse_verify_pull_answer(read_frame(client, 1 << 16, time.monotonic() + 30))


def test_a_user_neither_root_nor_in_the_group_is_refused(served: Served) -> None:
    path = served.verifier_socket
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ask_as_root(path, served.pull_request())[0]
    # The socket's mode keeps nobody out; with it loosened, trustd refuses nobody itself.
    with pytest.raises(AssertionError, match="PermissionError"):
        ask_as("nobody", path, served.pull_request())
    path.chmod(0o666)
    with pytest.raises(Refused) as refused:
        parse_verify_pull_answer(ask_as("nobody", path, served.pull_request()))
    assert str(refused.value) == (
        "uid 65534 (nobody) may not ask this daemon: only root (server.verifier_group)"
    )
    assert "refused a connection of uid 65534 (nobody)" in served.log_text()
    records = [
        json.loads(line) for line in (served.directory / "audit.log").read_text().splitlines()
    ]
    assert len(records) == 1  # root's question only: nobody's was never judged

    # A reload gives the socket to nogroup: nobody (whose group it is) is answered, daemon
    # (uid 1, not a member) is not, by the mode nor, loosened, by trustd.
    served.reload(verifier_group="nogroup")
    status = path.stat()
    assert (stat.S_IMODE(status.st_mode), status.st_gid) == (0o660, NOBODY)
    allowed, message = parse_verify_pull_answer(ask_as("nobody", path, served.pull_request()))
    assert allowed and message.startswith("trustd: ")
    path.chmod(0o666)
    with pytest.raises(Refused, match=r"^uid 1 \(daemon\) may not ask this daemon: only root and "):
        parse_verify_pull_answer(ask_as("daemon", path, served.pull_request()))


def test_the_daemon_does_not_start_with_a_socket_directory_others_can_write() -> None:
    directory = _directory()
    try:
        (directory / "run").mkdir(mode=0o755)
        (directory / "run").chmod(0o777)
        (directory / "trustd.toml").write_text(config_text(directory))
        log = directory / "trustd.log"
        process = start_serve(directory / "trustd.toml", log, directory / "notify.sock")
        try:
            assert process.wait(120) == 1
        finally:
            stop_process(process, grace=0)
        output = log.read_text()
        assert (
            f"cannot start: verifier socket {directory / 'run' / 'verify.sock'} "
            f"(server.verifier_socket): the socket's directory {directory / 'run'} has mode "
            "0777: every user can write in it, so another user could listen in trustd's place"
        ) in output
        assert not (directory / "run" / "verify.sock").exists()
        assert not (directory / "cri.sock").exists()  # nothing left behind
    finally:
        shutil.rmtree(directory)


def test_sighup_applies_audit_metrics_and_socket_mode_and_refuses_state_dir(
    served: Served,
) -> None:
    directory = served.directory
    assert ask_as_root(served.verifier_socket, served.pull_request())[0]
    assert scrape(f"unix:{directory / 'metrics.sock'}").startswith(b"HTTP/1.1 200 ")

    served.reload(
        audit_file=str(directory / "audit-2.log"),
        metrics=f"unix:{directory / 'metrics-2.sock'}",
        socket_mode="0600",
    )
    assert stat.S_IMODE((directory / "cri.sock").stat().st_mode) == 0o600
    assert not (directory / "metrics.sock").exists()
    answer = scrape(f"unix:{directory / 'metrics-2.sock'}")
    assert b'trustd_config_reloads_total{result="success"} 1.0' in answer
    assert ask_as_root(served.verifier_socket, served.pull_request())[0]
    assert len((directory / "audit.log").read_text().splitlines()) == 1
    assert len((directory / "audit-2.log").read_text().splitlines()) == 1

    # A key that needs a restart: refused, naming it; nothing of that file applies.
    served.reload(
        audit_file=str(directory / "audit-3.log"),
        metrics=f"unix:{directory / 'metrics-2.sock'}",
        socket_mode="0660",
        state_dir=str(directory / "state-2"),
    )
    assert (
        f"config reload refused, keeping the running config: {served.config}: server.state_dir: "
        f"changing it needs a restart (running: {directory / 'state'}, new: "
        f"{directory / 'state-2'})"
    ) in served.log_text()
    assert stat.S_IMODE((directory / "cri.sock").stat().st_mode) == 0o600
    answer = scrape(f"unix:{directory / 'metrics-2.sock'}")
    assert b'trustd_config_reloads_total{result="failure"} 1.0' in answer
    assert ask_as_root(served.verifier_socket, served.pull_request())[0]
    assert not (directory / "audit-3.log").exists()
    assert len((directory / "audit-2.log").read_text().splitlines()) == 2
    assert served.process.poll() is None
