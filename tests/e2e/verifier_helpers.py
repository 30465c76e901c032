"""containerd's image verifier as installed on a node, and ``trustd serve`` answering it.

``install_verifier`` writes the file install.sh puts into containerd's ``bin_dir``
(``trustd.programs.image_verifier.entry_script``), importing trustd from this source tree;
``run_verifier``
runs it exactly as containerd's bindir plugin does: ``-name``, ``-digest``, ``-stdin-media-type``
and the image's OCI descriptor as JSON on stdin. ``running_daemon`` starts the real daemon
process with its verifier socket.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.e2e.test_daemon import start_serve, stop_process
from tests.stack import NotaryServer, PushedImage, Registry, Stack, free_port, wait_for
from tests.stack.trustd_config import trustd_config_text
from trustd.programs.image_verifier import DESCRIPTOR_MEDIA_TYPE, entry_script

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 150.0
UNREACHABLE_REGISTRY = "notary-down.test"  # a registry whose Notary server is down
# What the programs' fast paths (the daemon answering) must never import: the trust engine's
# dependencies, and json (the daemon reads the image verifier's descriptor).
HEAVY = {"cryptography", "requests", "urllib3", "grpc", "google", "prometheus_client", "json"}

PushImage = Callable[..., PushedImage]


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
    timeout: float | None = None,
) -> VerifierRun:
    """Run the verifier as containerd does; ``python_flags`` runs the same file through the
    interpreter with extra flags (e.g. ``-X importtime``) instead of through its #! line."""
    arguments = ["-name", name, "-digest", str(descriptor["digest"])]
    arguments += ["-stdin-media-type", media_type]
    if timeout is not None:
        arguments += ["--timeout", str(timeout)]
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
        stop_process(self.process)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(path))
    return True


@contextmanager
def running_daemon(config: Path, verifier_socket: Path, metrics_port: int) -> Iterator[Daemon]:
    """``trustd serve --config config`` from this tree, until its verifier socket answers."""
    log = config.with_suffix(".daemon.log")
    process = start_serve(config, log, env={"PYTHONPATH": str(REPO_ROOT)}, append=True)
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


def unique_repo(prefix: str) -> str:
    return f"trustd-verifier/{prefix}-{uuid.uuid4().hex[:8]}"


def signed_image(stack: Stack, push_image: PushImage, prefix: str, tag: str = "1.0") -> PushedImage:
    image = push_image(unique_repo(prefix), tag, seed=uuid.uuid4().hex)
    stack.sign(image)
    return image


@dataclass
class Node:
    """One node's trustd: config, the installed verifier, and the daemon if it runs."""

    config: Path
    verifier: Path
    audit: Path
    state_dir: Path
    verifier_socket: Path
    metrics_port: int
    registry: Registry
    unreachable_notary: str
    daemon: Daemon | None = None

    def judge(self, name: str, descriptor: dict[str, object], **options: object) -> VerifierRun:
        run = run_verifier(self.verifier, name, descriptor, **options)  # type: ignore[arg-type]
        assert "Traceback" not in run.stderr, run.stderr
        assert run.stdout.count("\n") == 1, run.stdout  # one line: the reason containerd shows
        assert run.judged_by_daemon == (self.daemon is not None), run.stderr
        return run

    def judge_pull(self, image: PushedImage) -> VerifierRun:
        """Judge ``image.tagged`` as containerd would after resolving it in the registry now."""
        return self.judge(image.tagged, descriptor_of(self.registry, image))

    def audited(self, name: str) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [line for line in lines if line["image"] == name and line["action"] == "verify"]


def make_node(
    directory: Path,
    registry: Registry,
    notary_server: NotaryServer,
    *,
    notary_url: str | None = None,
    state_dir: Path | None = None,
    policy: str = "",
) -> Node:
    """A config for the test stack (plus a registry whose Notary is down, an audited and an
    exempt pattern, then ``policy``) and the verifier installed for it. ``notary_url`` replaces
    the registry's Notary (e.g. by one that is down); ``state_dir`` shares another node's."""
    directory.mkdir(parents=True, exist_ok=True)
    state_dir = state_dir or directory / "state"
    verifier_socket = short_directory("trustd-v-") / "verify.sock"
    unreachable = f"https://127.0.0.1:{free_port()}"
    port = free_port()
    text = trustd_config_text(
        state_dir=state_dir,
        notary=[
            (registry.host, notary_url or notary_server.url, notary_server.ca_file),
            (UNREACHABLE_REGISTRY, unreachable, notary_server.ca_file),
        ],
        policy=f'[[policy]]\nmatch = "{registry.host}/trustd-verifier/audit-*"\nmode = "audit"\n'
        + policy,
        socket=verifier_socket.parent / "cri.sock",
        verifier_socket=verifier_socket,
        # The verifier hook needs no containerd; the daemon's CRI side is not used here.
        containerd_endpoint=f"unix://{verifier_socket.parent / 'no-containerd.sock'}",
        audit_file=directory / "audit.log",
        metrics_listen=f"127.0.0.1:{port}",
        notary_extra="timeout = 5",
    )
    config = directory / "trustd.toml"
    # exempt is a top-level key, so it goes before the first table.
    config.write_text(f'exempt = ["{registry.host}/trustd-verifier/exempt-*:*"]\n{text}')
    return Node(
        config=config,
        verifier=install_verifier(directory / "bin", config),
        audit=directory / "audit.log",
        state_dir=state_dir,
        verifier_socket=verifier_socket,
        metrics_port=port,
        registry=registry,
        unreachable_notary=unreachable,
    )
