"""Sigstore bundles: DSSE PAE, strict bundle parsing, in-toto statements."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from tests.unit.formats import cosign_factory as f
from trustd.formats.cosign.bundle import (
    BundleSignature,
    pae,
    parse_bundle,
    parse_statement,
    verify_bundle,
)
from trustd.formats.cosign.errors import (
    CosignPayloadInvalid,
    CosignSignatureInvalid,
    MalformedCosignSignature,
)


def test_pae_matches_the_dsse_example() -> None:
    # DSSE protocol.md's worked example.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("t", b"") == b"DSSEv1 1 t 0 "
    assert pae("é", b"x") == b"DSSEv1 2 \xc3\xa9 1 x"


def test_signature_over_payload_alone_is_refused() -> None:
    signer = f.ecdsa_signer()
    payload = f.statement()
    candidate = f.bundle(signer, payload, signature=signer.sign(payload))
    with pytest.raises(CosignSignatureInvalid):
        verify_bundle(candidate, f.DIGEST, [signer.public])


def test_signature_under_another_payload_type_is_refused() -> None:
    # Signed as JSON, relabelled in-toto: PAE binds the type, so the signature breaks.
    signer = f.ecdsa_signer()
    payload = f.statement()
    signature = signer.sign(f.pae("application/json", payload))
    candidate = f.bundle(signer, payload, signature=signature)
    with pytest.raises(CosignSignatureInvalid):
        verify_bundle(candidate, f.DIGEST, [signer.public])


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    ],
)
def test_bundle_versions_accepted(media_type: str) -> None:
    signer = f.ecdsa_signer()
    candidate = f.bundle(signer, media_type=media_type)
    assert verify_bundle(candidate, f.DIGEST, [signer.public]).bundle.media_type == media_type


def test_url_safe_unpadded_base64_is_read() -> None:
    signer = f.ecdsa_signer()
    document = f.bundle_json(signer)
    envelope = document["dsseEnvelope"]
    for holder, key in ((envelope, "payload"), (envelope["signatures"][0], "sig")):
        raw = base64.b64decode(holder[key])
        holder[key] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    verify_bundle(f.bundle(None, document=document), f.DIGEST, [signer.public])


def test_layer_media_type_must_be_a_bundle() -> None:
    signer = f.ecdsa_signer()
    good = f.bundle(signer)
    candidate = BundleSignature(good.data, "application/vnd.in-toto+json", "x")
    with pytest.raises(MalformedCosignSignature, match="not a Sigstore bundle"):
        verify_bundle(candidate, f.DIGEST, [signer.public])


def _change(document: dict[str, Any], change: str) -> None:
    material = document["verificationMaterial"]
    envelope = document["dsseEnvelope"]
    if change == "unknown-top":
        document["extra"] = 1
    elif change == "media-type":
        document["mediaType"] = "application/json"
    elif change == "no-material":
        del document["verificationMaterial"]
    elif change == "two-materials":
        material["certificate"] = {"rawBytes": "AAAA"}
    elif change == "no-key-material":
        del material["publicKey"]
    elif change == "unknown-material":
        material["keys"] = []
    elif change == "tlog-not-list":
        material["tlogEntries"] = {}
    elif change == "both-contents":
        document["messageSignature"] = {"signature": "AAAA"}
    elif change == "no-content":
        del document["dsseEnvelope"]
    elif change == "two-signatures":
        envelope["signatures"].append(dict(envelope["signatures"][0]))
    elif change == "no-signatures":
        envelope["signatures"] = []
    elif change == "sig-not-base64":
        envelope["signatures"][0]["sig"] = "not base64!"
    elif change == "payload-not-base64":
        envelope["payload"] = "%%%"
    elif change == "payload-bad-padding":
        envelope["payload"] = envelope["payload"].rstrip("=") + "==="
    elif change == "unknown-envelope":
        envelope["extensions"] = []
    elif change == "payload-type-number":
        envelope["payloadType"] = 1
    elif change == "hint-mismatch":
        envelope["signatures"][0]["keyid"] = "other"
    elif change == "hint-number":
        material["publicKey"]["hint"] = 5
    else:
        raise AssertionError(change)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("unknown-top", "unknown field(s) 'extra'"),
        ("media-type", "not a Sigstore bundle version"),
        ("no-material", "has no 'verificationMaterial'"),
        ("two-materials", "exactly one of publicKey"),
        ("no-key-material", "exactly one of publicKey"),
        ("unknown-material", "unknown field(s) 'keys'"),
        ("tlog-not-list", "must be a JSON array"),
        ("both-contents", "exactly one of dsseEnvelope and messageSignature"),
        ("no-content", "exactly one of dsseEnvelope and messageSignature"),
        ("two-signatures", "has 2 signatures"),
        ("no-signatures", "has 0 signatures"),
        ("sig-not-base64", "is not base64"),
        ("payload-not-base64", "is not base64"),
        ("payload-bad-padding", "not base64"),
        ("unknown-envelope", "unknown field(s) 'extensions'"),
        ("payload-type-number", "must be a string"),
        ("hint-mismatch", "differs from the envelope's keyid"),
        ("hint-number", "must be a string"),
    ],
)
def test_malformed_bundles(change: str, fragment: str) -> None:
    document = f.bundle_json(f.ecdsa_signer())
    _change(document, change)
    with pytest.raises(MalformedCosignSignature) as caught:
        parse_bundle(json.dumps(document).encode(), "registry/app referrer sha256:12")
    assert fragment in str(caught.value)
    assert "registry/app referrer sha256:12" in str(caught.value)


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'{"mediaType":1,"mediaType":2}', b"\x80"])
def test_bundle_that_is_not_json(data: bytes) -> None:
    with pytest.raises(MalformedCosignSignature):
        parse_bundle(data)


def test_message_signature_bundle_is_not_an_image_signature() -> None:
    signer = f.ecdsa_signer()
    document = f.bundle_json(signer)
    del document["dsseEnvelope"]
    document["messageSignature"] = {
        "messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(b"x" * 32).decode()},
        "signature": base64.b64encode(signer.sign(b"blob")).decode(),
    }
    parsed = parse_bundle(json.dumps(document).encode())
    assert parsed.message_signature
    with pytest.raises(MalformedCosignSignature, match="signs a blob"):
        verify_bundle(f.bundle(None, document=document), f.DIGEST, [signer.public])


def test_certificate_chain_material_is_parsed_as_keyless() -> None:
    signer = f.ecdsa_signer()
    raw = f.certificate_raw_bytes(signer)
    document = f.bundle_json(
        signer, material={"x509CertificateChain": {"certificates": [{"rawBytes": raw}]}}
    )
    parsed = parse_bundle(json.dumps(document).encode())
    assert parsed.certificates == (base64.b64decode(raw),)
    assert parsed.key_hint == ""


def test_hint_names_a_configured_key_that_does_not_verify() -> None:
    signer = f.ecdsa_signer("team.pub")
    document = f.bundle_json(signer)
    document["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(
        f.ecdsa_signer().sign(b"x")
    ).decode()
    with pytest.raises(CosignSignatureInvalid, match="names configured key"):
        verify_bundle(f.bundle(None, document=document), f.DIGEST, [signer.public])
    with pytest.raises(CosignSignatureInvalid, match="which is not configured"):
        verify_bundle(f.bundle(None, document=document), f.DIGEST, [f.ecdsa_signer().public])


def test_statement_v01_with_names() -> None:
    payload = f.statement(
        statement_type="https://in-toto.io/Statement/v0.1",
        subjects=[{"name": "127.0.0.1:5000/app", "digest": {"sha256": "ab" * 32}}],
    )
    statement = parse_statement(payload)
    assert statement.subjects[0].name == "127.0.0.1:5000/app"
    assert statement.names_digest(f.DIGEST)
    assert not statement.names_digest(f.OTHER_DIGEST)


def test_statement_ignores_unknown_fields() -> None:
    document = json.loads(f.statement())
    document["x-extension"] = {"a": 1}
    document["subject"][0]["annotations"] = {"k": "v"}
    assert parse_statement(json.dumps(document).encode()).names_digest(f.DIGEST)


def _statement_change(change: str) -> bytes:
    document = json.loads(f.statement())
    if change == "type":
        document["_type"] = "https://in-toto.io/Statement/v2"
    elif change == "no-subject":
        del document["subject"]
    elif change == "empty-subject":
        document["subject"] = []
    elif change == "subject-without-digest":
        document["subject"] = [{"name": "x"}]
    elif change == "digest-number":
        document["subject"] = [{"digest": {"sha256": 1}}]
    elif change == "predicate-type-empty":
        document["predicateType"] = ""
    elif change == "predicate-list":
        document["predicate"] = []
    elif change == "uppercase-digest":
        document["subject"] = [{"digest": {"sha256": "AB" * 32}}]
        return json.dumps(document).encode()
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "change",
    [
        "type",
        "no-subject",
        "empty-subject",
        "subject-without-digest",
        "digest-number",
        "predicate-type-empty",
        "predicate-list",
    ],
)
def test_invalid_statements(change: str) -> None:
    with pytest.raises(CosignPayloadInvalid):
        parse_statement(_statement_change(change))


def test_uppercase_subject_digest_does_not_match() -> None:
    assert not parse_statement(_statement_change("uppercase-digest")).names_digest(f.DIGEST)


def test_statement_is_checked_only_after_the_signature() -> None:
    signer = f.ecdsa_signer()
    document = f.bundle_json(signer, b"not a statement")
    with pytest.raises(CosignSignatureInvalid):
        verify_bundle(f.bundle(None, document=document), f.DIGEST, [f.ecdsa_signer().public])
    with pytest.raises(CosignPayloadInvalid):
        verify_bundle(f.bundle(None, document=copy.deepcopy(document)), f.DIGEST, [signer.public])
