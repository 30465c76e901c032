"""containerd's image verifier as installed on a node, and ``trustd serve`` answering it.

``install_verifier`` writes the file install.sh puts into containerd's ``bin_dir``
(``trustd.verifier.entry_script``), importing trustd from this source tree; ``run_verifier``
runs it exactly as containerd's bindir plugin does: ``-name``, ``-digest``, ``-stdin-media-type``
and the image's OCI descriptor as JSON on stdin. ``running_daemon`` starts the real daemon
process with its verifier socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.stack import PushedImage, Registry, wait_for
from trustd.verifier import DESCRIPTOR_MEDIA_TYPE, entry_script

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0


def install_verifier(bin_dir: Path, config: Path) -> Path:
    """The verifier file of a node install, importing trustd from this tree (and its
    dependencies from this interpreter's site-packages, as a node's venv would)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    paths = sysconfig.get_paths()
    import_paths = [str(REPO_ROOT), *dict.fromkeys((paths["purelib"], paths["platlib"]))]
    executable = bin_dir / "trustd"
    executable.write_text(entry_script(sys.executable, str(config), import_paths))
    executable.chmod(0o755)
    return executable


@dataclass(frozen=True)
class VerifierRun:
    status: int
    stdout: str
    stderr: str

    @property
    def first_line(self) -> str:
        return self.stdout.splitlines()[0] if self.stdout else ""

    @property
    def judged_by_daemon(self) -> bool:
        return "judged by the trustd daemon on " in self.stderr


def descriptor_of(registry: Registry, image: PushedImage) -> dict[str, object]:
    """The OCI descriptor containerd resolves ``image.tagged`` to: what the registry serves."""
    manifest, media_type = registry.get_manifest(image.repository, image.tag)
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(manifest)}


def run_verifier(
    executable: Path,
    name: str,
    descriptor: dict[str, object],
    *,
    media_type: str = DESCRIPTOR_MEDIA_TYPE,
    stdin: bytes | None = None,
    python_flags: tuple[str, ...] = (),
) -> VerifierRun:
    """Run the verifier as containerd does; ``python_flags`` runs the same file through the
    interpreter with extra flags (e.g. ``-X importtime``) instead of through its #! line."""
    arguments = ["-name", name, "-digest", str(descriptor["digest"])]
    arguments += ["-stdin-media-type", media_type]
    if stdin is None:
        # containerd writes json.Encoder output: compact, one line.
        stdin = json.dumps(descriptor, separators=(",", ":")).encode() + b"\n"
    command = [str(executable), *arguments]
    if python_flags:
        command = [sys.executable, "-IS", *python_flags, *command]
    result = subprocess.run(command, input=stdin, capture_output=True, timeout=TIMEOUT, check=False)
    return VerifierRun(
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def short_directory(prefix: str) -> Path:
    """A directory for unix sockets: pytest's tmp paths can exceed the 107-byte sun_path."""
    return Path(tempfile.mkdtemp(prefix=prefix))


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    verifier_socket: Path
    metrics_port: int
    log: Path

    def metric(self, sample: str) -> float:
        """The value of one sample line (``name{labels}``) of the daemon's /metrics, 0 if absent."""
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(path))
    return True


@contextmanager
def running_daemon(config: Path, verifier_socket: Path, metrics_port: int) -> Iterator[Daemon]:
    """``trustd serve --config config`` from this tree, until its verifier socket answers."""
    log = config.with_suffix(".daemon.log")
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    environment.pop("NOTIFY_SOCKET", None)
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "trustd", "serve", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            cwd=REPO_ROOT,
        )
    daemon = Daemon(process, verifier_socket, metrics_port, log)
    try:
        wait_for(
            lambda: _answers(verifier_socket),
            30.0,
            f"trustd's verifier socket {verifier_socket}",
            log_path=log,
            still_running=lambda: process.poll() is None,
        )
        yield daemon
    finally:
        daemon.stop()
