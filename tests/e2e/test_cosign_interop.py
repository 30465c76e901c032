"""The real cosign 2 and cosign 3 sign into the test registry; the cosign verifier reads back.

The signatures are fetched by plain HTTP, the way a discovery step would (the ``.sig`` tag, the
referrers API or its tag schema), and judged by ``verify_cosign``. cosign comes from the test
peer cache (``tests/peers``); a test skips only when it could not be built there, saying why.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tests.peers import require_peer
from tests.stack import PushedImage, Registry
from trustd.formats.cosign.bundle import BundleSignature
from trustd.formats.cosign.classic import ClassicSignature, signature_tag
from trustd.formats.cosign.errors import CosignSignatureInvalid, SignatureForOtherDigest
from trustd.formats.cosign.keys import public_key_from_pem
from trustd.formats.cosign.manifests import (
    bundle_manifest_layer,
    bundle_referrers,
    signature_manifest_layers,
)
from trustd.formats.cosign.verify import FORM_BUNDLE, FORM_SIMPLE_SIGNING, Candidate, verify_cosign

NOW = datetime.now(UTC)
_ACCEPT = "application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json"


def _cosign(name: str) -> Path:
    return require_peer(name)


def _run(command: list[str], cwd: Path) -> None:
    environment = {
        **os.environ,
        "COSIGN_PASSWORD": "interop-test",
        "HOME": str(cwd),
        "TUF_ROOT": str(cwd / "tuf"),
        # Anything but the loopback registry is sent to a closed loopback port.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1",
    }
    result = subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{command}: {result.stderr[-2000:]}"


def _get(registry: Registry, path: str) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.get(f"{registry.url}/v2/{path}", headers={"Accept": _ACCEPT}, timeout=10)


def _blob(registry: Registry, repo: str, digest: str) -> bytes:
    data = _get(registry, f"{repo}/blobs/{digest}").content
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def _discover(registry: Registry, repo: str, digest: str) -> list[Candidate]:
    found: list[Candidate] = []
    tag = signature_tag(digest)
    response = _get(registry, f"{repo}/manifests/{tag}")
    if response.status_code == 200:
        for index, layer in enumerate(signature_manifest_layers(response.content, tag)):
            payload = _blob(registry, repo, layer.digest)
            found.append(ClassicSignature(layer, payload, f"{repo}:{tag} layer {index}"))
    response = _get(registry, f"{repo}/referrers/{digest}")
    if response.status_code != 200:
        response = _get(registry, f"{repo}/manifests/{digest.replace(':', '-', 1)}")
    if response.status_code == 200:
        for entry in bundle_referrers(response.content, f"referrers of {digest}"):
            manifest = _get(registry, f"{repo}/manifests/{entry.digest}").content
            layer = bundle_manifest_layer(manifest, entry.digest)
            if layer is not None:
                data = _blob(registry, repo, layer.digest)
                found.append(BundleSignature(data, layer.media_type, f"{repo}@{entry.digest}"))
    return found


@pytest.mark.parametrize(
    ("cosign", "form"),
    [
        ("cosign2", FORM_SIMPLE_SIGNING),
        ("cosign2", FORM_BUNDLE),
        ("cosign3", FORM_SIMPLE_SIGNING),
        ("cosign3", FORM_BUNDLE),
    ],
)
def test_real_cosign_signature(
    cosign: str,
    form: str,
    registry: Registry,
    push_image: Callable[..., PushedImage],
    tmp_path: Path,
) -> None:
    binary = _cosign(cosign)
    repo = f"interop/{cosign}-{form}"
    image = push_image(repo, "v1", seed=f"{cosign}-{form}")
    other = push_image(repo, "v2", seed=f"{cosign}-{form}-other")
    _run([str(binary), "generate-key-pair"], tmp_path)
    sign = [
        str(binary),
        "sign",
        "--key",
        "cosign.key",
        "--tlog-upload=false",
        "--use-signing-config=false",
        f"--new-bundle-format={'true' if form == FORM_BUNDLE else 'false'}",
        "--allow-insecure-registry",
        "--allow-http-registry",
        "-y",
    ]
    _run([*sign, image.by_digest], tmp_path)
    key = public_key_from_pem((tmp_path / "cosign.pub").read_bytes(), "cosign.pub")

    candidates = _discover(registry, repo, image.digest)
    result = verify_cosign(candidates, image.digest, [key], 1, NOW)
    assert result.key_ids == (key.key_id,)
    assert {signature.form for signature in result.signatures} == {form}

    # The same signatures do not sign another image of the repository, nor for another key.
    with pytest.raises(SignatureForOtherDigest):
        verify_cosign(candidates, other.digest, [key], 1, NOW)
    (tmp_path / "other").mkdir()
    _run([str(binary), "generate-key-pair"], tmp_path / "other")
    stranger = public_key_from_pem((tmp_path / "other" / "cosign.pub").read_bytes(), "other")
    with pytest.raises(CosignSignatureInvalid):
        verify_cosign(candidates, image.digest, [stranger], 1, NOW)
