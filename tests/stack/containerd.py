"""Debian's containerd with its CRI plugin on a private socket, root and state directory."""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from tests.stack.ports import StackError
from tests.stack.process import ManagedProcess
from tests.stack.trustd_config import toml_value

# Longest unix socket path the kernel accepts (sun_path is 108 bytes with the terminator).
_MAX_SOCKET_PATH = 100
_UNUSED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
)


def overlay_mount_works(scratch: Path) -> bool:
    """Whether an overlay filesystem can be mounted under ``scratch`` (not on every CI host)."""
    lower, upper, work, merged = (scratch / name for name in ("lower", "upper", "work", "merged"))
    for directory in (lower, upper, work, merged):
        directory.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        return False
    subprocess.run(["umount", str(merged)], capture_output=True, check=False)
    return True


def hosts_toml(host: str) -> str:
    """A containerd registry hosts.toml making ``host`` a plain-HTTP pull/resolve endpoint."""
    server = f"http://{host}"
    return (
        f"server = {toml_value(server)}\n\n"
        f"[host.{toml_value(server)}]\n"
        '  capabilities = ["pull", "resolve"]\n'
        "  skip_verify = true\n"
    )


class _ClassOrInstanceStart:
    """``Containerd.start(workdir, hosts)`` makes a daemon; ``daemon.start()`` starts it again.

    Tests read naturally as ``stop()`` … ``start()``, and both spellings were promised.
    """

    def __get__(
        self, instance: Containerd | None, owner: type[Containerd]
    ) -> Callable[..., Containerd | None]:
        return owner.launch if instance is None else instance.start_again


class Containerd:
    """One containerd daemon; ``endpoint`` is what CRI clients dial."""

    start = _ClassOrInstanceStart()

    def __init__(
        self,
        workdir: Path,
        snapshotter: str,
        socket_path: Path,
        sandbox_image: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.snapshotter = snapshotter
        self.socket = socket_path
        # The pause image of every pod sandbox; None keeps containerd's default (only image
        # calls work then: the default lives on registry.k8s.io, out of reach here).
        self.sandbox_image = sandbox_image
        self.root = workdir / "root"
        self.state = workdir / "state"
        self.hosts_dir = workdir / "certs.d"
        self.config_path = workdir / "containerd.toml"
        self.process = ManagedProcess(
            "containerd",
            ["containerd", "--config", str(self.config_path)],
            log_path=workdir / "containerd.log",
            cwd=workdir,
        )

    @classmethod
    def launch(
        cls,
        workdir: Path,
        registry_hosts: Iterable[str] = (),
        snapshotter: str | None = None,
        timeout: float = 30.0,
        sandbox_image: str | None = None,
    ) -> Containerd:
        """Start containerd; ``sandbox_image`` names the pause image pods are built on."""
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if snapshotter is None:
            snapshotter = (
                "overlayfs" if overlay_mount_works(workdir / "overlay-probe") else "native"
            )
        socket_path = workdir / "containerd.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            socket_path = Path(tempfile.mkdtemp(prefix="trustd-ctrd-")) / "containerd.sock"
        daemon = cls(workdir, snapshotter, socket_path, sandbox_image)
        daemon._write_config()
        for host in registry_hosts:
            daemon.add_registry_host(host)
        daemon.start_again(timeout)
        return daemon

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def add_registry_host(self, host: str) -> Path:
        """Allow plain-HTTP pulls from ``host`` ("127.0.0.1:PORT"); read per pull, no restart."""
        host_dir = self.hosts_dir / host
        host_dir.mkdir(parents=True, exist_ok=True)
        path = host_dir / "hosts.toml"
        path.write_text(hosts_toml(host))
        return path

    def _write_config(self) -> None:
        cri = '[plugins."io.containerd.grpc.v1.cri"'
        lines = [
            "version = 2",
            f"root = {toml_value(str(self.root))}",
            f"state = {toml_value(str(self.state))}",
            f"disabled_plugins = {json.dumps(list(_UNUSED_PLUGINS))}",
            "",
            "[grpc]",
            f"  address = {toml_value(str(self.socket))}",
            "",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {toml_value(str(self.workdir / 'opt'))}",
            "",
            f"{cri}]",
            "  disable_tcp_service = true",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            # Sandboxes get oom_score_adj -998, which a process without CAP_SYS_RESOURCE (as on
            # these machines) cannot set: runc then fails to start the pause container. This
            # caps the value at containerd's own instead.
            "  restrict_oom_score_adj = true",
            *(
                # containerd 1.6 looks this name up locally before pulling it itself.
                [f"  sandbox_image = {toml_value(self.sandbox_image)}"]
                if self.sandbox_image is not None
                else []
            ),
            "",
            f"{cri}.containerd]",
            f"  snapshotter = {toml_value(self.snapshotter)}",
            "",
            f"{cri}.cni]",
            # No CNI: image calls do not need it; private dirs keep the host's config out.
            f"  bin_dir = {toml_value(str(self.workdir / 'cni' / 'bin'))}",
            f"  conf_dir = {toml_value(str(self.workdir / 'cni' / 'net.d'))}",
            "",
            f"{cri}.registry]",
            f"  config_path = {toml_value(str(self.hosts_dir))}",
            "",
        ]
        self.config_path.write_text("\n".join(lines))

    def start_again(self, timeout: float = 30.0) -> None:
        """Start the daemon with the same config, root and state (after ``stop``).

        Also reachable as ``daemon.start()``: see ``_ClassOrInstanceStart``.
        """
        self.socket.unlink(missing_ok=True)
        self.process.start()
        self.process.wait_until(
            self.cri_ready, timeout, f"containerd CRI plugin on {self.endpoint}"
        )

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start_again(timeout)

    def stop(self) -> None:
        self.process.stop(timeout=10.0)

    def running(self) -> bool:
        return self.process.running()

    def cri_ready(self) -> bool:
        """The socket answers and the CRI image service has finished initialising."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(self.socket))
        # An empty ListImagesRequest is zero bytes, so no generated bindings are needed here;
        # the CRI plugin answers "not initialized" until its start-up is complete.
        with grpc.insecure_channel(self.endpoint) as channel:
            list_images = channel.unary_unary("/runtime.v1.ImageService/ListImages")
            list_images(b"", timeout=2)
        return True

    def ctr(self, *args: str, namespace: str = "k8s.io", check: bool = True) -> str:
        """Run ``ctr`` against this daemon and return its stdout."""
        command = ["ctr", "--address", str(self.socket), "--namespace", namespace, *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise StackError(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout

    def pull(self, reference: str, namespace: str = "k8s.io") -> str:
        """``ctr images pull`` through this daemon's registry hosts dir; returns ctr's output."""
        return self.ctr(
            "images",
            "pull",
            "--hosts-dir",
            str(self.hosts_dir),
            "--snapshotter",
            self.snapshotter,
            reference,
            namespace=namespace,
        )
