"""Tiny single-platform OCI images, written in Python and pushed with skopeo.

Two kinds: a one-file image that only gets pulled (``push_image``), and images that really run,
with Debian's static busybox as their whole userland (``push_busybox_image``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import platform
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from tests.stack.ports import StackError
from tests.stack.registry import Credentials

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# Go's GOARCH names for the machines CI runs on; the image must match the node's platform or
# containerd will not unpack it.
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# skopeo refuses to run without a signature policy; this one accepts everything it copies.
_ACCEPT_ANYTHING_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}
# Debian's busybox-static (scripts/install-deps.sh installs it).
BUSYBOX = Path("/bin/busybox")
_PT_INTERP = 3  # ELF program header type naming the dynamic loader


class PushTarget(Protocol):
    """What pushing needs of a registry: docker-registry's Registry, CraneRegistry, ..."""

    @property
    def host(self) -> str: ...

    @property
    def credentials(self) -> Credentials | None: ...

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str]: ...


@dataclasses.dataclass(frozen=True)
class PushedImage:
    """An image in the test registry, described by what the registry serves."""

    repository: str  # "127.0.0.1:PORT/repo"
    tag: str
    digest: str  # "sha256:…" of the manifest bytes below
    manifest: bytes  # exactly as the registry serves them
    size: int  # len(manifest): what Notary signs as the target length

    @property
    def tagged(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def by_digest(self) -> str:
        return f"{self.repository}@{self.digest}"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_tar(seed: str) -> bytes:
    """A tar with one file whose content is the seed; fixed metadata so it is reproducible."""
    content = f"trustd test image, seed {seed}\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mode = 0o644
        info.mtime = 0
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def node_architecture() -> str:
    """This machine's architecture as OCI image configs name it (``amd64`` on x86_64)."""
    machine = platform.machine().lower()
    return _GO_ARCH.get(machine, machine)


def _write_blob(layout: Path, data: bytes) -> str:
    digest = _digest(data)
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return digest


def write_oci_layout(layout: Path, tag: str, seed: str) -> str:
    """Write an OCI image layout holding one image tagged ``tag``; returns its manifest digest."""
    return write_image_layout(
        layout,
        tag,
        [_layer_tar(seed)],
        {"Env": ["PATH=/"], "Cmd": ["/hello.txt"]},
        f"trustd test harness, seed {seed}",
    )


def write_image_layout(
    layout: Path,
    tag: str,
    layer_tars: Sequence[bytes],
    image_config: Mapping[str, Any],
    history: str,
) -> str:
    """An OCI layout of one image: these layers (uncompressed tars) and runtime config.

    ``image_config`` is the OCI config's ``config`` object (``User``, ``Env``, ``Entrypoint``,
    ``Cmd`` …); returns the manifest digest.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip header, and so the layer digest, the same for the same tar.
    layers = [gzip.compress(layer_tar, mtime=0) for layer_tar in layer_tars]
    config = json.dumps(
        {
            "architecture": node_architecture(),
            "os": "linux",
            "config": dict(image_config),
            "rootfs": {"type": "layers", "diff_ids": [_digest(tar) for tar in layer_tars]},
            "history": [{"created_by": history}],
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": _write_blob(layout, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": OCI_LAYER_GZIP,
                    "digest": _write_blob(layout, layer),
                    "size": len(layer),
                }
                for layer in layers
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = _write_blob(layout, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest


def push_image(
    registry: PushTarget,
    repo: str,
    tag: str,
    seed: str | int | None = None,
    workdir: Path | None = None,
) -> PushedImage:
    """Push a tiny image to ``registry`` as ``repo:tag``.

    The same seed gives the same image (same digest); ``None`` picks a fresh random seed.
    """
    seed_text = os.urandom(8).hex() if seed is None else str(seed)
    base = _workdir(workdir)
    layout = Path(tempfile.mkdtemp(prefix="oci-", dir=base))
    write_oci_layout(layout, tag, seed_text)
    return push_layout(registry, layout, repo, tag, base)


def push_busybox_image(
    registry: PushTarget,
    repo: str,
    tag: str,
    image_config: Mapping[str, Any],
    files: Mapping[str, bytes] | None = None,
    workdir: Path | None = None,
) -> PushedImage:
    """Push an image that runs: static busybox as ``/bin/busybox`` and ``/bin/sh``, plus ``files``.

    ``files`` maps paths in the image (``etc/message``) to their content. ``image_config`` is the
    OCI runtime config (``Entrypoint``, ``Cmd``, ``User``, ``Env`` …).
    """
    base = _workdir(workdir)
    layout = Path(tempfile.mkdtemp(prefix="oci-", dir=base))
    write_image_layout(
        layout,
        tag,
        [busybox_layer(files or {})],
        image_config,
        f"trustd test harness: busybox image {repo}:{tag}",
    )
    return push_layout(registry, layout, repo, tag, base)


def require_static_busybox(path: Path = BUSYBOX) -> Path:
    """``path`` if it is a statically linked program; a dynamic one would not run in an image."""
    try:
        elf = path.read_bytes()
    except FileNotFoundError:
        raise StackError(
            f"{path} is missing: install Debian's busybox-static (scripts/install-deps.sh)"
        ) from None
    if elf[:4] != b"\x7fELF" or _has_interpreter(elf):
        raise StackError(
            f"{path} is not a static ELF program: install Debian's busybox-static, which "
            "replaces the dynamically linked busybox package"
        )
    return path


def _has_interpreter(elf: bytes) -> bool:
    """Whether an ELF file names a dynamic loader (a PT_INTERP program header)."""
    is_64 = elf[4] == 2
    order = "<" if elf[5] == 1 else ">"
    if is_64:
        (table,) = struct.unpack_from(order + "Q", elf, 0x20)
        entry_size, count = struct.unpack_from(order + "HH", elf, 0x36)
    else:
        (table,) = struct.unpack_from(order + "I", elf, 0x1C)
        entry_size, count = struct.unpack_from(order + "HH", elf, 0x2A)
    return any(
        struct.unpack_from(order + "I", elf, table + index * entry_size)[0] == _PT_INTERP
        for index in range(count)
    )


def busybox_layer(files: Mapping[str, bytes]) -> bytes:
    """A layer tar of a busybox root file system; fixed metadata, so it is reproducible."""
    busybox = require_static_busybox().read_bytes()
    buffer = io.BytesIO()
    made: set[str] = set()

    def add_directory(name: str) -> None:
        parent = name.rpartition("/")[0]
        if parent:
            add_directory(parent)
        if name in made:
            return
        made.add(name)
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o1777 if name == "tmp" else 0o755
        archive.addfile(info)

    def add_file(name: str, content: bytes, mode: int) -> None:
        add_directory(name.rpartition("/")[0])
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = mode
        archive.addfile(info, io.BytesIO(content))

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        add_directory("tmp")
        add_file("bin/busybox", busybox, 0o755)
        link = tarfile.TarInfo("bin/sh")
        link.type = tarfile.SYMTYPE
        link.linkname = "busybox"
        link.mode = 0o777
        archive.addfile(link)
        for name, content in sorted(files.items()):
            add_file(name.lstrip("/"), content, 0o644)
    return buffer.getvalue()


def _workdir(workdir: Path | None) -> Path:
    base = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="trustd-img-"))
    base.mkdir(parents=True, exist_ok=True)
    return base


def push_layout(
    registry: PushTarget, layout: Path, repo: str, tag: str, workdir: Path
) -> PushedImage:
    """Copy the OCI layout's ``tag`` to ``registry`` as ``repo:tag`` with skopeo."""
    policy = workdir / "skopeo-policy.json"
    if not policy.exists():
        policy.write_text(json.dumps(_ACCEPT_ANYTHING_POLICY))
    destination = f"docker://{registry.host}/{repo}:{tag}"
    credentials = []
    if registry.credentials is not None:
        credentials = ["--dest-creds", ":".join(registry.credentials)]
    result = subprocess.run(
        [
            "skopeo",
            "--policy",
            str(policy),
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            *credentials,
            f"oci:{layout}:{tag}",
            destination,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"skopeo copy to {destination} failed: {result.stderr.strip()}")
    # skopeo may re-serialise the manifest: what the registry serves is what gets signed.
    manifest, _ = registry.get_manifest(repo, tag)
    return PushedImage(
        repository=f"{registry.host}/{repo}",
        tag=tag,
        digest=_digest(manifest),
        manifest=manifest,
        size=len(manifest),
    )
