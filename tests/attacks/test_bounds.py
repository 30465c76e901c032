"""Bounded under a hostile or stalled Notary: size caps and deadlines, on the real programs.

A tampering HTTPS server (tests/attacks/harness.py) stands in front of the real notary-server.
It plays a Notary server that signs huge metadata (the test holds keys for timestamp and
snapshot through a root rotation signed by the real root key, as the server holds them in
docker's setup), and one that sends timestamp.json a byte at a time. ``trustctl verify --local``
runs as its own process, measured with ``wait4``; ``trustd serve`` runs as the real daemon in
front of the real containerd, and its peak memory is read from /proc.

The bounds asserted are generous (several times what the programs need here, far below what
they did before the limits applied): peak memory well under the size of the file served, and
wall times well under what a trickling server held them for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.attacks import resign
from tests.attacks.harness import Padded, TamperServer, Trickle, base_role, write_config
from tests.attacks.test_attacks import signed_repo
from tests.e2e.cri_helpers import running_shim, short_socket_dir
from tests.e2e.test_daemon import FakeServiceManager, serving
from tests.stack import NotaryServer, PushedImage, Stack
from tests.stack.trustd_config import trustd_config_text

PushImage = Callable[..., PushedImage]
REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
PADDED_BYTES = 200 * MIB
# Peak memory allowed while a 200 MiB file is refused (it was 442 MiB when the file was read).
PEAK_LIMIT = 150 * MIB
# A trickling timestamp under `timeout = 5`: refused well within this (it ran for over 40 s).
TRICKLE_BOUND = 30.0
# Through the daemon: both pulls refused well within this (both still ran after 25 s).
DAEMON_TRICKLE_BOUND = 25.0
PROGRAM_TIMEOUT = 180.0  # a hung program is a test failure, not a hung suite


# --- programs, measured -------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    status: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes


def trustctl_measured(tmp_path: Path, *args: str) -> Measured:
    """``trustctl ARGS`` as its own process: exit status, output, wall time and peak RSS."""
    out, err = tmp_path / "trustctl.out", tmp_path / "trustctl.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "trustd.programs.trustctl", *args],
            stdout=stdout,
            stderr=stderr,
            cwd=REPO_ROOT,
        )
    # wait4 gives this child's own resource usage (RUSAGE_CHILDREN would be the largest of
    # every child this test process ever waited for, skopeo and notary included).
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            break
        if time.monotonic() - started > PROGRAM_TIMEOUT:
            process.kill()
            os.wait4(process.pid, 0)
            pytest.fail(f"trustctl {' '.join(args)} still ran after {PROGRAM_TIMEOUT:g}s")
        time.sleep(0.05)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    return Measured(
        process.returncode,
        out.read_text(),
        err.read_text(),
        seconds,
        usage.ru_maxrss * 1024,  # Linux reports kibibytes
    )


def peak_rss_of(pid: int) -> int:
    """The peak resident memory of a running process so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def trustd_serve(
    tmp_path: Path, stack: Stack, notary_url: str, notary_extra: str
) -> Iterator[Daemon]:
    """``trustd serve`` for the stack's registry, its Notary at ``notary_url``; no freshness
    window, so every lookup asks the server."""
    socket_dir = short_socket_dir()
    config = tmp_path / "trustd.toml"
    config.write_text(
        trustd_config_text(
            state_dir=tmp_path / "state",
            notary=[(stack.registry.host, notary_url, stack.notary_server.ca_file)],
            containerd_endpoint=stack.containerd.endpoint,
            socket=socket_dir / "cri.sock",
            server={"freshness_window": 0},
            audit_file=tmp_path / "audit.log",
            notary_extra=notary_extra,
        )
    )
    manager = FakeServiceManager(socket_dir / "notify.sock")
    log = tmp_path / "trustd.log"
    try:
        with serving(config, log, manager) as process:
            yield Daemon(process, socket_dir / "cri.sock", log)
    finally:
        manager.close()
        for leftover in socket_dir.iterdir():
            leftover.unlink()
        socket_dir.rmdir()


@dataclass
class Pull:
    """One PullImage as kubelet sends it: no deadline of its own."""

    image: str
    outcome: str = ""
    seconds: float = 0.0


def cri_pull(socket: Path, pull: Pull) -> None:
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=pull.image))
        started = time.monotonic()
        try:
            stub.PullImage(request)  # no timeout: kubelet sends none on PullImage
            pull.outcome = "OK"
        except grpc.RpcError as error:
            pull.outcome = f"{error.code().name}: {error.details()}"
        pull.seconds = time.monotonic() - started


def in_threads(pulls: list[Pull], socket: Path) -> list[threading.Thread]:
    threads = [threading.Thread(target=cri_pull, args=(socket, pull)) for pull in pulls]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(PROGRAM_TIMEOUT)
        assert not thread.is_alive(), f"a PullImage still ran after {PROGRAM_TIMEOUT:g}s"


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# --- sizes --------------------------------------------------------------------------------------


def serve_padded(
    role: str, gun: str, notary_server: NotaryServer, tamper: TamperServer, keys: resign.CLIKeys
) -> Padded:
    """Serve a validly signed chain in which ``role`` (snapshot or targets) is padded to
    ``PADDED_BYTES`` with whitespace after its JSON, its length and hashes signed by its parent.
    """
    holder = resign.RootHolder(keys, notary_server.metadata(gun, "root"))
    real_snapshot = notary_server.metadata(gun, "snapshot")
    if role == "snapshot":
        padded = Padded(holder.snapshot(real_snapshot), PADDED_BYTES)
        listing: bytes | dict[str, object] = padded.file_meta()
    else:
        # The real targets.json, its signature intact (padding is outside the signed part).
        padded = Padded(notary_server.metadata(gun, "targets"), PADDED_BYTES)
        listing = holder.snapshot(real_snapshot, listed={"targets": padded.file_meta()})
        tamper.serve(gun, "snapshot", listing)
    tamper.serve(gun, role, padded)
    tamper.serve(gun, "root", holder.root)
    tamper.serve(
        gun, "timestamp", holder.timestamp(notary_server.metadata(gun, "timestamp"), listing)
    )
    return padded


def size_refusal(role: str, gun: str, server: str) -> str:
    parent = "timestamp" if role == "snapshot" else "snapshot"
    return (
        f"{role}.json for {gun} on {server} is {PADDED_BYTES} bytes as {parent}.json lists it, "
        f"over the {16 * MIB}-byte limit (max_metadata_bytes)"
    )


@pytest.mark.parametrize("role", ["snapshot", "targets"])
def test_trustctl_refuses_a_validly_signed_200_mib_file_without_reading_it(
    role: str,
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    keys: resign.CLIKeys,
    tmp_path: Path,
) -> None:
    image = signed_repo(stack, push_image, f"padded-{role}")
    gun = image.repository
    serve_padded(role, gun, notary_server, tamper, keys)
    config = write_config(tmp_path, stack.registry.host, tamper.url, notary_server.ca_file)

    run = trustctl_measured(tmp_path, "verify", image.tagged, "--local", "-c", str(config))
    print(f"trustctl verify --local, padded {role}: peak RSS {run.peak_rss / MIB:.0f} MiB")

    assert run.status == 1, (run.status, run.stdout, run.stderr)
    assert run.stdout == ""
    assert size_refusal(role, gun, tamper.url) in run.stderr, run.stderr
    assert run.peak_rss < PEAK_LIMIT, f"peak RSS {run.peak_rss / MIB:.0f} MiB"
    # Refused from its signed length alone: not a byte of it was asked for.
    assert not [name for name in tamper.fetched(gun) if base_role(name) == role]


def test_daemon_refuses_a_pull_behind_a_200_mib_snapshot_at_its_normal_footprint(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    keys: resign.CLIKeys,
    tmp_path: Path,
) -> None:
    image = signed_repo(stack, push_image, "padded-daemon")
    serve_padded("snapshot", image.repository, notary_server, tamper, keys)
    with trustd_serve(tmp_path, stack, tamper.url, "timeout = 30") as daemon:
        before = peak_rss_of(daemon.process.pid)
        pull = Pull(image.tagged)
        cri_pull(daemon.socket, pull)
        peak = peak_rss_of(daemon.process.pid)
        print(f"trustd serve: peak RSS {before / MIB:.0f} MiB before, {peak / MIB:.0f} MiB after")
        assert pull.outcome.startswith("UNKNOWN: SignatureValidationFailed: "), pull.outcome
        assert size_refusal("snapshot", image.repository, tamper.url) in pull.outcome
        assert peak < PEAK_LIMIT, f"peak RSS {peak / MIB:.0f} MiB (at start {before / MIB:.0f})"
        assert daemon.process.poll() is None, daemon.log_text()[-3000:]


# --- deadlines ----------------------------------------------------------------------------------


def trickle_timestamp(
    image: PushedImage, notary_server: NotaryServer, tamper: TamperServer
) -> None:
    """``tamper`` serves the real timestamp.json of ``image``'s repository a byte every 0.5 s."""
    timestamp = notary_server.metadata(image.repository, "timestamp")
    tamper.serve(image.repository, "timestamp", Trickle(timestamp, interval=0.5))


def assert_given_up(pull: Pull, repository: str, bound: float) -> None:
    """``pull`` was refused as an outage at the trickling timestamp of ``repository``, before
    ``bound`` seconds."""
    print(f"PullImage behind a trickling timestamp: {pull.seconds:.1f}s")
    assert pull.outcome.startswith("UNKNOWN: RegistryUnavailable: "), pull.outcome
    assert f"timestamp.json of {repository}" in pull.outcome, pull.outcome
    assert pull.seconds < bound, f"{pull.seconds:.1f}s"


def test_trustctl_gives_up_on_a_trickling_timestamp_at_the_notary_timeout(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    tmp_path: Path,
) -> None:
    fresh = signed_repo(stack, push_image, "trickle-fresh")
    cached = signed_repo(stack, push_image, "trickle-cached")
    # write_config sets `timeout = 5` in the [[notary]] table; offline = "cached" is the default.
    config = write_config(tmp_path, stack.registry.host, tamper.url, notary_server.ca_file)
    warm = trustctl_measured(tmp_path, "verify", cached.tagged, "--local", "-c", str(config))
    assert warm.status == 0, warm.stderr

    for image in (fresh, cached):
        trickle_timestamp(image, notary_server, tamper)

    # Nothing cached: unavailable (exit 3), once the 5 s for the download are up.
    run = trustctl_measured(tmp_path, "verify", fresh.tagged, "--local", "-c", str(config))
    print(f"trustctl verify --local, trickling timestamp: {run.seconds:.1f}s")
    assert run.status == 3, (run.status, run.stdout, run.stderr)
    assert f"timestamp.json of {fresh.repository}" in run.stderr, run.stderr
    assert "within 5s" in run.stderr, run.stderr
    assert run.seconds < TRICKLE_BOUND, f"{run.seconds:.1f}s"

    # Verified before: the cached answer, by the same bound.
    run = trustctl_measured(tmp_path, "verify", cached.tagged, "--local", "-c", str(config))
    print(f"trustctl verify --local, trickling timestamp, cached: {run.seconds:.1f}s")
    assert run.status == 0, (run.status, run.stdout, run.stderr)
    assert cached.digest in run.stdout
    assert run.seconds < TRICKLE_BOUND, f"{run.seconds:.1f}s"


def test_daemon_refuses_pulls_behind_a_trickling_timestamp_and_serves_the_others(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    tmp_path: Path,
) -> None:
    stalled = signed_repo(stack, push_image, "trickle-daemon")
    healthy = signed_repo(stack, push_image, "healthy-daemon")
    trickle_timestamp(stalled, notary_server, tamper)

    with trustd_serve(tmp_path, stack, tamper.url, "timeout = 5") as daemon:
        stalled_pulls = [Pull(stalled.tagged), Pull(stalled.tagged)]
        threads = in_threads(stalled_pulls, daemon.socket)
        wait_until(
            lambda: tamper.trickling(stalled.repository),
            60,
            "the daemon never asked for the trickling timestamp",
        )
        # The same Notary server answers another repository while that one trickles.
        healthy_pull = Pull(healthy.tagged)
        cri_pull(daemon.socket, healthy_pull)
        join_all(threads)

    assert healthy_pull.outcome == "OK", healthy_pull.outcome
    for pull in stalled_pulls:
        assert_given_up(pull, stalled.repository, DAEMON_TRICKLE_BOUND)


def test_a_pull_without_a_deadline_gets_the_pull_timeout(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    tmp_path: Path,
) -> None:
    # A Notary timeout far beyond the pull timeout: the pull's own deadline must end the wait.
    stalled = signed_repo(stack, push_image, "trickle-pull-timeout")
    trickle_timestamp(stalled, notary_server, tamper)
    config = trustd_config_text(
        state_dir=tmp_path / "state",
        notary=[(stack.registry.host, tamper.url, notary_server.ca_file)],
        server={"freshness_window": 0, "pull_timeout": 6},
        notary_extra="timeout = 300",
    )
    with running_shim(config, stack.containerd.endpoint, tmp_path / "state") as shim:
        pull = Pull(stalled.tagged)
        cri_pull(shim.socket, pull)
    assert_given_up(pull, stalled.repository, TRICKLE_BOUND)
