"""Builds validly signed notary metadata in notary's exact formats, for attack tests.

Keys are generated in the test; files are JSON with a canonically signed ``signed`` object, so an
attack is "a valid signature on bad metadata" unless the test breaks the signature on purpose.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from trustd.formats.notary.canonical import encode_canonical
from trustd.formats.notary.keys import key_id

GUN = "registry.example.com/team/app"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds, as notary writes


@dataclass
class TestKey:
    key_type: str
    private: PrivateKey
    public_b64: str
    method: str

    @property
    def key_id(self) -> str:
        return key_id(self.key_type, self.public_b64)

    def entry(self) -> dict[str, Any]:
        return {"keytype": self.key_type, "keyval": {"private": None, "public": self.public_b64}}

    def sign(self, message: bytes) -> bytes:
        key = self.private
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
            half = (key.curve.key_size + 7) // 8
            return r.to_bytes(half, "big") + s.to_bytes(half, "big")
        if self.method == "rsapkcs1v15":
            return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return key.sign(message, pss, hashes.SHA256())


def _spki(private: PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ecdsa_key() -> TestKey:
    private = ec.generate_private_key(ec.SECP256R1())
    return TestKey("ecdsa", private, base64.b64encode(_spki(private)).decode(), "ecdsa")


def ed25519_key() -> TestKey:
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return TestKey("ed25519", private, base64.b64encode(raw).decode(), "eddsa")


def rsa_key(method: str = "rsapss", bits: int = 2048) -> TestKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return TestKey("rsa", private, base64.b64encode(_spki(private)).decode(), method)


def certificate(
    private: PrivateKey,
    common_name: str,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    is_ca: bool = False,
    hash_algorithm: hashes.HashAlgorithm | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, private)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=30))
        .not_valid_after(not_after or NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, hash_algorithm or algorithm)


def x509_key(
    common_name: str = GUN,
    *,
    rsa_bits: int | None = None,
    chain: tuple[x509.Certificate, ...] = (),
    **certificate_options: Any,
) -> TestKey:
    """A root key as notary makes it: a certificate (CN = GUN) in keyval.public."""
    if rsa_bits:
        private: PrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        key_type, method = "rsa-x509", "rsapss"
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        key_type, method = "ecdsa-x509", "ecdsa"
    cert = certificate(private, common_name, **certificate_options)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, *chain))
    return TestKey(key_type, private, base64.b64encode(pem).decode(), method)


def envelope(signed: dict[str, Any], signers: list[TestKey]) -> bytes:
    message = encode_canonical(signed)
    signatures = [
        {"keyid": k.key_id, "method": k.method, "sig": base64.b64encode(k.sign(message)).decode()}
        for k in signers
    ]
    return json.dumps({"signed": signed, "signatures": signatures}).encode()


def file_meta(data: bytes) -> dict[str, Any]:
    return {
        "length": len(data),
        "hashes": {
            "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
            "sha512": base64.b64encode(hashlib.sha512(data).digest()).decode(),
        },
    }


@dataclass
class Repo:
    """A whole notary repository of test keys; each method returns a file's bytes."""

    root_keys: list[TestKey] = field(default_factory=lambda: [x509_key()])
    targets_key: TestKey = field(default_factory=ecdsa_key)
    snapshot_key: TestKey = field(default_factory=ed25519_key)
    timestamp_key: TestKey = field(default_factory=ed25519_key)
    root_threshold: int = 1

    def root_signed(self, version: int = 1, expires: datetime | None = None) -> dict[str, Any]:
        keys = {k.key_id: k.entry() for k in self.root_keys}
        for k in (self.targets_key, self.snapshot_key, self.timestamp_key):
            keys[k.key_id] = k.entry()
        return {
            "_type": "Root",
            "consistent_snapshot": False,
            "expires": rfc3339(expires or NOW + timedelta(days=3650)),
            "keys": keys,
            "roles": {
                "root": {
                    "keyids": [k.key_id for k in self.root_keys],
                    "threshold": self.root_threshold,
                },
                "targets": {"keyids": [self.targets_key.key_id], "threshold": 1},
                "snapshot": {"keyids": [self.snapshot_key.key_id], "threshold": 1},
                "timestamp": {"keyids": [self.timestamp_key.key_id], "threshold": 1},
            },
            "version": version,
        }

    def root(self, version: int = 1, signers: list[TestKey] | None = None, **kw: Any) -> bytes:
        return envelope(self.root_signed(version, **kw), signers or self.root_keys)

    def targets(
        self,
        targets: dict[str, bytes] | None = None,
        version: int = 1,
        expires: datetime | None = None,
        delegations: dict[str, Any] | None = None,
        signers: list[TestKey] | None = None,
        role_type: str = "Targets",
    ) -> bytes:
        signed = {
            "_type": role_type,
            "delegations": delegations or {"keys": {}, "roles": []},
            "expires": rfc3339(expires or NOW + timedelta(days=1095)),
            "targets": {name: file_meta(body) for name, body in (targets or {}).items()},
            "version": version,
        }
        return envelope(signed, signers or [self.targets_key])

    def snapshot(
        self,
        files: dict[str, bytes],
        version: int = 1,
        expires: datetime | None = None,
        signers: list[TestKey] | None = None,
    ) -> bytes:
        signed = {
            "_type": "Snapshot",
            "expires": rfc3339(expires or NOW + timedelta(days=1095)),
            "meta": {role: file_meta(data) for role, data in files.items()},
            "version": version,
        }
        return envelope(signed, signers or [self.snapshot_key])

    def timestamp(
        self,
        snapshot: bytes,
        version: int = 1,
        expires: datetime | None = None,
        signers: list[TestKey] | None = None,
    ) -> bytes:
        signed = {
            "_type": "Timestamp",
            "expires": rfc3339(expires or NOW + timedelta(days=14)),
            "meta": {"snapshot": file_meta(snapshot)},
            "version": version,
        }
        return envelope(signed, signers or [self.timestamp_key])


def delegation(
    name: str, keys: list[TestKey], paths: list[str], threshold: int = 1
) -> dict[str, Any]:
    return {
        "keys": {k.key_id: k.entry() for k in keys},
        "roles": [
            {
                "keyids": [k.key_id for k in keys],
                "name": name,
                "paths": paths,
                "threshold": threshold,
            }
        ],
    }
