"""Debian's notary-server on 127.0.0.1 with TLS from the test PKI and in-memory storage."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from tests.stack.pki import TestPKI
from tests.stack.ports import StackError, free_port
from tests.stack.process import ManagedProcess


def server_config(
    port: int,
    cert_path: Path,
    key_path: Path,
    auth: Mapping[str, Any] | None = None,
    log_level: str = "warn",
) -> dict[str, Any]:
    """The notary-server JSON config: local ecdsa trust service, memory storage.

    ``auth`` is copied verbatim into the config's ``auth`` section (e.g. docker token auth with
    ``type: token`` and its ``options``); ``None`` serves without authentication.
    """
    config: dict[str, Any] = {
        "server": {
            "http_addr": f"127.0.0.1:{port}",
            "tls_cert_file": str(cert_path.resolve()),
            "tls_key_file": str(key_path.resolve()),
        },
        "trust_service": {"type": "local", "key_algorithm": "ecdsa"},
        "storage": {"backend": "memory"},
        "logging": {"level": log_level},
    }
    if auth is not None:
        config["auth"] = dict(auth)
    return config


class NotaryServer:
    """A running notary-server; clients trust ``ca_file``."""

    def __init__(self, workdir: Path, port: int, ca_file: Path, process: ManagedProcess) -> None:
        self.workdir = workdir
        self.port = port
        self.ca_file = ca_file
        self.process = process

    @classmethod
    def start(
        cls,
        workdir: Path,
        pki: TestPKI,
        auth: Mapping[str, Any] | None = None,
        timeout: float = 15.0,
        log_level: str = "warn",
    ) -> NotaryServer:
        """``log_level="info"`` logs one ``response completed`` line per request (the bench
        counts trustd's requests from them, on the server's side)."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        cert_path, key_path = pki.issue_server_cert(f"notary-server-{port}")
        config_path = workdir / "notary-server.json"
        config_path.write_text(
            json.dumps(
                server_config(port, cert_path, key_path, auth=auth, log_level=log_level),
                indent=2,
            )
        )
        process = ManagedProcess(
            "notary-server",
            ["notary-server", "-config", str(config_path)],
            log_path=workdir / "notary-server.log",
            cwd=workdir,
        )
        server = cls(workdir, port, pki.ca_cert, process)
        process.start()
        process.wait_until(server.healthy, timeout, f"notary-server on {server.url}")
        return server

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def healthy(self) -> bool:
        # verify= per request: a CA set on the session would lose to REQUESTS_CA_BUNDLE.
        response = requests.get(
            f"{self.url}/_notary_server/health", verify=str(self.ca_file), timeout=2
        )
        return response.status_code == 200

    def metadata(self, gun: str, role: str) -> bytes:
        """The raw bytes the server serves for ``role`` (e.g. ``targets/releases``) of ``gun``."""
        response = requests.get(
            f"{self.url}/v2/{gun}/_trust/tuf/{role}.json", verify=str(self.ca_file), timeout=10
        )
        response.raise_for_status()
        return response.content

    def publish_metadata(self, gun: str, files: Mapping[str, bytes]) -> None:
        """POST signed metadata files (role -> bytes) as ``notary publish`` does; the server
        verifies them and signs a new snapshot (if it holds that key) and timestamp."""
        response = requests.post(
            f"{self.url}/v2/{gun}/_trust/tuf/",
            files=[("files", (role, data)) for role, data in files.items()],
            verify=str(self.ca_file),
            timeout=30,
        )
        if response.status_code != 200:
            raise StackError(
                f"notary-server refused the metadata of {gun} ({response.status_code}): "
                f"{response.text.strip()}"
            )

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def stop(self) -> None:
        self.process.stop()
