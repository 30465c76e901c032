"""Debian's docker-registry (distribution 2.8) on 127.0.0.1, plain HTTP, deletes enabled.

Optionally with htpasswd authentication (one user), so a pull with the wrong credentials really
fails, as it does against a private registry.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import threading
from pathlib import Path

import requests

from tests.stack.ports import StackError, free_port
from tests.stack.process import ManagedProcess

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)


# Registry credentials: (username, password).
Credentials = tuple[str, str]
_crypt_lock = threading.Lock()  # crypt() returns a static buffer


def bcrypt_hash(password: str, cost: int = 5) -> str:
    """A bcrypt hash (the only kind docker-registry's htpasswd accepts), from the system's libcrypt.

    libxcrypt (Debian's libcrypt1, essential) does bcrypt; cost 5 keeps each check at a few ms.
    """
    name = ctypes.util.find_library("crypt")
    if name is None:
        raise StackError("no libcrypt for bcrypt hashes of the registry's htpasswd file")
    library = ctypes.CDLL(name)
    library.crypt_gensalt.restype = ctypes.c_char_p
    library.crypt_gensalt.argtypes = [
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
        ctypes.c_int,
    ]
    library.crypt.restype = ctypes.c_char_p
    library.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    with _crypt_lock:
        salt = library.crypt_gensalt(b"$2b$", cost, None, 0)
        hashed = library.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2b$"):
        raise StackError("libcrypt did not produce a bcrypt hash")
    return hashed.decode()


def _config(
    storage: Path, port: int, htpasswd_file: Path | None = None, access_log: bool = False
) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 0.1,
        # The access log is one line per request (combined log format, with the user agent) on
        # stdout, i.e. in the registry's log file; off unless asked for (the benchmark counts it).
        "log": {"level": "warn", "accesslog": {"disabled": not access_log}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if htpasswd_file is not None:
        config["auth"] = {"htpasswd": {"realm": "trustd-test", "path": str(htpasswd_file)}}
    return config


class RegistryAPI:
    """The distribution API of a registry on 127.0.0.1, as tests read it (plain HTTP)."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        process: ManagedProcess,
        credentials: Credentials | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.process = process
        # The one user the registry knows; None for an anonymous registry (also what
        # push_image passes as --dest-creds when not None).
        self.credentials = credentials
        # requests must not pick up proxies from the environment for loopback traffic.
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.auth = credentials

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def healthy(self) -> bool:
        return self._session.get(f"{self.url}/v2/", timeout=2).status_code == 200

    def stop(self) -> None:
        self.process.stop()
        self._session.close()

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str]:
        """The manifest bytes exactly as the registry serves them, and their media type."""
        response = self._session.get(
            f"{self.url}/v2/{self._repo_path(repo)}/manifests/{ref}",
            headers={"Accept": _ACCEPT},
            timeout=10,
        )
        if response.status_code != 200:
            raise StackError(
                f"registry {self.host}: GET manifest {repo}:{ref} -> {response.status_code} "
                f"{response.text[:200]}"
            )
        return response.content, response.headers.get("Content-Type", "")

    def manifest_digest(self, repo: str, tag: str) -> str:
        """``sha256:…`` of the manifest the registry serves for ``repo:tag``."""
        manifest, _ = self.get_manifest(repo, tag)
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def delete_manifest(self, repo: str, reference: str) -> None:
        """Delete a manifest by digest (or, where the registry allows it, a tag)."""
        response = self._session.delete(
            f"{self.url}/v2/{self._repo_path(repo)}/manifests/{reference}", timeout=10
        )
        if response.status_code != 202:
            raise StackError(
                f"registry {self.host}: DELETE {repo} {reference} -> {response.status_code}"
            )

    def _repo_path(self, repo: str) -> str:
        """Accept both ``library/hello`` and ``127.0.0.1:PORT/library/hello``."""
        prefix = self.host + "/"
        return repo[len(prefix) :] if repo.startswith(prefix) else repo


class Registry(RegistryAPI):
    """A running docker-registry; ``host`` is what image references start with."""

    @classmethod
    def start(
        cls,
        workdir: Path,
        timeout: float = 15.0,
        credentials: Credentials | None = None,
        access_log: bool = False,
    ) -> Registry:
        """Start a registry; with ``credentials``, every request must carry them (htpasswd).

        ``access_log``: one line per request in ``log_path``, combined log format."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        htpasswd_file = None
        if credentials is not None:
            username, password = credentials
            htpasswd_file = workdir / "htpasswd"
            htpasswd_file.write_text(f"{username}:{bcrypt_hash(password)}\n")
        config_path = workdir / "registry.yml"
        # YAML is a superset of JSON, so the config needs no YAML library.
        config_path.write_text(
            json.dumps(_config(workdir / "storage", port, htpasswd_file, access_log), indent=2)
        )
        process = ManagedProcess(
            "docker-registry",
            ["docker-registry", "serve", str(config_path)],
            log_path=workdir / "registry.log",
            cwd=workdir,
        )
        registry = cls(workdir, port, process, credentials)
        process.start()
        process.wait_until(registry.healthy, timeout, f"docker-registry on {registry.host}")
        return registry
