"""containerd with its CRI plugin on a private socket, root and state directory.

Debian's containerd 1.6 by default (config version 2); ``program=`` a containerd 2.x binary
writes the version 3 config instead, optionally with the image-verifier plugin's ``bin_dir``.
"""

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


def major_version(program: str) -> int:
    """The major version ``program --version`` reports (``containerd … 1.6.20~ds1 …`` -> 1)."""
    try:
        output = subprocess.run(
            [program, "--version"], capture_output=True, text=True, check=False, timeout=30
        ).stdout.split()
    except OSError as error:
        raise StackError(f"cannot run {program} --version: {error}") from error
    version = output[2] if len(output) > 2 else ""
    major = version.removeprefix("v").split(".", 1)[0]
    if not major.isdigit():
        raise StackError(f"{program} --version says {' '.join(output)!r}; no version in it")
    return int(major)


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
        program: str = "containerd",
        config_version: int = 2,
        verifier_bin_dir: Path | None = None,
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
        self.config_version = config_version
        self.verifier_bin_dir = verifier_bin_dir
        self.process = ManagedProcess(
            "containerd",
            [program, "--config", str(self.config_path)],
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
        program: str = "containerd",
        verifier_bin_dir: Path | None = None,
    ) -> Containerd:
        """Start containerd; ``sandbox_image`` names the pause image pods are built on.

        A containerd 2.x (``program`` a path to one) gets a version 3 config, with
        ``verifier_bin_dir`` as its image verifiers' ``bin_dir`` if given."""
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if snapshotter is None:
            snapshotter = (
                "overlayfs" if overlay_mount_works(workdir / "overlay-probe") else "native"
            )
        socket_path = workdir / "containerd.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            socket_path = Path(tempfile.mkdtemp(prefix="trustd-ctrd-")) / "containerd.sock"
        version = 3 if major_version(program) >= 2 else 2
        if verifier_bin_dir is not None and version < 3:
            raise StackError(f"{program} is containerd 1.x: it has no image-verifier plugin")
        daemon = cls(
            workdir, snapshotter, socket_path, sandbox_image, program, version, verifier_bin_dir
        )
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
        version_3 = self.config_version >= 3
        lines = self._config_version_3() if version_3 else self._config_version_2()
        self.config_path.write_text("\n".join(lines))

    def _config_head(self, version: int, quote: str) -> list[str]:
        """What every config version starts with: where containerd keeps things and listens.

        ``quote`` is how the version's examples quote plugin names (" in 2, ' in 3).
        """
        return [
            f"version = {version}",
            f"root = {toml_value(str(self.root))}",
            f"state = {toml_value(str(self.state))}",
            f"disabled_plugins = {json.dumps(list(_UNUSED_PLUGINS))}",
            "",
            "[grpc]",
            f"  address = {toml_value(str(self.socket))}",
            "",
            f"[plugins.{quote}io.containerd.internal.v1.opt{quote}]",
            f"  path = {toml_value(str(self.workdir / 'opt'))}",
            "",
        ]

    def _config_version_2(self) -> list[str]:
        """containerd 1.6: the CRI plugin's settings all live under io.containerd.grpc.v1.cri."""
        cri = '[plugins."io.containerd.grpc.v1.cri"'
        return [
            *self._config_head(2, '"'),
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

    def _config_version_3(self) -> list[str]:
        """containerd 2.x: the CRI plugin split into images and runtime plugins; the image
        verifiers (if any) judge every pull made through the transfer service, which the CRI
        plugin uses since 2.1 when its config allows (registry config_path does)."""
        images = "[plugins.'io.containerd.cri.v1.images'"
        runtime = "[plugins.'io.containerd.cri.v1.runtime'"
        lines = [
            *self._config_head(3, "'"),
            "[plugins.'io.containerd.grpc.v1.cri']",
            "  disable_tcp_service = true",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "",
            f"{images}]",
            f"  snapshotter = {toml_value(self.snapshotter)}",
            "",
            f"{images}.registry]",
            f"  config_path = {toml_value(str(self.hosts_dir))}",
            "",
        ]
        if self.sandbox_image is not None:
            lines += [
                f"{images}.pinned_images]",
                f"  sandbox = {toml_value(self.sandbox_image)}",
                "",
            ]
        lines += [
            f"{runtime}]",
            "  restrict_oom_score_adj = true  # as in version 2, for runc without CAP_SYS_RESOURCE",
            "",
            f"{runtime}.cni]",
            f"  bin_dirs = [{toml_value(str(self.workdir / 'cni' / 'bin'))}]",
            f"  conf_dir = {toml_value(str(self.workdir / 'cni' / 'net.d'))}",
            "",
        ]
        if self.verifier_bin_dir is not None:
            lines += [
                "[plugins.'io.containerd.image-verifier.v1.bindir']",
                f"  bin_dir = {toml_value(str(self.verifier_bin_dir))}",
                "  max_verifiers = 10",
                '  per_verifier_timeout = "20s"',
                "",
            ]
        return lines

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
