"""go-containerregistry's registry (crane's) on 127.0.0.1, plain HTTP: a registry with the OCI
1.1 referrers API beside Debian's docker-registry 2.8, which has none.

Two programs serve it, both built by ``tests.peers.build`` from the same pinned module:
- ``referrers-registry`` (the ``referrers-registry`` peer): the registry with the referrers API
  switched on. This is the one to use for referrers.
- ``crane registry serve`` (the ``crane`` peer): the same registry with the referrers API left
  off (``GET /v2/<name>/referrers/<digest>`` answers 404 ``METHOD_UNKNOWN``), i.e. an OCI 1.0
  registry, useful for the tag-schema fallback.

Storage: manifests and tags live only in the process's memory (a restart forgets every image);
blobs too, unless ``--disk DIR`` is given, which moves only the blobs to that directory. No
authentication. Known differences from the distribution spec, which trustd's client must cope
with: a listed referrer's ``artifactType`` is always its ``config.mediaType`` (a manifest's own
``artifactType`` field is ignored, so cosign v3 bundles list as
``application/vnd.oci.empty.v1+json``), the ``artifactType`` query filter is not applied (no
``OCI-Filters-Applied`` header), and a manifest push with a ``subject`` gets no ``OCI-Subject``
header.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.stack.ports import StackError, free_port
from tests.stack.process import ManagedProcess
from tests.stack.registry import RegistryAPI

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class CraneRegistry(RegistryAPI):
    """A running go-containerregistry registry (anonymous); ``host`` is what image references
    start with."""

    def __init__(self, workdir: Path, port: int, process: ManagedProcess, referrers: bool) -> None:
        super().__init__(workdir, port, process)
        # Whether this registry answers the referrers API.
        self.referrers_api = referrers

    @classmethod
    def start(
        cls, workdir: Path, program: Path, *, referrers: bool = True, timeout: float = 15.0
    ) -> CraneRegistry:
        """Start a registry on a free loopback port, blobs on disk under ``workdir``.

        ``program`` is the ``referrers-registry`` peer when ``referrers`` (the default), else the
        ``crane`` peer, run as ``crane registry serve``.
        """
        workdir = Path(workdir)
        blobs = workdir / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        address = f"127.0.0.1:{port}"
        if referrers:
            args = [str(program), "--address", address, "--disk", str(blobs)]
            name = "referrers-registry"
        else:
            args = [str(program), "registry", "serve", "--address", address, "--disk", str(blobs)]
            name = "crane registry serve"
        process = ManagedProcess(name, args, log_path=workdir / "registry.log", cwd=workdir)
        registry = cls(workdir, port, process, referrers)
        process.start()
        try:
            process.wait_until(registry.healthy, timeout, f"{name} on {registry.host}")
        except BaseException:
            registry.stop()
            raise
        return registry

    def tags(self, repo: str) -> list[str]:
        response = self._session.get(f"{self.url}/v2/{self._repo_path(repo)}/tags/list", timeout=10)
        if response.status_code != 200:
            raise StackError(f"registry {self.host}: tags of {repo} -> {response.status_code}")
        return list(response.json().get("tags") or [])

    def referrers(self, repo: str, digest: str) -> dict[str, Any]:
        """The image index ``GET /v2/<repo>/referrers/<digest>`` answers."""
        response = self._session.get(
            f"{self.url}/v2/{self._repo_path(repo)}/referrers/{digest}", timeout=10
        )
        if response.status_code != 200:
            raise StackError(
                f"registry {self.host}: referrers of {repo}@{digest} -> {response.status_code} "
                f"{response.text[:200]}"
            )
        if not response.headers.get("Content-Type", "").startswith(OCI_INDEX):
            raise StackError(
                f"registry {self.host}: referrers of {repo}@{digest} came as "
                f"{response.headers.get('Content-Type')!r}, not an OCI image index"
            )
        index: dict[str, Any] = response.json()
        return index
