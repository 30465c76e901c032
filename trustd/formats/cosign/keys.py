"""Public keys as cosign uses them, and signature verification over exact bytes.

A key is a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo), the form of ``cosign.pub``. Its ID is the
hex SHA-256 of the DER SubjectPublicKeyInfo: the same digest cosign 3 puts, base64-encoded, in a
bundle's ``verificationMaterial.publicKey.hint``.

Which hash each key signs with (sigstore/sigstore ``pkg/signature``): cosign up to 2.5 signed with
SHA-256 for every ECDSA curve and RSA (PKCS #1 v1.5), and plain Ed25519. cosign 2.6 and later sign
with the algorithm registry's default per key: ECDSA P-256/SHA-256, P-384/SHA-384, P-521/SHA-512,
RSA PKCS #1 v1.5 with SHA-256, and Ed25519ph. ``cosign verify`` itself defaults to SHA-256 and
plain Ed25519 whatever the key. A signature is accepted here under any of the hashes one of those
versions signs with for the key's type; the choices cannot be confused with each other without
breaking the hash functions themselves.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from trustd.formats.cosign import _ed25519ph
from trustd.formats.cosign.errors import CosignKeyError

CryptoPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

MIN_RSA_BITS: Final = 2048
SHORT_ID_LENGTH: Final = 12

# Curve name -> (algorithm label, hashes cosign versions sign with, in the order to try).
_EC_CURVES: Final[dict[str, tuple[str, tuple[type[hashes.HashAlgorithm], ...]]]] = {
    "secp256r1": ("ecdsa-p256", (hashes.SHA256,)),
    "secp384r1": ("ecdsa-p384", (hashes.SHA256, hashes.SHA384)),
    "secp521r1": ("ecdsa-p521", (hashes.SHA256, hashes.SHA512)),
}


@dataclass(frozen=True)
class CosignPublicKey:
    """A configured public key: its ID, algorithm, DER SubjectPublicKeyInfo and origin."""

    key_id: str  # hex SHA-256 of ``spki``
    algorithm: str  # "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "rsa-<bits>", "ed25519"
    spki: bytes = field(repr=False)
    crypto_key: CryptoPublicKey = field(repr=False, compare=False)
    source: str = field(default="", compare=False)  # where it was configured, for messages

    @property
    def short_id(self) -> str:
        return self.key_id[:SHORT_ID_LENGTH]

    @property
    def hint(self) -> str:
        """The key hint cosign 3 writes into a bundle for this key."""
        return base64.b64encode(bytes.fromhex(self.key_id)).decode("ascii")

    def describe(self) -> str:
        return f"{self.short_id} ({self.source})" if self.source else self.short_id

    def verify(self, signature: bytes, message: bytes) -> str | None:
        """The scheme under which ``signature`` signs exactly ``message`` with this key, or None.

        ECDSA signatures are ASN.1 DER (what every cosign signer writes); RSA is PKCS #1 v1.5.
        """
        key = self.crypto_key
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                for hash_type in _EC_CURVES[key.curve.name][1]:
                    if _verify_ecdsa(key, signature, message, hash_type()):
                        return f"ecdsa-{hash_type.name}"
                return None
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
                return "rsa-pkcs1v15-sha256"
            try:
                key.verify(signature, message)
                return "ed25519"
            except InvalidSignature:
                raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                if _ed25519ph.verify_prehashed(raw, signature, message):
                    return "ed25519ph"
                return None
        except (InvalidSignature, ValueError):
            return None


def _verify_ecdsa(
    key: ec.EllipticCurvePublicKey,
    signature: bytes,
    message: bytes,
    hash_type: hashes.HashAlgorithm,
) -> bool:
    try:
        key.verify(signature, message, ec.ECDSA(hash_type))
    except (InvalidSignature, ValueError):
        return False
    return True


def key_id_for(spki: bytes) -> str:
    return hashlib.sha256(spki).hexdigest()


def public_key_from_pem(data: bytes, source: str) -> CosignPublicKey:
    """The one ``PUBLIC KEY`` PEM block in ``data``; CosignKeyError naming ``source`` otherwise."""
    blocks = data.count(b"-----BEGIN ")
    if blocks == 0:
        raise CosignKeyError(f"{source}: no PEM block (expected -----BEGIN PUBLIC KEY-----)")
    if blocks > 1:
        raise CosignKeyError(f"{source}: {blocks} PEM blocks; put one public key in each file")
    if b"-----BEGIN PUBLIC KEY-----" not in data:
        raise CosignKeyError(
            f"{source}: not a PUBLIC KEY PEM block (a certificate or a private key?); "
            "give the signer's public key as cosign writes it (cosign.pub)"
        )
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CosignKeyError(f"{source}: not a valid public key ({exc})") from None
    return _from_loaded(loaded, source)


def public_key_from_der(spki: bytes, source: str) -> CosignPublicKey:
    """A key from its DER SubjectPublicKeyInfo."""
    try:
        loaded = serialization.load_der_public_key(spki)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CosignKeyError(f"{source}: not a valid public key ({exc})") from None
    return _from_loaded(loaded, source)


def _from_loaded(loaded: object, source: str) -> CosignPublicKey:
    if isinstance(loaded, ec.EllipticCurvePublicKey):
        curve = _EC_CURVES.get(loaded.curve.name)
        if curve is None:
            raise CosignKeyError(
                f"{source}: ECDSA curve {loaded.curve.name} is not accepted (P-256, P-384, P-521)"
            )
        algorithm = curve[0]
        key: CryptoPublicKey = loaded
    elif isinstance(loaded, rsa.RSAPublicKey):
        if loaded.key_size < MIN_RSA_BITS:
            raise CosignKeyError(
                f"{source}: RSA key of {loaded.key_size} bits; at least {MIN_RSA_BITS} required"
            )
        algorithm = f"rsa-{loaded.key_size}"
        key = loaded
    elif isinstance(loaded, ed25519.Ed25519PublicKey):
        algorithm = "ed25519"
        key = loaded
    else:
        raise CosignKeyError(
            f"{source}: {type(loaded).__name__} keys are not accepted (ECDSA, RSA, Ed25519)"
        )
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CosignPublicKey(key_id_for(spki), algorithm, spki, key, source)
