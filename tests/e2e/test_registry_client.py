"""The registry client against Debian's real docker-registry (distribution 2.8) on 127.0.0.1.

Images are pushed with skopeo (``push_image``); the referrers index and the artifact it lists
are pushed here with plain HTTP calls, as a signer without the referrers API does. The registry
is reached through a hosts.toml as containerd's stack writes it, by containerd's loopback
defaults, with htpasswd (Basic) and with token authentication behind an HTTPS token service.
Two attack servers (trickling, oversized) are local sockets of this test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.test_token_auth import ISSUER, PASSWORD, SERVICE, USER, TokenService
from tests.stack import ManagedProcess, PushedImage, Registry, TestPKI, free_port
from tests.stack.containerd import hosts_toml
from tests.stack.images import push_image as push_to
from tests.unit.registry_server import Request, ScriptedServer, serve
from trustd.errors import HashMismatch, RegistryUnavailable
from trustd.net.credentials import Credentials
from trustd.net.deadline import call_deadline
from trustd.net.descriptor import Descriptor
from trustd.registry.client import OCI_INDEX, OCI_MANIFEST, RegistryClient, referrers_tag
from trustd.registry.errors import (
    BlobNotFound,
    ContentTooLarge,
    ManifestNotFound,
    RegistryAuthenticationFailed,
    RegistryTimeout,
)
from trustd.registry.hosts import RegistryEndpoint, endpoint_for

NOTATION_SIGNATURE = "application/vnd.cncf.notary.signature"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


def repository_of(image: PushedImage) -> str:
    return image.repository.split("/", 1)[1]


def hosts_endpoint(tmp_path: Path, registry: Registry) -> RegistryEndpoint:
    """The endpoint trustd derives from the hosts.toml the stack writes for containerd."""
    (tmp_path / "certs.d" / registry.host).mkdir(parents=True)
    (tmp_path / "certs.d" / registry.host / "hosts.toml").write_text(hosts_toml(registry.host))
    return endpoint_for(registry.host, str(tmp_path / "certs.d"))


# --- pushing an artifact and a referrers index by hand --------------------------------------------


def put_blob(registry: Registry, repository: str, data: bytes) -> Descriptor:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    session = requests.Session()
    session.trust_env = False
    session.auth = registry.credentials
    started = session.post(f"{registry.url}/v2/{repository}/blobs/uploads/", timeout=10)
    assert started.status_code == 202, started.text
    location = requests.compat.urljoin(registry.url, started.headers["Location"])
    finished = session.put(
        location,
        params={"digest": digest},
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    )
    assert finished.status_code == 201, finished.text
    return Descriptor("application/octet-stream", digest, len(data))


def put_manifest(
    registry: Registry, repository: str, reference: str, body: bytes, media_type: str
) -> Descriptor:
    response = requests.put(
        f"{registry.url}/v2/{repository}/manifests/{reference}",
        data=body,
        headers={"Content-Type": media_type},
        auth=registry.credentials,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return Descriptor(media_type, "sha256:" + hashlib.sha256(body).hexdigest(), len(body))


def push_artifact(
    registry: Registry,
    repository: str,
    subject: PushedImage,
    artifact_type: str,
    layer_type: str,
    content: bytes,
) -> tuple[Descriptor, Descriptor]:
    """An artifact manifest naming ``subject``, shaped as Notation's: (descriptor, its layer)."""
    empty = put_blob(registry, repository, b"{}")
    layer = put_blob(registry, repository, content)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": OCI_EMPTY, "digest": empty.digest, "size": empty.size},
            "layers": [{"mediaType": layer_type, "digest": layer.digest, "size": layer.size}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.size},
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    manifest = put_manifest(registry, repository, digest, body, OCI_MANIFEST)
    return manifest, Descriptor(layer_type, layer.digest, layer.size)


# --- reading what skopeo pushed ------------------------------------------------------------------


def test_resolve_manifest_and_blobs(
    tmp_path: Path, registry: Registry, push_image: Callable[..., PushedImage]
) -> None:
    image = push_image("registry-client/app", "v1")
    repository = repository_of(image)
    endpoint = hosts_endpoint(tmp_path, registry)
    # The stack's hosts.toml (http:// with skip_verify) is tried over HTTPS first, as
    # containerd does; the real registry answers in plain HTTP and the client falls back.
    assert endpoint.http_fallback and endpoint.url == f"https://{registry.host}/v2"
    with RegistryClient(endpoint) as client:
        descriptor = client.resolve(repository, "v1")
        assert descriptor == Descriptor(OCI_MANIFEST, image.digest, image.size)
        by_digest, body = client.manifest(repository, image.digest)
        assert body == image.manifest and by_digest == descriptor
        by_tag, tagged_body = client.manifest(repository, "v1")
        assert (by_tag, tagged_body) == (descriptor, image.manifest)
        document = json.loads(body)
        for item in [document["config"], *document["layers"]]:
            blob = client.blob(repository, Descriptor.from_json(item))
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == item["digest"]
        with pytest.raises(ManifestNotFound, match=f"{repository}:absent"):
            client.resolve(repository, "absent")
        assert client.tag_manifest(repository, "absent") is None
        with pytest.raises(BlobNotFound):
            client.blob(repository, Descriptor("x/y", "sha256:" + "0" * 64, 3))
        # The registry's bytes for one digest asked for under another: refused.
        config = Descriptor.from_json(document["config"])
        with pytest.raises(HashMismatch):
            client.manifest(repository, Descriptor(OCI_MANIFEST, image.digest, image.size - 1))
        assert client.blob(repository, config, max_bytes=config.size)


def test_loopback_defaults_reach_a_plain_http_registry(
    registry: Registry, push_image: Callable[..., PushedImage], caplog: pytest.LogCaptureFixture
) -> None:
    image = push_image("registry-client/defaults", "v1")
    endpoint = endpoint_for(registry.host, None)  # no hosts.toml at all
    with caplog.at_level(logging.INFO), RegistryClient(endpoint) as client:
        assert client.resolve(repository_of(image), "v1").digest == image.digest
    assert "answered the TLS handshake in plain HTTP" in caplog.text


def test_plain_http_server(
    registry: Registry, push_image: Callable[..., PushedImage], tmp_path: Path
) -> None:
    image = push_image("registry-client/plain", "v1")
    (tmp_path / registry.host).mkdir()
    (tmp_path / registry.host / "hosts.toml").write_text(f'server = "{registry.url}"\n')
    endpoint = endpoint_for(registry.host, tmp_path)
    assert endpoint.url == f"{registry.url}/v2" and not endpoint.http_fallback
    with RegistryClient(endpoint) as client:
        assert client.resolve(repository_of(image), "v1").digest == image.digest


# --- referrers -----------------------------------------------------------------------------------


def test_referrers_through_the_tag_schema(
    registry: Registry, push_image: Callable[..., PushedImage]
) -> None:
    image = push_image("registry-client/signed", "v1")
    unsigned = push_image("registry-client/signed", "v2")
    repository = repository_of(image)
    envelope = b'{"payload":"e30","protected":"e30","signature":"AA"}'
    signature, layer = push_artifact(
        registry, repository, image, NOTATION_SIGNATURE, "application/jose+json", envelope
    )
    sbom, _ = push_artifact(
        registry, repository, image, "application/spdx+json", "application/spdx+json", b"{}"
    )
    listed = {
        **signature.to_json(),
        "artifactType": NOTATION_SIGNATURE,
        "annotations": {"io.cncf.notary.x509chain.thumbprint#S256": "[]"},
    }
    sbom_listed = {**sbom.to_json(), "artifactType": "application/spdx+json"}
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [listed, sbom_listed]}
    ).encode()
    put_manifest(registry, repository, referrers_tag(image.digest), index, OCI_INDEX)

    with RegistryClient(RegistryEndpoint(registry.host, f"{registry.url}/v2")) as client:
        everything = client.referrers(repository, image.digest)
        assert [d.artifact_type for d in everything] == [
            NOTATION_SIGNATURE,
            "application/spdx+json",
        ]
        (found,) = client.referrers(repository, image.digest, NOTATION_SIGNATURE)
        assert found.digest == signature.digest and found.size == signature.size
        assert found.annotations == {"io.cncf.notary.x509chain.thumbprint#S256": "[]"}
        assert client.referrers(repository, image.digest, "application/other") == []
        assert client.referrers(repository, unsigned.digest) == []
        # What the listing names is fetched by digest and checked.
        descriptor, body = client.manifest(repository, found)
        assert descriptor.artifact_type == NOTATION_SIGNATURE
        assert json.loads(body)["subject"]["digest"] == image.digest
        assert client.blob(repository, layer) == envelope


# --- authentication ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = Registry.start(
        tmp_path_factory.mktemp("htpasswd-registry"), credentials=("reader", "Rd-pa55-word")
    )
    yield registry
    registry.stop()


def test_basic_auth_with_right_and_wrong_credentials(
    htpasswd_registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = push_to(htpasswd_registry, "private/app", "v1", workdir=tmp_path)
    endpoint = RegistryEndpoint(htpasswd_registry.host, f"{htpasswd_registry.url}/v2")
    with (
        caplog.at_level(logging.INFO),
        RegistryClient(endpoint, Credentials("reader", "Rd-pa55-word")) as client,
    ):
        assert client.resolve("private/app", "v1").digest == image.digest
        assert client.manifest("private/app", image.digest)[1] == image.manifest
    assert f"credentials for {htpasswd_registry.host} to {htpasswd_registry.url}" in caplog.text
    with (
        RegistryClient(endpoint, Credentials("reader", "not-the-password")) as client,
        pytest.raises(RegistryAuthenticationFailed) as caught,
    ):
        client.resolve("private/app", "v1")
    assert "private/app" in str(caught.value) and "not-the-password" not in str(caught.value)
    assert isinstance(caught.value, RegistryUnavailable)
    with (
        RegistryClient(endpoint) as client,
        pytest.raises(RegistryAuthenticationFailed, match="carries none"),
    ):
        client.resolve("private/app", "v1")
    assert "Rd-pa55-word" not in caplog.text


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, pki: TestPKI, registry: Registry
) -> Iterator[tuple[Registry, TokenService]]:
    """A second docker-registry over the session registry's storage, with token auth."""
    service = TokenService(pki)
    workdir = tmp_path_factory.mktemp("token-registry")
    port = free_port()
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(registry.workdir / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "auth": {
            "token": {
                "realm": service.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(service.signer_cert.resolve()),
            }
        },
    }
    (workdir / "registry.yml").write_text(json.dumps(config))
    process = ManagedProcess(
        "docker-registry",
        ["docker-registry", "serve", str(workdir / "registry.yml")],
        log_path=workdir / "registry.log",
        cwd=workdir,
    )
    process.start()

    def answering() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 401
        except requests.RequestException:
            return False

    process.wait_until(answering, 15, "docker-registry with token auth")
    guarded = Registry(workdir, port, process)
    yield guarded, service
    process.stop()
    service.stop()


def test_token_auth_against_the_real_registry(
    token_registry: tuple[Registry, TokenService],
    push_image: Callable[..., PushedImage],
    pki: TestPKI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    guarded, service = token_registry
    image = push_image("registry-client/token", "v1")  # through the open registry's storage
    repository = repository_of(image)
    # The token service is HTTPS on the registry's host name, under the test CA.
    endpoint = RegistryEndpoint(guarded.host, f"{guarded.url}/v2", ca_files=(pki.ca_cert,))
    with (
        caplog.at_level(logging.INFO),
        RegistryClient(endpoint, Credentials(USER, PASSWORD)) as client,
    ):
        assert client.resolve(repository, "v1") == Descriptor(
            OCI_MANIFEST, image.digest, image.size
        )
        assert client.manifest(repository, image.digest)[1] == image.manifest
    assert f"to the token service https://127.0.0.1:{service.port}" in caplog.text
    assert PASSWORD not in caplog.text

    refused_before = service.refused
    with (
        RegistryClient(endpoint, Credentials(USER, "wrong-password")) as client,
        pytest.raises(RegistryAuthenticationFailed, match=f"refused user '{USER}'"),
    ):
        client.resolve(repository, "v1")
    assert service.refused == refused_before + 1

    # Without the test CA the token service's certificate is not trusted: nothing is sent.
    untrusting = RegistryEndpoint(guarded.host, f"{guarded.url}/v2")
    refused_before = service.refused
    with (
        RegistryClient(untrusting, Credentials(USER, PASSWORD)) as client,
        pytest.raises(RegistryUnavailable, match="certificate verify failed"),
    ):
        client.resolve(repository, "v1")
    assert service.refused == refused_before


# --- malicious servers ---------------------------------------------------------------------------


@pytest.fixture
def attacker() -> Iterator[ScriptedServer]:
    yield from serve()


def attacker_client(server: ScriptedServer, timeout: float = 30.0) -> RegistryClient:
    return RegistryClient(RegistryEndpoint(server.host, f"{server.url}/v2"), timeout=timeout)


def test_trickling_server_fails_at_the_deadline(attacker: ScriptedServer) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    attacker.route("GET", "/v2/victim/app/manifests/v1", lambda r: r.trickle(head, 0.5))
    started = time.monotonic()
    with (
        attacker_client(attacker) as client,
        call_deadline(2.0),
        pytest.raises(RegistryTimeout) as caught,
    ):
        client.manifest("victim/app", "v1")
    assert isinstance(caught.value, RegistryUnavailable)
    assert time.monotonic() - started < 25  # sanity guard only, not a timing target


def test_oversized_bodies_are_refused_unread(attacker: ScriptedServer) -> None:
    def declared(request: Request) -> None:
        request.stream_forever(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")

    def undeclared(request: Request) -> None:
        request.stream_forever(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")

    attacker.route("GET", "/v2/victim/app/manifests/v1", declared)
    attacker.route("GET", "/v2/victim/app/manifests/v2", undeclared)
    with attacker_client(attacker) as client:
        with pytest.raises(ContentTooLarge) as caught:
            client.manifest("victim/app", "v1")
        assert (caught.value.length, caught.value.limit) == (1073741824, 4 * 2**20)
        with pytest.raises(ContentTooLarge, match="exceeds the 1024-byte limit") as caught:
            client.manifest("victim/app", "v2", max_bytes=1024)
        assert caught.value.length is None
    # The attacker could only push what the loopback socket buffers hold beyond the cap.
    assert attacker.streamed < 64 * 2**20
