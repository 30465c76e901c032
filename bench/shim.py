"""trustd under test: its config file, the process serving the shim, and that process's memory.

Two ways to host the shim, both in a process of their own so that its memory is not mixed with
the benchmark's:

- ``daemon``: ``trustd serve --config FILE``, the production entry point (trustd/service/daemon.py);
- ``host``: ``python3 -m bench.host FILE``, which wires ``cri_shim.server.serve`` to a
  ``PolicyEngine`` and nothing else (no audit log, no metrics), for when the daemon is in flux.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.stack.trustd_config import trustd_config_text

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_config(
    path: Path,
    *,
    socket: Path,
    containerd_endpoint: str,
    state_dir: Path,
    audit_file: Path,
    registry: str,
    notary_url: str,
    notary_ca: Path,
    verifier_socket: Path | None = None,
    freshness_window: float | None = None,
    extra: str = "",
) -> Path:
    """A trustd config for the bench: every repository of ``registry`` enforced (the default).

    ``freshness_window`` None leaves trustd's default. ``extra`` (TOML tables: ``[registry]``,
    ``[notation]``, ``[[policy]]`` rules) is appended.
    """
    server: dict[str, str | int | float] = {"pull_timeout": 120, "shutdown_grace": 2}
    if freshness_window is not None:
        server["freshness_window"] = freshness_window
    text = trustd_config_text(
        state_dir=state_dir,
        notary=[(registry, notary_url, notary_ca)],
        containerd_endpoint=containerd_endpoint,
        socket=socket,
        verifier_socket=verifier_socket,
        server=server,
        audit_file=audit_file,
        policy=extra,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass(frozen=True)
class Memory:
    rss_mib: float
    peak_rss_mib: float


def memory_of(pid: int) -> Memory:
    """VmRSS and VmHWM of a process, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(rest.split()[0]) / 1024.0  # kB -> MiB
    return Memory(fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan")))


class ShimProcess:
    """The process serving trustd's CRI socket."""

    def __init__(
        self, mode: str, config: Path, socket: Path, log: Path, upstream: str | None = None
    ) -> None:
        """``mode`` "relay" runs bench/relay.py to ``upstream`` instead of trustd."""
        if mode not in ("daemon", "host", "relay"):
            raise ValueError(f"unknown shim mode {mode!r}")
        self.mode = mode
        self.config = config
        self.socket = socket
        self.log = log
        self._log_file = log.open("ab")
        if mode == "daemon":
            command = [sys.executable, "-m", "trustd", "serve", "--config", str(config)]
        elif mode == "relay":
            assert upstream is not None, "a relay needs its upstream"
            command = [sys.executable, "-m", "bench.relay", str(socket), upstream]
        else:
            command = [sys.executable, "-m", "bench.host", str(config)]
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [environment.get("PYTHONPATH")])]
        )
        environment.pop("NOTIFY_SOCKET", None)
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ListImages through the socket answers (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the {self.mode} shim exited with {self.process.returncode}; log: {self.log}"
                )
            if self.socket.exists():
                with grpc.insecure_channel(f"unix://{self.socket}") as channel:
                    try:
                        api_pb2_grpc.ImageServiceStub(channel).ListImages(
                            api_pb2.ListImagesRequest(), timeout=5
                        )
                        return
                    except grpc.RpcError:
                        pass
            time.sleep(0.05)
        raise RuntimeError(
            f"the {self.mode} shim did not answer within {timeout}s; log: {self.log}"
        )

    def memory(self) -> Memory:
        return memory_of(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the shim process so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # Fields 14 and 15 of stat(5) (utime, stime), counted after the ")" of the name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._log_file.close()
