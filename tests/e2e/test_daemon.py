"""``trustd serve`` as systemd runs it: readiness, status, watchdog, SIGHUP reload, SIGTERM drain.

The daemon runs as a real process in front of the real containerd, registry and notary-server;
the test plays systemd's part by binding the NOTIFY_SOCKET datagram socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri_shim.crictl import ImageClient
from tests.stack import Stack
from tests.stack.ports import free_port
from tests.stack.trustd_config import trustd_config_text

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeServiceManager:
    """The receiving end of sd_notify: collects each datagram's assignments.

    A thread reads the socket all the time, as systemd does: a unix datagram socket queues only
    ``net.unix.max_dgram_qlen`` messages (10 by default), and once they are queued the daemon's
    next notification blocks until someone reads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="fake-systemd", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._changed:
                self.messages.append(fields)
                self._changed.notify_all()

    def wait_for(
        self, key: str, value: str | None = None, timeout: float = 30.0, since: int = 0
    ) -> int:
        """Index of the first message from ``since`` on (new or already received) with ``key``
        (set to ``value``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(since, len(self.messages)):
                    message = self.messages[index]
                    if key in message and (value is None or message[key] == value):
                        return index
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {key}={value} from trustd; got {self.messages}")
                self._changed.wait(remaining)

    def received(self) -> int:
        """How many messages have arrived so far (for ``since``)."""
        with self._changed:
            return len(self.messages)

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5)
        self._socket.close()


def start_serve(
    config: Path,
    log: Path,
    notify_socket: Path | None = None,
    env: dict[str, str] | None = None,
    append: bool = False,
) -> subprocess.Popen[bytes]:
    """``trustd serve --config config`` from this tree in a process of its own, its output in
    ``log`` (after what is there with ``append``), its sd_notify messages to ``notify_socket``
    (none without: never to whoever runs the tests); ``env`` added to this environment."""
    environment = dict(os.environ, **(env or {}))
    environment.pop("NOTIFY_SOCKET", None)
    if notify_socket is not None:
        environment["NOTIFY_SOCKET"] = str(notify_socket)
    with log.open("ab" if append else "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "trustd", "serve", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            cwd=REPO_ROOT,
        )


def stop_process(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """End ``process`` if it still runs: SIGTERM, then SIGKILL after ``grace`` seconds (at once
    with no grace)."""
    if process.poll() is not None:
        return
    if grace > 0:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
    process.kill()
    process.wait()


@contextmanager
def serving(
    config: Path,
    log: Path,
    manager: FakeServiceManager,
    env: dict[str, str] | None = None,
    grace: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """``start_serve``, yielded once it has told ``manager`` READY=1; ``stop_process`` after."""
    process = start_serve(config, log, manager.path, env)
    try:
        manager.wait_for("READY", "1", timeout=60)
        yield process
    finally:
        stop_process(process, grace)


@dataclass
class RunningDaemon:
    process: subprocess.Popen[bytes]
    config: Path
    socket: Path
    audit: Path
    log: Path
    manager: FakeServiceManager
    metrics_port: int

    def client(self) -> ImageClient:
        return ImageClient(f"unix://{self.socket}", timeout=60)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def write_config(path: Path, stack: Stack, workdir: Path, metrics_port: int, rules: str) -> None:
    path.write_text(
        trustd_config_text(
            state_dir=workdir / "state",
            notary=[(stack.registry.host, stack.notary_server.url, stack.notary_server.ca_file)],
            policy=rules,
            containerd_endpoint=stack.containerd.endpoint,
            socket=workdir / "cri.sock",
            server={"shutdown_grace": 20},
            audit_file=workdir / "audit.log",
            metrics_listen=f"127.0.0.1:{metrics_port}",
        )
    )


@pytest.fixture
def daemon(stack: Stack, tmp_path: Path) -> Iterator[RunningDaemon]:
    manager = FakeServiceManager(tmp_path / "notify.sock")
    config = tmp_path / "trustd.toml"
    port = free_port()
    write_config(config, stack, tmp_path, port, rules="")
    log = tmp_path / "trustd.log"
    try:
        with serving(config, log, manager, {"WATCHDOG_USEC": "1000000"}, grace=0) as process:
            yield RunningDaemon(
                process, config, tmp_path / "cri.sock", tmp_path / "audit.log", log, manager, port
            )
    finally:
        manager.close()


def pull_outcome(client: ImageClient, image: str) -> str:
    try:
        client.pull(image)
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    return "OK"


def test_ready_status_and_watchdog(daemon: RunningDaemon) -> None:
    assert daemon.socket.exists()
    status = daemon.manager.messages[daemon.manager.wait_for("STATUS")]
    assert "0 allowed, 0 denied" in status["STATUS"]
    # WATCHDOG_USEC=1s: trustd must ping at least every half second or so.
    daemon.manager.wait_for("WATCHDOG", "1", timeout=5)


def test_sighup_applies_a_valid_config_and_keeps_the_old_one_when_broken(
    daemon: RunningDaemon, stack: Stack
) -> None:
    unsigned = stack.push_image("daemon/reload", "1", seed="daemon-reload")
    image = f"{unsigned.repository}:1"
    client = daemon.client()
    assert pull_outcome(client, image).startswith(
        "UNKNOWN: SignatureValidationFailed: trustd: no trust data"
    )

    # A valid new config that turns verification off for this repository takes effect.
    write_config(
        daemon.config,
        stack,
        daemon.config.parent,
        daemon.metrics_port,
        rules=f'[[policy]]\nmatch = "{unsigned.repository}"\nmode = "off"\n',
    )
    before = daemon.manager.received()
    daemon.process.send_signal(signal.SIGHUP)
    reloading = daemon.manager.wait_for("RELOADING", "1", since=before)
    daemon.manager.wait_for("READY", "1", since=reloading + 1)
    assert pull_outcome(client, image) == "OK"

    # A broken config is refused with a reason; the running config (mode off) stays.
    daemon.config.write_text(daemon.config.read_text() + '\n[[policy]]\nmode = "enforced"\n')
    reloads_before = daemon.log_text().count("config reload refused")
    daemon.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while daemon.log_text().count("config reload refused") == reloads_before:
        assert time.monotonic() < deadline, daemon.log_text()
        time.sleep(0.05)
    assert "policy[1]" in daemon.log_text()
    assert daemon.process.poll() is None
    assert pull_outcome(client, image) == "OK"
    client.close()

    # The audit log records each decision, one JSON object a line.
    lines = [json.loads(line) for line in daemon.audit.read_text().splitlines()]
    verdicts = [(line["action"], line["verdict"], line["mode"]) for line in lines]
    assert ("pull", "deny", "enforce") in verdicts and ("pull", "allow", "off") in verdicts


def test_metrics_endpoint_counts_decisions(daemon: RunningDaemon, stack: Stack) -> None:
    import requests

    client = daemon.client()
    pull_outcome(client, f"{stack.registry.host}/daemon/nothing:1")
    client.close()
    text = requests.get(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10).text
    assert (
        'trustd_decisions_total{action="pull",format="notary-v1",mode="enforce",verdict="deny"} 1.0'
        in text
    )


def test_sigterm_finishes_calls_in_flight(daemon: RunningDaemon, stack: Stack) -> None:
    images = []
    for number in range(6):
        pushed = stack.push_image(f"daemon/drain{number}", "1", seed=f"drain-{number}")
        stack.sign(pushed)
        images.append(f"{pushed.repository}:1")
    outcomes: dict[str, str] = {}
    started = threading.Barrier(len(images) + 1)

    def pull(image: str) -> None:
        client = daemon.client()
        started.wait()
        outcomes[image] = pull_outcome(client, image)
        client.close()

    threads = [threading.Thread(target=pull, args=(image,)) for image in images]
    for thread in threads:
        thread.start()
    started.wait()
    # SIGTERM once trustd is working on a call (its decision is audited before the pull), so
    # the drain certainly has something to finish; a fixed sleep raced the calls' arrival.
    deadline = time.monotonic() + 30
    while not decided_images(daemon):
        assert time.monotonic() < deadline, "no pull reached trustd within 30 s"
        time.sleep(0.005)
    daemon.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    assert daemon.process.wait(60) == 0
    daemon.manager.wait_for("STOPPING", "1")
    # Every call trustd started, it finished. Calls it had not started when the stop came were
    # refused without being looked at: UNAVAILABLE, or CANCELLED for one that had arrived but
    # was not yet handed to a handler thread (grpc drops those when the server shuts down).
    decided = decided_images(daemon)
    assert decided, outcomes
    for image, outcome in outcomes.items():
        if image in decided:
            assert outcome == "OK", (image, outcomes)
        else:
            assert outcome.startswith(("UNAVAILABLE", "CANCELLED")), (image, outcomes)
    assert not daemon.socket.exists()
    assert "stopped" in daemon.log_text()


def decided_images(daemon: RunningDaemon) -> set[str]:
    """Images whose pull trustd has decided on (and so started to serve), from the audit log."""
    if not daemon.audit.exists():
        return set()
    text = daemon.audit.read_text()
    complete = text[: text.rfind("\n") + 1]  # a line being written right now is left out
    lines = [json.loads(line) for line in complete.splitlines() if line]
    return {line["image"] for line in lines if line["action"] == "pull"}


# Bits of SIGHUP, SIGINT and SIGTERM in a /proc/PID/task/TID/status signal mask.
_SHUTDOWN_AND_RELOAD_BITS = sum(1 << (number - 1) for number in (1, 2, 15))


def _threads_not_blocking_signals(pid: int) -> list[str]:
    """Threads of ``pid`` other than the main one that could take SIGHUP/SIGINT/SIGTERM.

    The main thread is left out: it takes them with sigtimedwait, during which Linux shows the
    awaited signals as unblocked.
    """
    unblocked = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.name == str(pid):
            continue
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # the thread ended while we looked
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields["SigBlk"], 16) & _SHUTDOWN_AND_RELOAD_BITS != _SHUTDOWN_AND_RELOAD_BITS:
            unblocked.append(f"{fields['Name'].strip()} ({task.name})")
    return unblocked


def test_a_storm_of_sighups_then_sigterm_exits_cleanly(daemon: RunningDaemon) -> None:
    # Every other thread (gRPC's included) blocks the signals; only the main loop takes them.
    assert len(list(Path(f"/proc/{daemon.process.pid}/task").iterdir())) > 1
    assert _threads_not_blocking_signals(daemon.process.pid) == []
    for _ in range(500):
        daemon.process.send_signal(signal.SIGHUP)
    daemon.process.send_signal(signal.SIGTERM)
    try:
        returncode = daemon.process.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"trustd did not exit within 30 s of SIGTERM:\n{daemon.log_text()[-3000:]}")
    assert returncode == 0, daemon.log_text()[-3000:]
    daemon.manager.wait_for("STOPPING", "1")
    assert "stopping" in daemon.log_text()
    assert "stopped" in daemon.log_text()
    assert not daemon.socket.exists()
