"""The independent peers (tests/peers) really sign and verify against the test stack.

Each test runs the real Go programs, built from pinned module versions, against registries on
127.0.0.1: notation and cosign sign images, and notation, cosign and containers/image's policy
code verify them. The commands here are the ones tests/peers/README.md records for trustd's own
Notation and cosign tests. A test skips only when a peer could not be built here.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.peers import require_peer
from tests.stack import PushedImage, Registry
from tests.stack.cosign import sigstore_policy
from tests.stack.crane_registry import CraneRegistry
from tests.stack.peer_program import PeerProgram, describe

NOTATION_SIGNATURE = "application/vnd.cncf.notary.signature"
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
COSIGN_PASSWORD = "trustd-test-password"  # protects a throwaway test key


def _get_json(url: str, accept: str | None = None) -> tuple[int, Any, str]:
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(url, headers={"Accept": accept} if accept else {}, timeout=10)
    body = response.json() if response.status_code == 200 else None
    return response.status_code, body, response.headers.get("Content-Type", "")


def _tags(registry_url: str, repo: str) -> list[str]:
    status, body, _ = _get_json(f"{registry_url}/v2/{repo}/tags/list")
    assert status == 200, f"tags/list of {repo}: {status}"
    return list(body.get("tags") or [])


def _manifest(registry_url: str, repo: str, ref: str) -> dict[str, Any]:
    accept = f"{OCI_MANIFEST}, {OCI_INDEX}"
    status, body, _ = _get_json(f"{registry_url}/v2/{repo}/manifests/{ref}", accept)
    assert status == 200, f"manifest {repo}:{ref}: {status}"
    manifest: dict[str, Any] = body
    return manifest


def _repo(image: PushedImage) -> str:
    """The repository path inside the registry (without ``127.0.0.1:PORT/``)."""
    return image.repository.split("/", 1)[1]


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


# --- Notation --------------------------------------------------------------------------------


def _notation(tmp_path: Path) -> PeerProgram:
    notation = PeerProgram(require_peer("notation"), tmp_path / "notation-home")
    # A self-signed RSA test certificate; its key becomes the default signing key and the
    # certificate goes into the trust store ca:trustd-test.
    notation.ok("cert", "generate-test", "--default", "trustd-test")
    return notation


def _trust_policy(notation: PeerProgram, scope: str, store: str = "ca:trustd-test") -> None:
    policy = {
        "version": "1.0",
        "trustPolicies": [
            {
                "name": "trustd-test",
                "registryScopes": [scope],
                "signatureVerification": {"level": "strict"},
                "trustStores": [store],
                "trustedIdentities": ["*"],
            }
        ],
    }
    # notation 1.3 reads only this name (later versions also read trustpolicy.oci.json).
    path = notation.config / "notation" / "trustpolicy.json"
    path.write_text(json.dumps(policy, indent=2))


def test_notation_signs_into_docker_registry_by_the_referrers_tag_schema(
    tmp_path: Path, registry: Registry, push_image: Callable[..., PushedImage]
) -> None:
    notation = _notation(tmp_path)
    image = push_image("peers/notation-tag-schema", "v1")
    unsigned = push_image("peers/notation-tag-schema", "unsigned")

    notation.ok("sign", "--insecure-registry", "--signature-format", "jws", image.by_digest)

    # docker-registry 2.8 has no referrers API: the signature is listed in the fallback index.
    repo = _repo(image)
    index_tag = f"sha256-{_hex(image.digest)}"
    assert index_tag in _tags(registry.url, repo)
    index = _manifest(registry.url, repo, index_tag)
    assert index["mediaType"] == OCI_INDEX
    signatures = [m for m in index["manifests"] if m.get("artifactType") == NOTATION_SIGNATURE]
    assert len(signatures) == 1, index
    signature = _manifest(registry.url, repo, signatures[0]["digest"])
    assert signature["subject"]["digest"] == image.digest
    assert [layer["mediaType"] for layer in signature["layers"]] == ["application/jose+json"]

    _trust_policy(notation, image.repository)
    notation.ok("verify", "--insecure-registry", image.by_digest)
    refused = notation.run("verify", "--insecure-registry", unsigned.by_digest)
    assert refused.returncode != 0, describe(notation.program, ["verify"], refused)


def test_notation_signs_into_a_registry_with_the_referrers_api(
    tmp_path: Path,
    referrers_registry: CraneRegistry,
    push_image_to: Callable[..., PushedImage],
) -> None:
    notation = _notation(tmp_path)
    image = push_image_to(referrers_registry, "peers/notation-referrers", "v1")

    notation.ok(
        "sign",
        "--insecure-registry",
        "--force-referrers-tag=false",
        "--signature-format",
        "cose",
        image.by_digest,
    )

    repo = _repo(image)
    index = referrers_registry.referrers(repo, image.digest)
    signatures = [m for m in index["manifests"] if m.get("artifactType") == NOTATION_SIGNATURE]
    assert len(signatures) == 1, index
    signature = _manifest(referrers_registry.url, repo, signatures[0]["digest"])
    assert [layer["mediaType"] for layer in signature["layers"]] == ["application/cose"]
    # This registry sends no OCI-Subject header, so notation also wrote the fallback index;
    # without it, verification below must find the signature through the referrers API.
    index_tag = f"sha256-{_hex(image.digest)}"
    assert index_tag in referrers_registry.tags(repo)
    referrers_registry.delete_manifest(repo, index_tag)
    assert index_tag not in referrers_registry.tags(repo)

    _trust_policy(notation, image.repository)
    notation.ok("verify", "--insecure-registry", image.by_digest)
    # A trust policy naming another trust store refuses the same signature.
    notation.ok("cert", "generate-test", "trustd-other")
    _trust_policy(notation, image.repository, store="ca:trustd-other")
    refused = notation.run("verify", "--insecure-registry", image.by_digest)
    assert refused.returncode != 0, describe(notation.program, ["verify"], refused)


# --- cosign ----------------------------------------------------------------------------------


def _cosign(name: str, tmp_path: Path, key_name: str = "cosign") -> tuple[PeerProgram, Path, Path]:
    """A cosign peer and a fresh key pair (``<key_name>.key``, ``<key_name>.pub``)."""
    cosign = PeerProgram(
        require_peer(name), tmp_path / f"{name}-home", {"COSIGN_PASSWORD": COSIGN_PASSWORD}
    )
    keys = tmp_path / f"{name}-keys"
    keys.mkdir(exist_ok=True)
    cosign.ok("generate-key-pair", "--output-key-prefix", str(keys / key_name))
    return cosign, keys / f"{key_name}.key", keys / f"{key_name}.pub"


def _empty_trusted_root(tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / "empty-trusted-root.json"
    path.write_text(json.dumps(EMPTY_TRUSTED_ROOT))
    return "--trusted-root", str(path)


# Key-based and offline: no transparency log, nothing fetched over TUF. cosign v2's verify asks
# TUF for Sigstore's trusted root unless given one, even with a key: an empty one stops that.
EMPTY_TRUSTED_ROOT = {"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}
COSIGN2_SIGN = ("sign", "--yes", "--tlog-upload=false", "--allow-http-registry")
COSIGN2_VERIFY = ("verify", "--insecure-ignore-tlog=true", "--allow-http-registry")
COSIGN3_SIGN = ("sign", "--yes", "--allow-http-registry")
# v3 deprecates --tlog-upload in favour of a signing config naming no services; with one, sign
# also wants a trusted root (else it asks TUF for Sigstore's).
EMPTY_SIGNING_CONFIG = {"mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json"}
COSIGN3_VERIFY = (
    "verify",
    "--insecure-ignore-tlog=true",
    "--private-infrastructure",
    "--allow-http-registry",
)


def test_cosign2_signs_the_classic_sig_tag(
    tmp_path: Path, registry: Registry, push_image: Callable[..., PushedImage]
) -> None:
    cosign, key, public_key = _cosign("cosign2", tmp_path)
    image = push_image("peers/cosign2", "v1")
    unsigned = push_image("peers/cosign2", "unsigned")

    cosign.ok(*COSIGN2_SIGN, "--key", str(key), image.by_digest)

    repo = _repo(image)
    sig_tag = f"sha256-{_hex(image.digest)}.sig"
    assert sig_tag in _tags(registry.url, repo)
    signature = _manifest(registry.url, repo, sig_tag)
    assert [layer["mediaType"] for layer in signature["layers"]] == [COSIGN_SIMPLESIGNING]
    assert signature["layers"][0]["annotations"][COSIGN_SIGNATURE_ANNOTATION]

    offline = _empty_trusted_root(tmp_path)
    cosign.ok(*COSIGN2_VERIFY, *offline, "--key", str(public_key), image.by_digest)
    refused = cosign.run(*COSIGN2_VERIFY, *offline, "--key", str(public_key), unsigned.by_digest)
    assert refused.returncode != 0, describe(cosign.program, COSIGN2_VERIFY, refused)


def _cosign3_offline(tmp_path: Path, signing_config: bool) -> tuple[str, ...]:
    if not signing_config:
        return ("--tlog-upload=false", "--use-signing-config=false")
    path = tmp_path / "empty-signing-config.json"
    path.write_text(json.dumps(EMPTY_SIGNING_CONFIG))
    return ("--signing-config", str(path), *_empty_trusted_root(tmp_path))


@pytest.mark.parametrize("signing_config", [False, True], ids=["no-tlog-flags", "signing-config"])
def test_cosign3_pushes_its_bundle_as_a_referrer(
    tmp_path: Path,
    referrers_registry: CraneRegistry,
    push_image_to: Callable[..., PushedImage],
    signing_config: bool,
) -> None:
    cosign, key, public_key = _cosign("cosign3", tmp_path)
    _, _, other_public_key = _cosign("cosign3", tmp_path, key_name="other")
    image = push_image_to(referrers_registry, "peers/cosign3", f"v1-{int(signing_config)}")

    offline = _cosign3_offline(tmp_path, signing_config)
    cosign.ok(*COSIGN3_SIGN, *offline, "--key", str(key), image.by_digest)

    repo = _repo(image)
    index = referrers_registry.referrers(repo, image.digest)
    assert len(index["manifests"]) == 1, index
    bundle = _manifest(referrers_registry.url, repo, index["manifests"][0]["digest"])
    assert bundle["artifactType"] == SIGSTORE_BUNDLE
    assert bundle["subject"]["digest"] == image.digest
    assert [layer["mediaType"] for layer in bundle["layers"]] == [SIGSTORE_BUNDLE]
    # No classic signature tag: v3's default is the bundle only.
    assert f"sha256-{_hex(image.digest)}.sig" not in referrers_registry.tags(repo)

    cosign.ok(*COSIGN3_VERIFY, "--key", str(public_key), image.by_digest)
    refused = cosign.run(*COSIGN3_VERIFY, "--key", str(other_public_key), image.by_digest)
    assert refused.returncode != 0, describe(cosign.program, COSIGN3_VERIFY, refused)


# --- containers/image policy (skopeo, CRI-O) -------------------------------------------------


def _containers_policy_check(
    tmp_path: Path, policy: Path, registries_d: Path, image: str
) -> subprocess.CompletedProcess[str]:
    program = require_peer("containers-policy")
    return PeerProgram(program, tmp_path / "containers-policy-home").run(
        "--policy", str(policy), "--registries.d", str(registries_d), "--tls-verify=false",
        f"docker://{image}",
    )  # fmt: skip


def _skopeo_check(
    tmp_path: Path, policy: Path, registries_d: Path, image: str
) -> subprocess.CompletedProcess[str]:
    program = require_peer("skopeo-sigstore")
    copy_to = tmp_path / f"skopeo-copy-{os.urandom(4).hex()}"
    return PeerProgram(program, tmp_path / "skopeo-home").run(
        "--policy", str(policy), "--registries.d", str(registries_d),
        "copy", "--src-tls-verify=false", f"docker://{image}", f"oci:{copy_to}:copy",
    )  # fmt: skip


@pytest.mark.parametrize(
    "check", [_containers_policy_check, _skopeo_check], ids=["containers-policy", "skopeo"]
)
def test_containers_image_policy_verifies_a_cosign2_signature(
    tmp_path: Path,
    push_image: Callable[..., PushedImage],
    check: Callable[[Path, Path, Path, str], subprocess.CompletedProcess[str]],
) -> None:
    cosign, key, public_key = _cosign("cosign2", tmp_path)
    _, _, other_public_key = _cosign("cosign2", tmp_path, key_name="other")
    image = push_image("peers/containers-policy", "v1")
    unsigned = push_image("peers/containers-policy", "unsigned")
    cosign.ok(*COSIGN2_SIGN, "--key", str(key), image.by_digest)

    trusted = tmp_path / "trusted"
    trusted.mkdir()
    policy, registries_d = sigstore_policy(trusted, image.repository, public_key)
    admitted = check(tmp_path, policy, registries_d, image.by_digest)
    assert admitted.returncode == 0, describe(Path("check"), [image.by_digest], admitted)

    refused = check(tmp_path, policy, registries_d, unsigned.by_digest)
    assert refused.returncode != 0, describe(Path("check"), [unsigned.by_digest], refused)

    other = tmp_path / "other"
    other.mkdir()
    policy, registries_d = sigstore_policy(other, image.repository, other_public_key)
    refused = check(tmp_path, policy, registries_d, image.by_digest)
    assert refused.returncode != 0, describe(Path("check"), [image.by_digest], refused)
