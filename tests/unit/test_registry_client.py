"""The registry client against a scripted server on 127.0.0.1: status handling, digests and
sizes, caps, deadlines, retries, redirects, authentication, and referrers pages and fallback.

The scripted server answers what each test says; the real docker-registry is exercised in
tests/e2e/test_registry_client.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from tests.stack.pki import TestPKI
from tests.unit.registry_server import (
    Request,
    ScriptedServer,
    descriptor_json,
    index,
    manifest,
    serve,
)
from trustd.errors import HashMismatch, InvalidReference, RegistryUnavailable
from trustd.net.credentials import Credentials
from trustd.net.deadline import call_deadline
from trustd.net.descriptor import Descriptor
from trustd.registry.client import RegistryClient, RegistryLimits, referrers_tag
from trustd.registry.errors import (
    BlobNotFound,
    ContentTooLarge,
    MalformedContent,
    ManifestNotFound,
    RegistryAuthenticationFailed,
    RegistryRequestFailed,
    RegistryTimeout,
    TooManyReferrers,
)
from trustd.registry.hosts import ClientCertificate, RegistryEndpoint
from trustd.registry.transport import RegistryTransport, RegistryTransports

REPO = "team/app"
BASE = f"/v2/{REPO}"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SIG = "application/vnd.cncf.notary.signature"
SBOM = "application/spdx+json"
PASSWORD = "Sup3r-secret-pw"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    yield from serve()


@pytest.fixture
def other() -> Iterator[ScriptedServer]:
    yield from serve()


def client(
    server: ScriptedServer,
    credentials: Credentials | None = None,
    timeout: float = 5.0,
    limits: RegistryLimits | None = None,
    **endpoint: object,
) -> RegistryClient:
    settings: dict[str, object] = {"registry": server.host, "url": server.url + "/v2"}
    settings.update(endpoint)
    return RegistryClient(
        RegistryEndpoint(**settings),  # type: ignore[arg-type]
        credentials,
        timeout=timeout,
        limits=limits,
    )


# --- resolve and manifests -----------------------------------------------------------------------


def test_resolve_takes_the_digest_header_of_a_head(server: ScriptedServer) -> None:
    image = manifest("a")
    server.fixed("HEAD", f"{BASE}/manifests/v1", 200, image.body, **image.headers())
    with client(server) as registry:
        descriptor = registry.resolve(REPO, "v1")
    assert descriptor == Descriptor(image.media_type, image.digest, len(image.body))
    assert server.paths() == [f"{BASE}/manifests/v1"]
    accept = server.seen[0].headers["Accept"]
    for media_type in (
        "application/vnd.oci.image.manifest.v1+json",
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ):
        assert media_type in accept
    assert server.seen[0].headers["User-Agent"] == "trustd"


@pytest.mark.parametrize("head_status", [200, 405])
def test_resolve_hashes_the_manifest_when_head_says_too_little(
    server: ScriptedServer, head_status: int
) -> None:
    image = manifest("b")
    server.fixed("HEAD", f"{BASE}/manifests/v1", head_status, image.body, **image.headers(False))
    wrong = {**image.headers(), "Docker-Content-Digest": "sha256:" + "0" * 64}
    server.fixed("GET", f"{BASE}/manifests/v1", 200, image.body, **wrong)
    with client(server) as registry:
        descriptor = registry.resolve(REPO, "v1")
    # The digest is the hash of what was served, never the header of the GET.
    assert descriptor.digest == image.digest and descriptor.size == len(image.body)
    assert [s.method for s in server.seen] == ["HEAD", "GET"]


def test_missing_manifest_names_repository_and_reference(server: ScriptedServer) -> None:
    with client(server) as registry:
        with pytest.raises(ManifestNotFound) as caught:
            registry.resolve(REPO, "nope")
        assert f"{REPO}:nope" in str(caught.value) and server.host in str(caught.value)
        digest = "sha256:" + "a" * 64
        with pytest.raises(ManifestNotFound, match=f"{REPO}@{digest}"):
            registry.manifest(REPO, digest)
        assert registry.tag_manifest(REPO, "sha256-" + "a" * 64 + ".sig") is None


def test_manifest_by_digest_must_hash_to_it(server: ScriptedServer) -> None:
    image, other_image = manifest("c"), manifest("d")
    server.fixed("GET", f"{BASE}/manifests/{image.digest}", 200, image.body, **image.headers())
    server.fixed(
        "GET", f"{BASE}/manifests/{other_image.digest}", 200, image.body, **image.headers()
    )
    with client(server) as registry:
        descriptor, body = registry.manifest(REPO, image.digest)
        assert body == image.body and descriptor.digest == image.digest
        with pytest.raises(HashMismatch, match=other_image.digest):
            registry.manifest(REPO, other_image.digest)


def test_manifest_by_descriptor_checks_the_size_and_keeps_its_annotations(
    server: ScriptedServer,
) -> None:
    image = manifest("e")
    server.fixed("GET", f"{BASE}/manifests/{image.digest}", 200, image.body, **image.headers())
    given = Descriptor(image.media_type, image.digest, len(image.body), SIG, {"k": "v"})
    with client(server) as registry:
        descriptor, _ = registry.manifest(REPO, given)
        assert descriptor == given and descriptor.annotations == {"k": "v"}
        with pytest.raises(HashMismatch, match="longer than"):
            registry.manifest(REPO, Descriptor(image.media_type, image.digest, 10))
        with pytest.raises(HashMismatch, match="descriptor says"):
            registry.manifest(REPO, Descriptor(image.media_type, image.digest, 10**4))
        requests_before = len(server.seen)
        with pytest.raises(ContentTooLarge) as caught:
            registry.manifest(REPO, Descriptor(image.media_type, image.digest, 5 * 2**20))
        assert caught.value.length == 5 * 2**20 and caught.value.limit == 4 * 2**20
        assert len(server.seen) == requests_before  # refused without asking


def test_media_type_from_the_body_when_content_type_says_nothing(server: ScriptedServer) -> None:
    image = manifest("f")
    server.fixed("GET", f"{BASE}/manifests/v1", 200, image.body, Content_Type="text/plain")
    server.fixed("GET", f"{BASE}/manifests/v2", 200, b"{}")
    with client(server) as registry:
        descriptor, _ = registry.manifest(REPO, "v1")
        assert descriptor.media_type == "application/vnd.oci.image.manifest.v1+json"
        with pytest.raises(MalformedContent, match="no media type"):
            registry.manifest(REPO, "v2")


def test_invalid_names_never_reach_the_network(server: ScriptedServer) -> None:
    with client(server) as registry:
        for repository in ("../etc", "Team/app", "a//b", "a?b", ""):
            with pytest.raises(InvalidReference):
                registry.resolve(repository, "v1")
        for tag in ("../x", "a/b", "-x", "x" * 129):
            with pytest.raises(InvalidReference):
                registry.resolve(REPO, tag)
        with pytest.raises(InvalidReference):
            registry.referrers(REPO, "sha256:" + "A" * 64)
    assert server.seen == []


def test_connections_are_kept_alive(server: ScriptedServer) -> None:
    image = manifest("keep")
    server.fixed("HEAD", f"{BASE}/manifests/v1", 200, image.body, **image.headers())
    server.fixed("GET", f"{BASE}/manifests/v1", 200, image.body, **image.headers())
    bearer_registry(server, f"{server.url}/token")
    token_service(server)
    with client(server, Credentials("alice", PASSWORD)) as registry:
        registry.resolve(REPO, "v1")
        registry.manifest(REPO, "v1")
        registry.manifest(REPO, "v1")
        server.fixed("GET", f"{BASE}/manifests/big", 200, b"x" * 100, Content_Type="a/b")
        with pytest.raises(ContentTooLarge):
            registry.manifest(REPO, "big", max_bytes=10)
        registry.resolve(REPO, "v1")
    ports = [seen.client_port for seen in server.seen]
    # One connection for the answers read whole (401s included), a new one after the answer
    # that was refused unread.
    assert len(set(ports[:-1])) == 1 and ports[-1] != ports[0]


def test_pooled_transports_share_connections_and_tokens(server: ScriptedServer) -> None:
    bearer_registry(server, f"{server.url}/token")
    token_service(server)
    pool = RegistryTransports(size=1)
    endpoint = RegistryEndpoint(server.host, server.url + "/v2")
    for _ in range(2):
        transport = pool.get(endpoint)
        with RegistryClient(endpoint, Credentials("alice", PASSWORD), transport=transport) as r:
            r.resolve(REPO, "v1")
    assert pool.get(endpoint) is transport
    assert len({seen.client_port for seen in server.seen}) == 1
    assert len([seen for seen in server.seen if seen.path == "/token"]) == 1
    # Other credentials never get the cached token.
    with (
        RegistryClient(endpoint, Credentials("bob", "x"), transport=transport) as r,
        pytest.raises(RegistryAuthenticationFailed, match="user 'bob'"),
    ):
        r.resolve(REPO, "v1")
    mirror = RegistryEndpoint("other.example.com", server.url + "/v2")
    assert pool.get(mirror) is not transport  # and the first was closed (size 1)
    pool.close()


# --- blobs ---------------------------------------------------------------------------------------


def blob_descriptor(data: bytes) -> Descriptor:
    return Descriptor(
        "application/jose+json", "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
    )


def test_blob_size_and_digest(server: ScriptedServer) -> None:
    data = b'{"payload": "signed"}'
    good = blob_descriptor(data)
    server.fixed("GET", f"{BASE}/blobs/{good.digest}", 200, data)
    liar = blob_descriptor(b"something else entirely")
    server.fixed("GET", f"{BASE}/blobs/{liar.digest}", 200, b"x" * liar.size)
    with client(server) as registry:
        assert registry.blob(REPO, good) == data
        with pytest.raises(HashMismatch, match="hashes to"):
            registry.blob(REPO, liar)
        with pytest.raises(HashMismatch, match="longer than"):
            registry.blob(REPO, Descriptor(good.media_type, good.digest, 5))
        with pytest.raises(HashMismatch, match="descriptor says"):
            registry.blob(REPO, Descriptor(good.media_type, good.digest, 500))
        with pytest.raises(BlobNotFound):
            registry.blob(REPO, blob_descriptor(b"absent"))
        with pytest.raises(ContentTooLarge, match="4194305 bytes"):
            registry.blob(REPO, Descriptor(good.media_type, good.digest, 4 * 2**20 + 1))
        assert registry.blob(REPO, good, max_bytes=len(data)) == data


def test_blob_redirect_keeps_credentials_at_the_registry(
    server: ScriptedServer, other: ScriptedServer
) -> None:
    data = b"signature envelope"
    descriptor = blob_descriptor(data)
    storage = f"/storage/{descriptor.digest}"
    server.fixed(
        "GET", f"{BASE}/blobs/{descriptor.digest}", 307, Location=f"{other.url}{storage}?sig=1"
    )
    other.fixed("GET", storage, 200, data)
    headers = (("X-Node", "n1"), ("X-Multi", "a"), ("X-Multi", "b"))
    with client(server, Credentials(registry_token="opaque"), headers=headers) as registry:
        assert registry.blob(REPO, descriptor) == data
    assert server.seen[0].headers["Authorization"] == "Bearer opaque"
    assert server.seen[0].headers["X-Node"] == "n1"
    assert server.seen[0].headers["X-Multi"] == "a, b"
    assert "Authorization" not in other.seen[0].headers
    assert "X-Node" not in other.seen[0].headers


def test_redirect_loops_end(server: ScriptedServer) -> None:
    descriptor = blob_descriptor(b"loop")
    path = f"{BASE}/blobs/{descriptor.digest}"
    server.fixed("GET", path, 302, Location=path)
    with client(server) as registry, pytest.raises(RegistryRequestFailed, match="redirects"):
        registry.blob(REPO, descriptor)


# --- caps, deadlines, retries --------------------------------------------------------------------


def test_declared_oversize_is_refused_unread(server: ScriptedServer) -> None:
    def huge(request: Request) -> None:
        request.stream_forever(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )

    server.route("GET", f"{BASE}/manifests/v1", huge)
    with client(server) as registry, pytest.raises(ContentTooLarge) as caught:
        registry.manifest(REPO, "v1")
    assert (caught.value.length, caught.value.limit) == (104857600, 4 * 2**20)
    assert "104857600 bytes, over the 4194304-byte limit" in str(caught.value)


def test_endless_body_stops_at_the_cap(server: ScriptedServer) -> None:
    def endless(request: Request) -> None:
        request.stream_forever(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")

    server.route("GET", f"{BASE}/manifests/v1", endless)
    limits = RegistryLimits(manifest_bytes=100_000)
    with client(server, limits=limits) as registry, pytest.raises(ContentTooLarge) as caught:
        registry.manifest(REPO, "v1")
    assert caught.value.length is None and caught.value.limit == 100_000
    assert "exceeds the 100000-byte limit" in str(caught.value)


def test_trickling_body_fails_at_the_call_deadline(server: ScriptedServer) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    server.route("GET", f"{BASE}/manifests/v1", lambda request: request.trickle(head))
    started = time.monotonic()
    with (
        client(server, timeout=30) as registry,
        call_deadline(1.0),
        pytest.raises(RegistryTimeout, match="did not deliver"),
    ):
        registry.manifest(REPO, "v1")
    assert time.monotonic() - started < 20  # sanity only: it ended, long before 30 s


def test_trickling_headers_fail_at_the_clients_timeout(server: ScriptedServer) -> None:
    server.route(
        "GET", f"{BASE}/manifests/v1", lambda request: request.trickle(b"HTTP/1.1 200 OK\r\nX: ")
    )
    with client(server, timeout=1.0) as registry, pytest.raises(RegistryTimeout):
        registry.manifest(REPO, "v1")


def test_no_time_left_sends_nothing(server: ScriptedServer) -> None:
    with client(server) as registry, call_deadline(0), pytest.raises(RegistryTimeout):
        registry.resolve(REPO, "v1")
    assert server.seen == []


def test_one_retry_for_gateway_errors(server: ScriptedServer) -> None:
    image = manifest("g")
    ok = image.headers()
    server.sequence(
        "HEAD",
        f"{BASE}/manifests/v1",
        [lambda r: r.answer(503), lambda r: r.answer(200, image.body, ok)],
    )
    server.fixed("HEAD", f"{BASE}/manifests/v2", 502)
    server.fixed("HEAD", f"{BASE}/manifests/v3", 500)
    with client(server) as registry:
        assert registry.resolve(REPO, "v1").digest == image.digest
        assert len(server.paths()) == 2
        with pytest.raises(RegistryRequestFailed, match="HTTP 502") as caught:
            registry.resolve(REPO, "v2")
        assert caught.value.status == 502 and len(server.paths()) == 4
        with pytest.raises(RegistryRequestFailed, match="HTTP 500"):
            registry.resolve(REPO, "v3")
        assert len(server.paths()) == 5  # a 500 is not retried


def test_unreachable_registry_is_unavailable() -> None:
    with (
        RegistryClient(RegistryEndpoint("127.0.0.1:9", "http://127.0.0.1:9/v2")) as registry,
        pytest.raises(RegistryRequestFailed, match="connection refused") as caught,
    ):
        registry.resolve(REPO, "v1")
    assert isinstance(caught.value, RegistryUnavailable)


def test_mirror_requests_name_the_registry(server: ScriptedServer) -> None:
    image = manifest("h")
    server.fixed("HEAD", f"{BASE}/manifests/v1", 200, image.body, **image.headers())
    with client(server, registry="registry.example.com") as registry:
        registry.resolve(REPO, "v1")
    assert server.seen[0].query == {"ns": ["registry.example.com"]}


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(pki: TestPKI) -> Iterator[ScriptedServer]:
    yield from serve(tls=pki.issue_server_cert("registry"))


def test_tls_with_the_endpoints_ca_or_skip_verify(tls_server: ScriptedServer, pki: TestPKI) -> None:
    image = manifest("tls")
    tls_server.fixed("HEAD", f"{BASE}/manifests/v1", 200, image.body, **image.headers())
    with client(tls_server, ca_files=(pki.ca_cert,)) as registry:
        assert registry.resolve(REPO, "v1").digest == image.digest
    with (
        client(tls_server) as registry,
        pytest.raises(RegistryRequestFailed, match="certificate verify failed"),
    ):
        registry.resolve(REPO, "v1")
    with client(tls_server, verify=False) as registry:
        assert registry.resolve(REPO, "v1").digest == image.digest
    # A CA file that cannot be loaded names itself.
    missing = Path("/nonexistent/ca.pem")
    with pytest.raises(RegistryUnavailable, match=r"/nonexistent/ca\.pem"):
        client(tls_server, ca_files=(missing,))


def test_client_certificate_from_the_endpoint(pki: TestPKI) -> None:
    server_gen = serve(tls=pki.issue_server_cert("mtls-registry"), client_ca=pki.ca_cert)
    server = next(server_gen)
    try:
        image = manifest("mtls")
        server.fixed("HEAD", f"{BASE}/manifests/v1", 200, image.body, **image.headers())
        cert, key = pki.issue_client_cert("node")
        certificates = (ClientCertificate(cert, key),)
        with client(server, ca_files=(pki.ca_cert,), client_certificates=certificates) as r:
            assert r.resolve(REPO, "v1").digest == image.digest
        with client(server, ca_files=(pki.ca_cert,)) as r, pytest.raises(RegistryUnavailable):
            r.resolve(REPO, "v1")
    finally:
        server_gen.close()


def test_trickling_tls_body_fails_at_the_deadline(tls_server: ScriptedServer, pki: TestPKI) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    tls_server.route("GET", f"{BASE}/manifests/v1", lambda request: request.trickle(head))
    with (
        client(tls_server, timeout=1.0, ca_files=(pki.ca_cert,)) as registry,
        pytest.raises(RegistryTimeout),
    ):
        registry.manifest(REPO, "v1")


def test_http_fallback_only_when_the_server_speaks_http(
    server: ScriptedServer, tls_server: ScriptedServer, pki: TestPKI
) -> None:
    image = manifest("fallback")
    for answering in (server, tls_server):
        answering.fixed("HEAD", f"{BASE}/manifests/v1", 200, image.body, **image.headers())
    plain = RegistryEndpoint(server.host, f"https://{server.host}/v2", http_fallback=True)
    with RegistryClient(plain) as registry:
        assert registry.resolve(REPO, "v1").digest == image.digest
        assert registry.resolve(REPO, "v1").digest == image.digest
    assert len(server.seen) == 2  # the failed handshake never reached the HTTP layer
    # A TLS server whose certificate is not trusted is a TLS failure, never a downgrade.
    tls = RegistryEndpoint(tls_server.host, f"https://{tls_server.host}/v2", http_fallback=True)
    with (
        RegistryClient(tls) as registry,
        pytest.raises(RegistryRequestFailed, match="certificate verify failed"),
    ):
        registry.resolve(REPO, "v1")


def test_http_fallback_of_requests_that_set_out_together(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests sent over HTTPS at once both fail the handshake; the one that finds the
    fallback already taken by the other must fall back too, not fail with a TLS error."""
    image = manifest("together")
    server.fixed("HEAD", f"{BASE}/manifests/v1", 200, image.body, **image.headers())
    plain = RegistryEndpoint(server.host, f"https://{server.host}/v2", http_fallback=True)
    transport = RegistryTransport(plain)
    send_once = transport._send_once

    def other_request_fell_back_meanwhile(request: object, url: str, watch: object) -> object:
        transport._fallen_back = True  # what the other request's failed handshake did
        return send_once(request, url, watch)  # type: ignore[arg-type]

    monkeypatch.setattr(transport, "_send_once", other_request_fell_back_meanwhile)
    with RegistryClient(plain, transport=transport) as registry:
        assert registry.resolve(REPO, "v1").digest == image.digest
    transport.close()
    assert len(server.seen) == 1


# --- authentication ------------------------------------------------------------------------------


def bearer_registry(server: ScriptedServer, realm: str, token: str = "tok-1") -> None:
    """Manifests that need ``Bearer token``; 401 with a challenge naming ``realm`` otherwise."""
    image = manifest("auth")
    challenge = f'Bearer realm="{realm}",service="svc",scope="repository:{REPO}:pull"'

    def manifests(request: Request) -> None:
        if request.headers.get("Authorization") == f"Bearer {token}":
            request.answer(200, image.body, image.headers())
        else:
            request.answer(
                401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge}
            )

    server.route("HEAD", f"{BASE}/manifests/v1", manifests)
    server.route("GET", f"{BASE}/manifests/v1", manifests)


def token_service(server: ScriptedServer, path: str = "/token", token: str = "tok-1") -> None:
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()

    def issue(request: Request) -> None:
        if request.headers.get("Authorization") != expected:
            request.answer(401, b'{"details": "bad credentials"}')
            return
        request.answer(200, json.dumps({"token": token, "expires_in": 300}).encode())

    server.route("GET", path, issue)


def test_token_flow_with_password_and_cache(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The realm is on the registry's own host, which is configured as plain HTTP.
    bearer_registry(server, f"{server.url}/token")
    token_service(server)
    with caplog.at_level(logging.DEBUG), client(server, Credentials("alice", PASSWORD)) as r:
        assert r.resolve(REPO, "v1").size > 0
        assert r.resolve(REPO, "v1").size > 0
    token_requests = [s for s in server.seen if s.path == "/token"]
    assert len(token_requests) == 1  # the second resolve used the cached token
    assert token_requests[0].query == {
        "scope": [f"repository:{REPO}:pull"],
        "service": ["svc"],
        "account": ["alice"],
    }
    assert [s.headers.get("Authorization") for s in server.seen if s.method == "HEAD"] == [
        None,
        "Bearer tok-1",
        "Bearer tok-1",
    ]
    assert f"to the token service {server.url}" in caplog.text
    assert PASSWORD not in caplog.text


def test_wrong_password_is_an_authentication_failure(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    bearer_registry(server, f"{server.url}/token")
    token_service(server)
    with (
        caplog.at_level(logging.DEBUG),
        client(server, Credentials("alice", "wrong-pw-123")) as registry,
        pytest.raises(RegistryAuthenticationFailed) as caught,
    ):
        registry.resolve(REPO, "v1")
    assert "refused user 'alice'" in str(caught.value)
    assert "wrong-pw-123" not in str(caught.value) + caplog.text
    assert isinstance(caught.value, RegistryUnavailable)


def test_a_token_the_registry_refuses_is_an_authentication_failure(
    server: ScriptedServer,
) -> None:
    bearer_registry(server, f"{server.url}/token", token="what-the-registry-wants")
    token_service(server, token="something-else")
    with (
        client(server, Credentials("alice", PASSWORD)) as registry,
        pytest.raises(RegistryAuthenticationFailed, match="refused access"),
    ):
        registry.resolve(REPO, "v1")
    assert len([s for s in server.seen if s.method == "HEAD"]) == 2


def test_credentials_never_go_to_a_plain_http_realm_elsewhere(
    server: ScriptedServer, other: ScriptedServer
) -> None:
    realm = f"http://localhost:{other.server_address[1]}/token"
    bearer_registry(server, realm)
    token_service(other)
    with (
        client(server, Credentials("alice", PASSWORD)) as registry,
        pytest.raises(RegistryAuthenticationFailed, match="plain HTTP"),
    ):
        registry.resolve(REPO, "v1")
    assert other.seen == []
    # Anonymous access sends nothing secret, so it may ask there (and is refused).
    with client(server) as registry, pytest.raises(RegistryAuthenticationFailed):
        registry.resolve(REPO, "v1")
    assert [s.headers.get("Authorization") for s in other.seen] == [None]


def test_credentials_never_go_to_a_plain_http_realm_of_an_https_registry(
    server: ScriptedServer,
) -> None:
    """An https registry (here one that is never reached) gives no licence for an http realm
    on its host: the operator did not choose plain HTTP for it."""
    bearer_registry(server, f"{server.url}/token")
    token_service(server)
    endpoint = RegistryEndpoint(server.host, f"https://{server.host}/v2")
    with RegistryClient(endpoint, Credentials("alice", PASSWORD)) as registry:
        authenticator = registry._auth
        with pytest.raises(RegistryAuthenticationFailed, match="plain HTTP"):
            authenticator.answer_challenge(
                f'Bearer realm="{server.url}/token",service="svc"', REPO, None
            )
    assert server.seen == []


def test_identity_token_is_a_refresh_token(server: ScriptedServer) -> None:
    bearer_registry(server, f"{server.url}/token")

    def refuse_post(request: Request) -> None:
        request.answer(404)

    server.route("POST", "/token", refuse_post)
    expected = "Basic " + base64.b64encode(b"<token>:refresh-me").decode()

    def issue(request: Request) -> None:
        ok = request.headers.get("Authorization") == expected
        request.answer(200 if ok else 401, b'{"token": "tok-1"}')

    server.route("GET", "/token", issue)
    credentials = Credentials("<token>", identity_token="refresh-me")
    with client(server, credentials) as registry:
        assert registry.resolve(REPO, "v1").size > 0
    post = next(s for s in server.seen if s.method == "POST")
    form = {key: values[0] for key, values in form_fields(post.body).items()}
    assert form == {
        "grant_type": "refresh_token",
        "refresh_token": "refresh-me",
        "client_id": "trustd",
        "scope": f"repository:{REPO}:pull",
        "service": "svc",
    }


def form_fields(body: bytes) -> dict[str, list[str]]:
    return parse_qs(body.decode())


def test_registry_token_is_sent_as_is(server: ScriptedServer) -> None:
    bearer_registry(server, f"{server.url}/token", token="kubelet-token")
    with client(server, Credentials(registry_token="kubelet-token")) as registry:
        assert registry.resolve(REPO, "v1").size > 0
    assert server.paths() == [f"{BASE}/manifests/v1"]
    bearer_registry(server, f"{server.url}/token", token="another")
    with (
        client(server, Credentials(registry_token="kubelet-token")) as registry,
        pytest.raises(RegistryAuthenticationFailed, match="registry token"),
    ):
        registry.resolve(REPO, "v1")


def test_basic_challenge(server: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    image = manifest("basic")
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()

    def manifests(request: Request) -> None:
        if request.headers.get("Authorization") == expected:
            request.answer(200, image.body, image.headers())
        else:
            request.answer(401, b"", {"WWW-Authenticate": 'Basic realm="registry"'})

    server.route("HEAD", f"{BASE}/manifests/v1", manifests)
    with caplog.at_level(logging.INFO), client(server, Credentials("alice", PASSWORD)) as r:
        r.resolve(REPO, "v1")
        r.resolve(REPO, "v1")
    # The second resolve sent the credentials at once.
    assert [s.headers.get("Authorization") for s in server.seen] == [None, expected, expected]
    assert f"credentials for {server.host} to {server.url}" in caplog.text
    with (
        client(server, Credentials("alice", "nope")) as r,
        pytest.raises(RegistryAuthenticationFailed, match="refused access"),
    ):
        r.resolve(REPO, "v1")
    with client(server) as r, pytest.raises(RegistryAuthenticationFailed, match="carries none"):
        r.resolve(REPO, "v1")


def test_forbidden_is_an_authentication_failure(server: ScriptedServer) -> None:
    server.fixed("HEAD", f"{BASE}/manifests/v1", 403)
    server.fixed("GET", f"{BASE}/manifests/v2", 403, b'{"errors":[{"code":"DENIED"}]}')
    with client(server) as registry:
        with pytest.raises(RegistryAuthenticationFailed, match="HTTP 403"):
            registry.resolve(REPO, "v1")
        with pytest.raises(RegistryAuthenticationFailed, match="DENIED"):
            registry.manifest(REPO, "v2")


# --- referrers -----------------------------------------------------------------------------------

SUBJECT = "sha256:" + hashlib.sha256(b"subject").hexdigest()


def test_referrers_tag_schema() -> None:
    assert referrers_tag(SUBJECT) == "sha256-" + SUBJECT.removeprefix("sha256:")
    sha512 = "sha512:" + "ab" * 64
    assert referrers_tag(sha512) == "sha512-" + "ab" * 32


def test_referrers_api_pages_and_client_side_filter(server: ScriptedServer) -> None:
    first = index(descriptor_json("s1", SIG), descriptor_json("b1", SBOM))
    second = index(descriptor_json("s2", SIG))
    path = f"{BASE}/referrers/{SUBJECT}"

    def pages(request: Request) -> None:
        if request.query.get("page") == ["2"]:
            request.answer(200, second, {"Content-Type": OCI_INDEX})
        else:
            link = f'<{path}?page=2&artifactType=x>; rel="next"'
            request.answer(200, first, {"Content-Type": OCI_INDEX, "Link": link})

    server.route("GET", path, pages)
    with client(server) as registry:
        everything = registry.referrers(REPO, SUBJECT)
        signatures = registry.referrers(REPO, SUBJECT, SIG)
    assert [d.artifact_type for d in everything] == [SIG, SBOM, SIG]
    assert [d.digest for d in signatures] == [everything[0].digest, everything[2].digest]
    assert server.seen[2].query == {"artifactType": [SIG]}


def test_referrers_filter_applied_by_the_registry_is_trusted_as_a_hint(
    server: ScriptedServer,
) -> None:
    # The registry says it filtered; what it returns is used as it is (a hint either way).
    served = index(descriptor_json("s1", SIG), descriptor_json("b1", SBOM))
    server.fixed(
        "GET",
        f"{BASE}/referrers/{SUBJECT}",
        200,
        served,
        Content_Type=OCI_INDEX,
        OCI_Filters_Applied="artifactType",
    )
    with client(server) as registry:
        assert len(registry.referrers(REPO, SUBJECT, SIG)) == 2


@pytest.mark.parametrize(
    "api", [(404, b""), (405, b""), (200, b"<html>not here</html>"), (200, b'{"errors":[]}')]
)
def test_referrers_fall_back_to_the_tag_schema(
    server: ScriptedServer, api: tuple[int, bytes]
) -> None:
    status, body = api
    server.fixed("GET", f"{BASE}/referrers/{SUBJECT}", status, body)
    tagged = index(descriptor_json("s1", SIG), descriptor_json("b1", SBOM), {"bad": "entry"})
    server.fixed(
        "GET", f"{BASE}/manifests/{referrers_tag(SUBJECT)}", 200, tagged, Content_Type=OCI_INDEX
    )
    with client(server) as registry:
        assert [d.artifact_type for d in registry.referrers(REPO, SUBJECT)] == [SIG, SBOM]
        assert [d.artifact_type for d in registry.referrers(REPO, SUBJECT, SIG)] == [SIG]


def test_no_referrers_api_and_no_tag_means_none(server: ScriptedServer) -> None:
    with client(server) as registry:
        assert registry.referrers(REPO, SUBJECT) == []
    assert server.paths() == [
        f"{BASE}/referrers/{SUBJECT}",
        f"{BASE}/manifests/{referrers_tag(SUBJECT)}",
    ]


def _shared(server: ScriptedServer, transports: RegistryTransports) -> RegistryClient:
    """A new client (as for each pull) on the endpoint's shared transport."""
    endpoint = RegistryEndpoint(registry=server.host, url=server.url + "/v2")
    return RegistryClient(endpoint, transport=transports.get(endpoint))


def test_a_registry_without_the_referrers_api_is_not_asked_again_for_a_while(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.fixed("GET", f"{BASE}/referrers/{SUBJECT}", 404, b"404 page not found")
    tagged = index(descriptor_json("s1", SIG))
    server.fixed(
        "GET", f"{BASE}/manifests/{referrers_tag(SUBJECT)}", 200, tagged, Content_Type=OCI_INDEX
    )
    api, tag = f"{BASE}/referrers/{SUBJECT}", f"{BASE}/manifests/{referrers_tag(SUBJECT)}"
    transports = RegistryTransports()
    try:
        for _ in range(3):
            with _shared(server, transports) as registry:
                assert [d.artifact_type for d in registry.referrers(REPO, SUBJECT)] == [SIG]
        # Only the first lookup asked for the API; the later ones (other clients of the same
        # endpoint) went straight to the tag schema.
        assert server.paths() == [api, tag, tag, tag]
        # Once the time is up, the API is asked for again.
        monkeypatch.setattr("trustd.registry.client.NO_REFERRERS_API_SECONDS", 0.0)
        with _shared(server, transports) as registry:
            assert len(registry.referrers(REPO, SUBJECT)) == 1
        assert server.paths()[4:] == [api, tag]
    finally:
        transports.close()


def test_a_registry_with_the_referrers_api_is_asked_every_time(server: ScriptedServer) -> None:
    api = f"{BASE}/referrers/{SUBJECT}"
    listed = index(descriptor_json("s1", SIG))
    server.fixed("GET", api, 200, listed, Content_Type=OCI_INDEX)
    transports = RegistryTransports()
    try:
        for _ in range(2):
            with _shared(server, transports) as registry:
                assert len(registry.referrers(REPO, SUBJECT)) == 1
    finally:
        transports.close()
    assert server.paths() == [api, api]


def test_a_tag_schema_answer_that_is_not_an_index_is_malformed(server: ScriptedServer) -> None:
    image = manifest("not an index")
    server.fixed(
        "GET", f"{BASE}/manifests/{referrers_tag(SUBJECT)}", 200, image.body, **image.headers()
    )
    with client(server) as registry, pytest.raises(MalformedContent, match="not an OCI image"):
        registry.referrers(REPO, SUBJECT)


def test_referrers_bounds(server: ScriptedServer, other: ScriptedServer) -> None:
    path = f"{BASE}/referrers/{SUBJECT}"
    many = index(*(descriptor_json(f"s{i}", SIG) for i in range(4)))
    server.fixed("GET", path, 200, many, Content_Type=OCI_INDEX)
    with client(server, limits=RegistryLimits(max_referrers=3)) as registry:
        with pytest.raises(TooManyReferrers, match="more than 3") as caught:
            registry.referrers(REPO, SUBJECT)
        assert caught.value.length == 4
        # Filtered out descriptors do not count.
        assert registry.referrers(REPO, SUBJECT, SBOM) == []

    def endless(request: Request) -> None:
        page = int(request.query.get("page", ["0"])[0])
        link = f'<{path}?page={page + 1}>; rel="next"'
        request.answer(200, index(descriptor_json(f"p{page}", SIG)), {"Link": link})

    server.route("GET", path, endless)
    with (
        client(server, limits=RegistryLimits(max_referrers_pages=3)) as registry,
        pytest.raises(TooManyReferrers, match="3 pages"),
    ):
        registry.referrers(REPO, SUBJECT)
    assert len(server.paths()) == 3 + 2

    server.fixed("GET", path, 200, index(), Link=f'<{path}>; rel="next"')
    with client(server) as registry, pytest.raises(MalformedContent, match="link back"):
        registry.referrers(REPO, SUBJECT)

    server.fixed("GET", path, 200, index(), Link=f'<{other.url}{path}>; rel="next"')
    with client(server) as registry, pytest.raises(MalformedContent, match="another host"):
        registry.referrers(REPO, SUBJECT)
    assert other.seen == []
