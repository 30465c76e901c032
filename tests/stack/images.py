"""Tiny single-platform OCI images, written in Python and pushed with skopeo."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import tarfile
import tempfile
from pathlib import Path

from tests.stack.ports import StackError
from tests.stack.registry import Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# Go's GOARCH names for the machines CI runs on; the image must match the node's platform or
# containerd will not unpack it.
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# skopeo refuses to run without a signature policy; this one accepts everything it copies.
_ACCEPT_ANYTHING_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


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
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layer_tar = _layer_tar(seed)
    # mtime=0 keeps the gzip header, and so the layer digest, the same for the same seed.
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps(
        {
            "architecture": node_architecture(),
            "os": "linux",
            "config": {"Env": ["PATH=/"], "Cmd": ["/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
            "history": [{"created_by": f"trustd test harness, seed {seed}"}],
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
    registry: Registry,
    repo: str,
    tag: str,
    seed: str | int | None = None,
    workdir: Path | None = None,
) -> PushedImage:
    """Push a tiny image to ``registry`` as ``repo:tag``.

    The same seed gives the same image (same digest); ``None`` picks a fresh random seed.
    """
    seed_text = os.urandom(8).hex() if seed is None else str(seed)
    base = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="trustd-img-"))
    base.mkdir(parents=True, exist_ok=True)
    policy = base / "skopeo-policy.json"
    if not policy.exists():
        policy.write_text(json.dumps(_ACCEPT_ANYTHING_POLICY))
    layout = Path(tempfile.mkdtemp(prefix="oci-", dir=base))
    write_oci_layout(layout, tag, seed_text)
    destination = f"docker://{registry.host}/{repo}:{tag}"
    result = subprocess.run(
        [
            "skopeo",
            "--policy",
            str(policy),
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
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
