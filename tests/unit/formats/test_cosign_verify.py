"""verify_cosign: which signatures count, thresholds, and what an operator is told."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from tests.unit.formats import cosign_factory as f
from trustd.errors import BadSignature, DigestNotSigned, ThresholdNotMet
from trustd.formats.cosign.errors import (
    KEYLESS_MESSAGE,
    CosignPayloadInvalid,
    CosignPolicyError,
    CosignSignatureInvalid,
    CosignThresholdNotMet,
    KeylessNotSupported,
    MalformedCosignSignature,
    NoCosignSignatures,
    SignatureForOtherDigest,
    UnacceptedPredicateType,
)
from trustd.formats.cosign.verify import FORM_BUNDLE, FORM_SIMPLE_SIGNING, verify_cosign

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "make", [f.ecdsa_signer, f.rsa_signer, f.ed25519_signer], ids=["ecdsa", "rsa", "ed25519"]
)
def test_classic_signature_by_each_key_type(make: object) -> None:
    signer = make()  # type: ignore[operator]
    result = verify_cosign([f.classic(signer)], f.DIGEST, [signer.public], 1, NOW)
    assert result.key_ids == (signer.public.key_id,)
    assert result.manifest_digest == f.DIGEST
    [signature] = result.signatures
    assert signature.form == FORM_SIMPLE_SIGNING
    assert signature.claimed_identity == "127.0.0.1:5000/app"
    assert result.claimed_identities == ("127.0.0.1:5000/app",)
    assert result.rejected == ()


@pytest.mark.parametrize(
    "make", [f.ecdsa_signer, f.rsa_signer, f.ed25519_signer], ids=["ecdsa", "rsa", "ed25519"]
)
def test_bundle_by_each_key_type(make: object) -> None:
    signer = make()  # type: ignore[operator]
    result = verify_cosign([f.bundle(signer)], f.DIGEST, [signer.public], 1, NOW)
    [signature] = result.signatures
    assert signature.form == FORM_BUNDLE
    assert signature.key_ids == (signer.public.key_id,)
    assert signature.predicate_type == "https://sigstore.dev/cosign/sign/v1"


def test_wrong_key_is_refused_naming_the_keys_tried() -> None:
    signer, configured = f.ecdsa_signer(), f.ecdsa_signer("team.pub")
    with pytest.raises(CosignSignatureInvalid) as caught:
        verify_cosign([f.classic(signer)], f.DIGEST, [configured.public], 1, NOW)
    message = str(caught.value)
    assert configured.public.short_id in message and "team.pub" in message
    assert f.DIGEST in message
    assert "app:sha256-ab.sig layer 0" in message


def test_tampered_payload_is_refused() -> None:
    signer = f.ecdsa_signer()
    good = f.classic(signer)
    payload = f.simple_signing_payload(reference="127.0.0.1:5000/evil")
    old_signature = base64.b64decode(good.layer.annotations["dev.cosignproject.cosign/signature"])
    tampered = f.classic(None, payload, signature=old_signature)
    with pytest.raises(CosignSignatureInvalid):
        verify_cosign([tampered], f.DIGEST, [signer.public], 1, NOW)


def test_payload_bytes_must_match_the_layer_descriptor() -> None:
    signer = f.ecdsa_signer()
    good = f.classic(signer)
    swapped = type(good)(good.layer, good.payload + b" ", good.source)
    with pytest.raises(MalformedCosignSignature, match="do not match the layer descriptor"):
        verify_cosign([swapped], f.DIGEST, [signer.public], 1, NOW)


def test_signature_for_another_digest() -> None:
    signer = f.ecdsa_signer()
    candidate = f.classic(signer, f.simple_signing_payload(digest=f.OTHER_DIGEST))
    with pytest.raises(SignatureForOtherDigest) as caught:
        verify_cosign([candidate], f.DIGEST, [signer.public], 1, NOW)
    assert isinstance(caught.value, DigestNotSigned)
    assert f.OTHER_DIGEST in str(caught.value) and f.DIGEST in str(caught.value)
    assert signer.public.short_id in str(caught.value)


def test_wrong_type_string_is_refused_after_verification() -> None:
    signer = f.ecdsa_signer()
    payload = f.simple_signing_payload(kind="atomic container signature")
    with pytest.raises(CosignPayloadInvalid, match=r"critical\.type"):
        verify_cosign([f.classic(signer, payload)], f.DIGEST, [signer.public], 1, NOW)


def test_unknown_critical_field_is_refused() -> None:
    signer = f.ecdsa_signer()
    document = json.loads(f.simple_signing_payload())
    document["critical"]["tag"] = "v1"
    payload = json.dumps(document).encode()
    with pytest.raises(CosignPayloadInvalid, match="unknown field"):
        verify_cosign([f.classic(signer, payload)], f.DIGEST, [signer.public], 1, NOW)


def test_unverified_payload_is_never_parsed() -> None:
    # Garbage signed by nobody: the error is about the signature, not about the JSON.
    candidate = f.classic(None, b"not json", signature=b"\x30\x00")
    with pytest.raises(CosignSignatureInvalid):
        verify_cosign([candidate], f.DIGEST, [f.ecdsa_signer().public], 1, NOW)


def test_embedded_certificate_is_not_trusted() -> None:
    # A signature made by a key nobody configured, carrying that key's certificate.
    stranger, configured = f.ecdsa_signer(), f.ecdsa_signer()
    candidate = f.classic(
        stranger, annotations={"dev.sigstore.cosign/certificate": f.certificate_pem(stranger)}
    )
    with pytest.raises(KeylessNotSupported) as caught:
        verify_cosign([candidate], f.DIGEST, [configured.public], 1, NOW)
    assert KEYLESS_MESSAGE in str(caught.value)
    assert "not trusted by itself" in str(caught.value)


def test_certificate_on_a_signature_by_a_configured_key_is_ignored() -> None:
    signer = f.ecdsa_signer()
    other = f.ecdsa_signer()
    candidate = f.classic(
        signer, annotations={"dev.sigstore.cosign/certificate": f.certificate_pem(other)}
    )
    result = verify_cosign([candidate], f.DIGEST, [signer.public], 1, NOW)
    assert result.key_ids == (signer.public.key_id,)


def test_keyless_bundle_is_refused_with_the_message() -> None:
    stranger = f.ecdsa_signer()
    der = f.certificate_raw_bytes(stranger)
    candidate = f.bundle(stranger, material={"certificate": {"rawBytes": der}})
    with pytest.raises(KeylessNotSupported, match="keyless"):
        verify_cosign([candidate], f.DIGEST, [f.ecdsa_signer().public], 1, NOW)


def test_policy_without_keys_is_keyless() -> None:
    signer = f.ecdsa_signer()
    with pytest.raises(KeylessNotSupported) as caught:
        verify_cosign([f.classic(signer)], f.DIGEST, [], 1, NOW)
    assert KEYLESS_MESSAGE in str(caught.value)


def test_threshold_two_of_three() -> None:
    a, b, c = f.ecdsa_signer("a.pub"), f.rsa_signer("b.pub"), f.ed25519_signer("c.pub")
    keys = [a.public, b.public, c.public]
    stranger = f.ecdsa_signer()

    result = verify_cosign([f.classic(a), f.bundle(c)], f.DIGEST, keys, 2, NOW)
    assert result.key_ids == (a.public.key_id, c.public.key_id)
    assert {s.form for s in result.signatures} == {FORM_SIMPLE_SIGNING, FORM_BUNDLE}

    # The same key twice (two forms, two layers) still counts once.
    with pytest.raises(CosignThresholdNotMet) as caught:
        verify_cosign([f.classic(a), f.bundle(a), f.classic(stranger)], f.DIGEST, keys, 2, NOW)
    assert isinstance(caught.value, ThresholdNotMet)
    message = str(caught.value)
    assert "1 of the 2 required" in message
    assert "b.pub" in message and "c.pub" in message  # who did not sign

    # A signature by b over another digest does not count towards this one.
    other = f.classic(b, f.simple_signing_payload(digest=f.OTHER_DIGEST))
    with pytest.raises(CosignThresholdNotMet):
        verify_cosign([f.classic(a), other], f.DIGEST, keys, 2, NOW)


def test_configuring_the_same_key_twice_does_not_double_count() -> None:
    a = f.ecdsa_signer()
    with pytest.raises(CosignPolicyError, match="cannot be met"):
        verify_cosign([f.classic(a)], f.DIGEST, [a.public, a.public], 2, NOW)


@pytest.mark.parametrize("threshold", [0, -1, 4])
def test_impossible_thresholds(threshold: int) -> None:
    a = f.ecdsa_signer()
    keys = [a.public, f.ecdsa_signer().public, f.ecdsa_signer().public]
    with pytest.raises(CosignPolicyError):
        verify_cosign([f.classic(a)], f.DIGEST, keys, threshold, NOW)


def test_no_signatures() -> None:
    with pytest.raises(NoCosignSignatures) as caught:
        verify_cosign([], f.DIGEST, [f.ecdsa_signer().public], 1, NOW)
    assert f.DIGEST in str(caught.value)


def test_one_bad_candidate_does_not_veto_a_good_one() -> None:
    signer = f.ecdsa_signer()
    junk = f.classic(None, b"{}", signature=b"junk")
    foreign = f.bundle(f.ecdsa_signer())
    result = verify_cosign([junk, foreign, f.classic(signer)], f.DIGEST, [signer.public], 1, NOW)
    assert result.key_ids == (signer.public.key_id,)
    assert len(result.rejected) == 2


def test_most_telling_failure_names_the_denial() -> None:
    signer = f.ecdsa_signer()
    wrong_key = f.classic(f.ecdsa_signer())
    other_digest = f.classic(signer, f.simple_signing_payload(digest=f.OTHER_DIGEST))
    with pytest.raises(SignatureForOtherDigest) as caught:
        verify_cosign([wrong_key, other_digest], f.DIGEST, [signer.public], 1, NOW)
    assert "does not verify" in str(caught.value)  # the other reason is still told


def test_keyless_only_when_every_candidate_is_keyless() -> None:
    signer, stranger = f.ecdsa_signer(), f.ecdsa_signer()
    keyless = f.classic(
        stranger, annotations={"dev.sigstore.cosign/certificate": f.certificate_pem(stranger)}
    )
    with pytest.raises(CosignSignatureInvalid):
        verify_cosign([keyless, f.classic(stranger)], f.DIGEST, [signer.public], 1, NOW)


def test_bundle_for_another_digest() -> None:
    signer = f.ecdsa_signer()
    candidate = f.bundle(signer, f.statement(digest=f.OTHER_DIGEST))
    with pytest.raises(SignatureForOtherDigest) as caught:
        verify_cosign([candidate], f.DIGEST, [signer.public], 1, NOW)
    assert f.OTHER_DIGEST in str(caught.value)


def test_bundle_with_several_subjects_including_this_digest() -> None:
    signer = f.ecdsa_signer()
    subjects = [
        {"name": "a", "digest": {"sha256": "cd" * 32}},
        {"name": "b", "digest": {"sha512": "00" * 64, "sha256": "ab" * 32}},
    ]
    candidate = f.bundle(signer, f.statement(subjects=subjects))
    assert verify_cosign([candidate], f.DIGEST, [signer.public], 1, NOW).key_ids


def test_attestation_of_another_predicate_type_is_not_a_signature() -> None:
    signer = f.ecdsa_signer()
    candidate = f.bundle(signer, f.statement(predicate_type="https://spdx.dev/Document"))
    with pytest.raises(UnacceptedPredicateType) as caught:
        verify_cosign([candidate], f.DIGEST, [signer.public], 1, NOW)
    assert isinstance(caught.value, BadSignature)
    assert "https://spdx.dev/Document" in str(caught.value)
    result = verify_cosign(
        [candidate],
        f.DIGEST,
        [signer.public],
        1,
        NOW,
        accepted_predicate_types=frozenset({"https://spdx.dev/Document"}),
    )
    assert result.signatures[0].predicate_type == "https://spdx.dev/Document"


def test_bundle_with_wrong_payload_type() -> None:
    signer = f.ecdsa_signer()
    candidate = f.bundle(signer, payload_type="application/json")
    with pytest.raises(MalformedCosignSignature, match="payloadType"):
        verify_cosign([candidate], f.DIGEST, [signer.public], 1, NOW)


def test_bundles_are_refused_when_a_rekor_entry_is_required() -> None:
    signer = f.ecdsa_signer()
    rekor = f.ecdsa_signer("rekor.pub")
    with pytest.raises(BadSignature, match="transparency log"):
        verify_cosign(
            [f.bundle(signer)], f.DIGEST, [signer.public], 1, NOW, rekor_public_keys=[rekor.public]
        )


def test_too_many_candidates_are_not_all_examined() -> None:
    signer = f.ecdsa_signer()
    junk = [f.classic(None, b"{}", signature=b"junk", source=f"layer {i}") for i in range(101)]
    with pytest.raises(CosignSignatureInvalid) as caught:
        verify_cosign([*junk, f.classic(signer)], f.DIGEST, [signer.public], 1, NOW)
    assert "not examined" in str(caught.value)


def test_not_a_digest() -> None:
    with pytest.raises(ValueError):
        verify_cosign([], "latest", [f.ecdsa_signer().public], 1, NOW)
