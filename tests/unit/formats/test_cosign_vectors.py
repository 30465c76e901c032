"""Signatures made by the real cosign 2 and cosign 3 CLIs (see vectors/cosign/README.md)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from trustd.errors import TrustError
from trustd.formats.cosign.bundle import BundleSignature
from trustd.formats.cosign.classic import ClassicSignature
from trustd.formats.cosign.errors import CosignSignatureInvalid, SignatureForOtherDigest
from trustd.formats.cosign.keys import CosignPublicKey, public_key_from_pem
from trustd.formats.cosign.manifests import bundle_manifest_layer, signature_manifest_layers
from trustd.formats.cosign.verify import FORM_BUNDLE, FORM_SIMPLE_SIGNING, Candidate, verify_cosign
from trustd.net.descriptor import Descriptor

VECTORS = Path(__file__).parent / "vectors" / "cosign"
CASES = sorted(path.name for path in VECTORS.iterdir() if (path / "cosign.pub").is_file())
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _load(name: str) -> tuple[list[Candidate], str, CosignPublicKey]:
    directory = VECTORS / name
    key = public_key_from_pem((directory / "cosign.pub").read_bytes(), f"{name}/cosign.pub")
    digest = (directory / "image-digest").read_text().strip()
    candidates: list[Candidate] = []
    if (directory / "sig-manifest.json").is_file():
        layers = signature_manifest_layers((directory / "sig-manifest.json").read_bytes(), name)
        for index, layer in enumerate(layers):
            payload = (directory / f"layer-{index}.json").read_bytes()
            candidates.append(ClassicSignature(layer, payload, f"{name} layer {index}"))
    for manifest in sorted(directory.glob("bundle-manifest-*.json")):
        index = manifest.stem.rsplit("-", 1)[1]
        layer = bundle_manifest_layer(manifest.read_bytes(), manifest.name)
        assert layer is not None
        data = (directory / f"bundle-{index}.json").read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
        candidates.append(BundleSignature(data, layer.media_type, f"{name} bundle {index}"))
    assert candidates
    return candidates, digest, key


def test_there_are_vectors_of_both_forms() -> None:
    forms = set()
    for name in CASES:
        candidates, _, _ = _load(name)
        forms |= {type(candidate) for candidate in candidates}
    assert forms == {ClassicSignature, BundleSignature}


# The scheme each real signer used (cosign 2.6 and later sign P-384 keys with SHA-384 and
# Ed25519 keys with Ed25519ph, the algorithm registry's defaults).
_SCHEMES = {
    "default": "ecdsa-sha256",
    "p384": "ecdsa-sha384",
    "ed25519": "ed25519ph",
    "rsa3072": "rsa-pkcs1v15-sha256",
}


@pytest.mark.parametrize("name", CASES)
def test_real_signature_verifies(name: str) -> None:
    candidates, digest, key = _load(name)
    result = verify_cosign(candidates, digest, [key], 1, NOW)
    assert result.key_ids == (key.key_id,)
    expected_form = FORM_BUNDLE if "-bundle-" in name else FORM_SIMPLE_SIGNING
    for signature in result.signatures:
        assert signature.form == expected_form
        assert signature.schemes == (_SCHEMES[name.rsplit("-", 1)[1]],)
        if signature.form == FORM_SIMPLE_SIGNING:
            assert signature.claimed_identity.endswith(name)


@pytest.mark.parametrize("name", CASES)
def test_real_signature_is_not_for_another_digest(name: str) -> None:
    candidates, _, key = _load(name)
    with pytest.raises(SignatureForOtherDigest):
        verify_cosign(candidates, "sha256:" + "0" * 64, [key], 1, NOW)


@pytest.mark.parametrize("name", CASES)
def test_real_signature_with_another_key(name: str) -> None:
    candidates, digest, _ = _load(name)
    others = [n for n in CASES if n != name]
    other = public_key_from_pem((VECTORS / others[0] / "cosign.pub").read_bytes(), "other.pub")
    with pytest.raises(CosignSignatureInvalid):
        verify_cosign(candidates, digest, [other], 1, NOW)


def _tampered(candidate: Candidate, digest: str) -> Candidate:
    hex_digest = digest.split(":", 1)[1]
    forged = hex_digest[:-1] + ("0" if hex_digest[-1] != "0" else "1")
    if isinstance(candidate, ClassicSignature):
        payload = candidate.payload.replace(b'"type":"cosign', b'"type": "cosign')
        assert payload != candidate.payload
        layer = candidate.layer
        descriptor = Descriptor(
            layer.media_type,
            "sha256:" + hashlib.sha256(payload).hexdigest(),
            len(payload),
            "",
            layer.annotations,
        )
        return ClassicSignature(descriptor, payload, candidate.source)
    document = json.loads(candidate.data)
    statement = base64.b64decode(document["dsseEnvelope"]["payload"])
    document["dsseEnvelope"]["payload"] = base64.b64encode(
        statement.replace(hex_digest.encode(), forged.encode())
    ).decode()
    return BundleSignature(json.dumps(document).encode(), candidate.media_type, candidate.source)


@pytest.mark.parametrize("name", CASES)
def test_tampered_real_signature(name: str) -> None:
    candidates, digest, key = _load(name)
    for candidate in candidates:
        with pytest.raises(TrustError):
            verify_cosign([_tampered(candidate, digest)], digest, [key], 1, NOW)
