"""Test-side signer for cosign signatures: keys, classic simple-signing layers, DSSE bundles.

Written from the formats' descriptions (cosign SIGNATURE_SPEC, protobuf-specs bundle, DSSE) so the
verifier is checked against an independent construction, not against itself.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from tests.stack import cosign as stack_cosign
from tests.stack.cosign import SIGNATURE_TYPE
from trustd.formats.cosign.bundle import BundleSignature
from trustd.formats.cosign.classic import ClassicSignature
from trustd.formats.cosign.keys import CosignPublicKey, public_key_from_pem
from trustd.net.descriptor import Descriptor

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class Signer:
    private: PrivateKey
    name: str
    hash_name: str = "sha256"  # the ECDSA hash: "sha256", "sha384" or "sha512"

    @property
    def pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def public(self) -> CosignPublicKey:
        return public_key_from_pem(self.pem, self.name)

    def sign(self, message: bytes) -> bytes:
        key = self.private
        if isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}.get(
                self.hash_name, hashes.SHA512()
            )
            return key.sign(message, ec.ECDSA(algorithm))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return key.sign(message)


def ecdsa_signer(name: str = "p256.pub", curve: ec.EllipticCurve | None = None) -> Signer:
    return Signer(ec.generate_private_key(curve or ec.SECP256R1()), name)


def rsa_signer(name: str = "rsa.pub", bits: int = 2048) -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=bits), name)


def ed25519_signer(name: str = "ed25519.pub") -> Signer:
    return Signer(ed25519.Ed25519PrivateKey.generate(), name)


def simple_signing_payload(
    digest: str = DIGEST,
    reference: str = "127.0.0.1:5000/app",
    optional: Any = None,
    kind: str = SIGNATURE_TYPE,
) -> bytes:
    return stack_cosign.simple_signing_payload(reference, digest, optional=optional, kind=kind)


def classic(
    signer: Signer | None,
    payload: bytes | None = None,
    *,
    signature: bytes | None = None,
    annotations: dict[str, str] | None = None,
    media_type: str = SIMPLE_SIGNING,
    source: str = "app:sha256-ab.sig layer 0",
) -> ClassicSignature:
    """A classic layer; ``signature`` overrides what ``signer`` would make."""
    payload = simple_signing_payload() if payload is None else payload
    if signature is None:
        assert signer is not None
        signature = signer.sign(payload)
    notes = {"dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()}
    notes.update(annotations or {})
    layer = Descriptor(
        media_type, "sha256:" + hashlib.sha256(payload).hexdigest(), len(payload), "", notes
    )
    return ClassicSignature(layer, payload, source)


def statement(
    digest: str = DIGEST,
    predicate_type: str = "https://sigstore.dev/cosign/sign/v1",
    statement_type: str = "https://in-toto.io/Statement/v1",
    subjects: list[dict[str, Any]] | None = None,
) -> bytes:
    algorithm, _, value = digest.partition(":")
    document = {
        "_type": statement_type,
        "subject": subjects if subjects is not None else [{"digest": {algorithm: value}}],
        "predicateType": predicate_type,
        "predicate": {},
    }
    return json.dumps(document).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    # Written out from the DSSE protocol text, independently of the module under test.
    return b" ".join(
        [
            b"DSSEv1",
            str(len(payload_type.encode())).encode(),
            payload_type.encode(),
            str(len(payload)).encode(),
            payload,
        ]
    )


def bundle_json(
    signer: Signer | None,
    payload: bytes | None = None,
    *,
    payload_type: str = "application/vnd.in-toto+json",
    signature: bytes | None = None,
    material: dict[str, Any] | None = None,
    media_type: str = BUNDLE_V03,
) -> dict[str, Any]:
    payload = statement() if payload is None else payload
    if signature is None:
        assert signer is not None
        signature = signer.sign(pae(payload_type, payload))
    if material is None:
        assert signer is not None
        material = {"publicKey": {"hint": signer.public.hint}}
    return {
        "mediaType": media_type,
        "verificationMaterial": {**material, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": payload_type,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }


def bundle(
    signer: Signer | None,
    payload: bytes | None = None,
    *,
    document: dict[str, Any] | None = None,
    source: str = "app referrer sha256:ef",
    **kwargs: Any,
) -> BundleSignature:
    document = bundle_json(signer, payload, **kwargs) if document is None else document
    return BundleSignature(json.dumps(document).encode(), BUNDLE_V03, source)


def certificate_pem(signer: Signer) -> str:
    """A self-issued certificate for the signer's key, standing in for a Fulcio certificate."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ci@example.test")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.private.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(minutes=10))
        .sign(
            signer.private,
            None if isinstance(signer.private, ed25519.Ed25519PrivateKey) else hashes.SHA256(),
        )
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def certificate_raw_bytes(signer: Signer) -> str:
    """The certificate as a bundle's ``rawBytes`` (base64 DER)."""
    certificate = x509.load_pem_x509_certificate(certificate_pem(signer).encode())
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
