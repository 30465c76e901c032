"""Classic .sig signature layers: annotations, the signature tag, and the Rekor SET option."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.formats import cosign_factory as f
from trustd.formats.cosign.classic import ClassicSignature, signature_tag, verify_classic
from trustd.formats.cosign.errors import MalformedCosignSignature, RekorEntryInvalid
from trustd.formats.cosign.rekor import canonical_payload
from trustd.formats.cosign.verify import verify_cosign
from trustd.net.descriptor import Descriptor

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_signature_tag() -> None:
    assert signature_tag(f.DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    with pytest.raises(ValueError):
        signature_tag("sha256:xyz")


def _with_annotations(candidate: ClassicSignature, annotations: dict[str, str]) -> ClassicSignature:
    layer = candidate.layer
    descriptor = Descriptor(layer.media_type, layer.digest, layer.size, "", annotations)
    return ClassicSignature(descriptor, candidate.payload, candidate.source)


def test_missing_signature_annotation() -> None:
    signer = f.ecdsa_signer()
    candidate = _with_annotations(f.classic(signer), {})
    with pytest.raises(MalformedCosignSignature, match="annotation"):
        verify_classic(candidate, f.DIGEST, [signer.public], NOW)


@pytest.mark.parametrize("value", ["not base64!", "QUI", "QUI=\n", "QU=I", "QUJD-_=="])
def test_signature_annotation_must_be_padded_standard_base64(value: str) -> None:
    signer = f.ecdsa_signer()
    candidate = _with_annotations(f.classic(signer), {"dev.cosignproject.cosign/signature": value})
    with pytest.raises(MalformedCosignSignature, match="not standard padded base64"):
        verify_classic(candidate, f.DIGEST, [signer.public], NOW)


def test_other_layer_media_types_are_not_signatures() -> None:
    signer = f.ecdsa_signer()
    candidate = f.classic(signer, media_type="application/vnd.in-toto+json")
    with pytest.raises(MalformedCosignSignature, match="layer media type"):
        verify_classic(candidate, f.DIGEST, [signer.public], NOW)


# --- Rekor signed entry timestamps -----------------------------------------------------------


def _rekor_bundle(
    rekor: f.Signer,
    signer: f.Signer,
    candidate: ClassicSignature,
    *,
    entry_changes: dict[str, Any] | None = None,
    integrated_time: int = 1_750_000_000,
    log_id: str | None = None,
) -> str:
    signature_b64 = candidate.layer.annotations["dev.cosignproject.cosign/signature"]
    entry: dict[str, Any] = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {
                "hash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(candidate.payload).hexdigest(),
                }
            },
            "signature": {
                "content": signature_b64,
                "publicKey": {"content": base64.b64encode(signer.pem).decode()},
            },
        },
    }
    for path, value in (entry_changes or {}).items():
        target = entry
        *parents, last = path.split(".")
        for name in parents:
            target = target[name]
        target[last] = value
    body = base64.b64encode(json.dumps(entry).encode()).decode()
    payload = {
        "body": body,
        "integratedTime": integrated_time,
        "logIndex": 42,
        "logID": log_id if log_id is not None else rekor.public.key_id,
    }
    # Canonical form written out here: sorted keys, no spaces (RFC 8785 for this shape).
    canonical = (
        f'{{"body":"{body}","integratedTime":{integrated_time},'
        f'"logID":"{payload["logID"]}","logIndex":42}}'
    ).encode()
    assert canonical_payload(payload) == canonical
    stamp = base64.b64encode(rekor.sign(canonical)).decode()
    return json.dumps({"SignedEntryTimestamp": stamp, "Payload": payload})


def _logged(
    signer: f.Signer, rekor: f.Signer, **kwargs: Any
) -> tuple[ClassicSignature, ClassicSignature]:
    plain = f.classic(signer)
    annotations = dict(plain.layer.annotations)
    annotations["dev.sigstore.cosign/bundle"] = _rekor_bundle(rekor, signer, plain, **kwargs)
    return plain, _with_annotations(plain, annotations)


def test_rekor_set_accepted() -> None:
    signer, rekor = f.ecdsa_signer(), f.ecdsa_signer("rekor.pub")
    _, logged = _logged(signer, rekor)
    result = verify_cosign(
        [logged], f.DIGEST, [signer.public], 1, NOW, rekor_public_keys=[rekor.public]
    )
    assert result.signatures[0].rekor_integrated_time == 1_750_000_000


def test_rekor_set_required_when_configured() -> None:
    signer, rekor = f.ecdsa_signer(), f.ecdsa_signer("rekor.pub")
    plain, _ = _logged(signer, rekor)
    with pytest.raises(RekorEntryInvalid, match="no Rekor entry"):
        verify_classic(plain, f.DIGEST, [signer.public], NOW, [rekor.public])
    # Without the option the SET is not looked at.
    assert verify_classic(plain, f.DIGEST, [signer.public], NOW).rekor_integrated_time is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"entry_changes": {"spec.signature.content": base64.b64encode(b"x").decode()}},
            "different signature",
        ),
        ({"entry_changes": {"spec.data.hash.value": "00" * 32}}, "different payload"),
        ({"entry_changes": {"spec.data.hash.algorithm": "md5"}}, "sha256/sha384/sha512"),
        ({"entry_changes": {"kind": "intoto"}}, "expected hashedrekord"),
        ({"log_id": "00" * 32}, "logID"),
        ({"integrated_time": int(NOW.timestamp()) + 3600}, "in the future"),
    ],
)
def test_rekor_set_that_does_not_describe_this_signature(
    kwargs: dict[str, Any], fragment: str
) -> None:
    signer, rekor = f.ecdsa_signer(), f.ecdsa_signer("rekor.pub")
    _, logged = _logged(signer, rekor, **kwargs)
    with pytest.raises(RekorEntryInvalid) as caught:
        verify_classic(logged, f.DIGEST, [signer.public], NOW, [rekor.public])
    assert fragment in str(caught.value)


def test_rekor_set_for_another_signing_key() -> None:
    signer, other, rekor = f.ecdsa_signer(), f.ecdsa_signer(), f.ecdsa_signer("rekor.pub")
    plain = f.classic(signer)
    annotations = dict(plain.layer.annotations)
    annotations["dev.sigstore.cosign/bundle"] = _rekor_bundle(rekor, other, plain)
    with pytest.raises(RekorEntryInvalid, match="different signing key"):
        verify_classic(
            _with_annotations(plain, annotations), f.DIGEST, [signer.public], NOW, [rekor.public]
        )


def test_rekor_set_signed_by_another_log() -> None:
    signer, rekor, impostor = f.ecdsa_signer(), f.ecdsa_signer("rekor.pub"), f.ecdsa_signer()
    _, logged = _logged(signer, impostor, log_id=rekor.public.key_id)
    with pytest.raises(RekorEntryInvalid, match="does not verify with the Rekor key"):
        verify_classic(logged, f.DIGEST, [signer.public], NOW, [rekor.public])


def test_tampered_set_payload() -> None:
    signer, rekor = f.ecdsa_signer(), f.ecdsa_signer("rekor.pub")
    _, logged = _logged(signer, rekor)
    annotations = dict(logged.layer.annotations)
    document = json.loads(annotations["dev.sigstore.cosign/bundle"])
    document["Payload"]["logIndex"] = 43
    annotations["dev.sigstore.cosign/bundle"] = json.dumps(document)
    with pytest.raises(RekorEntryInvalid, match="does not verify"):
        verify_classic(
            _with_annotations(logged, annotations), f.DIGEST, [signer.public], NOW, [rekor.public]
        )


@pytest.mark.parametrize(
    "annotation",
    [
        "{}",
        '{"SignedEntryTimestamp": "AAAA", "Payload": {}}',
        '{"SignedEntryTimestamp": 1, "Payload": {}}',
        "not json",
    ],
)
def test_malformed_set(annotation: str) -> None:
    signer, rekor = f.ecdsa_signer(), f.ecdsa_signer("rekor.pub")
    plain = f.classic(signer)
    annotations = dict(plain.layer.annotations)
    annotations["dev.sigstore.cosign/bundle"] = annotation
    with pytest.raises(RekorEntryInvalid):
        verify_classic(
            _with_annotations(plain, annotations), f.DIGEST, [signer.public], NOW, [rekor.public]
        )
