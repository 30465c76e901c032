"""Public keys of every notary key type, their key IDs, and signature verification.

Key IDs follow notary: the hex SHA-256 of the canonical JSON of
``{"keytype": T, "keyval": {"private": null, "public": base64(public bytes)}}``. For x509 key types
the public bytes are a PEM certificate (chain), so the ID names the certificate; the *canonical*
ID (notary's ``utils.CanonicalKeyID``, the name of the CLI's private key file) is the ID of the
certificate's bare public key as an ``ecdsa``/``rsa`` key.

Signature methods are those of notary's verifier map (``tuf/signed/verifiers.go``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from trustd.errors import BadMetadata, BadSignature, UnsupportedKey
from trustd.formats.notary.canonical import encode_canonical

ECDSA: Final = "ecdsa"
ECDSA_X509: Final = "ecdsa-x509"
RSA: Final = "rsa"
RSA_X509: Final = "rsa-x509"
ED25519: Final = "ed25519"
KEY_TYPES: Final = (ECDSA, ECDSA_X509, RSA, RSA_X509, ED25519)
X509_KEY_TYPES: Final = (ECDSA_X509, RSA_X509)

METHOD_ECDSA: Final = "ecdsa"
METHOD_EDDSA: Final = "eddsa"
METHOD_RSAPSS: Final = "rsapss"
METHOD_RSAPKCS1V15: Final = "rsapkcs1v15"
# Notary accepts this name for RSA-PSS over an "rsa" key (legacy PyCrypto signers).
METHOD_PYCRYPTO_PSS: Final = "pycrypto-pkcs#1 pss"

# Which key types each method may be used with (notary's verifiers reject every other pairing).
_METHOD_KEY_TYPES: Final[dict[str, tuple[str, ...]]] = {
    METHOD_ECDSA: (ECDSA, ECDSA_X509),
    METHOD_EDDSA: (ED25519,),
    METHOD_RSAPSS: (RSA, RSA_X509),
    METHOD_RSAPKCS1V15: (RSA, RSA_X509),
    METHOD_PYCRYPTO_PSS: (RSA,),
}
SIGNATURE_METHODS: Final = tuple(_METHOD_KEY_TYPES)

MIN_RSA_BITS: Final = 2048
_ED25519_KEY_SIZE: Final = 32
_ED25519_SIGNATURE_SIZE: Final = 64

CryptoPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class PublicKey:
    """One key as a TUF/notary metadata file lists it."""

    key_id: str
    key_type: str
    public: bytes  # keyval.public, base64-decoded
    crypto_key: CryptoPublicKey = field(repr=False, compare=False)
    certificate: x509.Certificate | None = field(default=None, repr=False, compare=False)
    # CA certificates that came in the same PEM as the leaf (intermediates for pinning to a CA).
    intermediates: tuple[x509.Certificate, ...] = field(default=(), repr=False, compare=False)

    @property
    def short_id(self) -> str:
        return short_key_id(self.key_id)


def short_key_id(key_id: str) -> str:
    return f"{key_id[:8]}…"


def key_id(key_type: str, public_b64: str) -> str:
    """The key ID notary computes for a ``key_type`` key whose keyval.public is ``public_b64``."""
    public = _decode_base64(public_b64, "key")
    return _key_id_of_bytes(key_type, public)


def _key_id_of_bytes(key_type: str, public: bytes) -> str:
    # Go marshals the []byte as standard base64 whatever form the file used.
    document = {
        "keytype": key_type,
        "keyval": {"private": None, "public": base64.b64encode(public).decode("ascii")},
    }
    return hashlib.sha256(encode_canonical(document)).hexdigest()


def canonical_key_id(key: PublicKey) -> str:
    """notary's CanonicalKeyID: for x509 keys, the ID of the certificate's bare public key."""
    if key.key_type not in X509_KEY_TYPES:
        return key.key_id
    bare_type = ECDSA if key.key_type == ECDSA_X509 else RSA
    der = key.crypto_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _key_id_of_bytes(bare_type, der)


def load_public_key(key_type: str, public_b64: str, declared_id: str | None = None) -> PublicKey:
    """Parse a key of ``key_type``; BadMetadata if malformed, UnsupportedKey for unknown types.

    ``declared_id`` is the ID the metadata files the key under; it must match the key's content.
    """
    label = f"key {short_key_id(declared_id)}" if declared_id else "key"
    if key_type not in KEY_TYPES:
        raise UnsupportedKey(
            f"{label} has unsupported key type {key_type!r} (supported: {', '.join(KEY_TYPES)})"
        )
    public = _decode_base64(public_b64, label)
    computed = _key_id_of_bytes(key_type, public)
    if declared_id is not None and declared_id != computed:
        raise BadMetadata(
            f"key ID {declared_id} does not match the key's content (computed {computed})"
        )
    certificate: x509.Certificate | None = None
    intermediates: tuple[x509.Certificate, ...] = ()
    if key_type in X509_KEY_TYPES:
        certificate, intermediates = _load_certificates(public, label)
        crypto_key = certificate.public_key()
    elif key_type == ED25519:
        if len(public) != _ED25519_KEY_SIZE:
            raise BadMetadata(
                f"{label}: ed25519 public key must be {_ED25519_KEY_SIZE} bytes, not {len(public)}"
            )
        crypto_key = ed25519.Ed25519PublicKey.from_public_bytes(public)
    else:
        crypto_key = _load_spki(public, label)
    checked = _check_key_matches_type(crypto_key, key_type, label)
    return PublicKey(computed, key_type, public, checked, certificate, intermediates)


def _decode_base64(value: str, label: str) -> bytes:
    if not isinstance(value, str):
        raise BadMetadata(f"{label}: keyval.public is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadMetadata(f"{label}: keyval.public is not valid base64 ({error})") from None


def _load_spki(public: bytes, label: str) -> CryptoPublicKey:
    try:
        if public.lstrip().startswith(b"-----BEGIN"):
            loaded = serialization.load_pem_public_key(public)
        else:
            loaded = serialization.load_der_public_key(public)
    except (ValueError, TypeError) as error:
        raise BadMetadata(f"{label}: public key cannot be parsed ({error})") from None
    if not isinstance(loaded, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise BadMetadata(f"{label}: public key is a {type(loaded).__name__}")
    return loaded


def _load_certificates(
    public: bytes, label: str
) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    try:
        certificates = x509.load_pem_x509_certificates(public)
    except ValueError as error:
        raise BadMetadata(f"{label}: certificate cannot be parsed ({error})") from None
    if not certificates:
        raise BadMetadata(f"{label}: keyval.public holds no certificate")
    # The leaf comes first, as notary writes it; what follows are intermediates for CA pinning.
    return certificates[0], tuple(certificates[1:])


def _check_key_matches_type(
    crypto_key: object, key_type: str, label: str
) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey:
    """``crypto_key`` as the kind ``key_type`` names; BadMetadata if it is another kind."""
    if key_type in (ECDSA, ECDSA_X509):
        if isinstance(crypto_key, ec.EllipticCurvePublicKey):
            return crypto_key
    elif key_type in (RSA, RSA_X509):
        if isinstance(crypto_key, rsa.RSAPublicKey):
            return crypto_key
    elif isinstance(crypto_key, ed25519.Ed25519PublicKey):
        return crypto_key
    raise BadMetadata(
        f"{label}: key type {key_type!r} but the key material is a {type(crypto_key).__name__}"
    )


def verify_signature(key: PublicKey, method: str, signature: bytes, message: bytes) -> None:
    """Verify ``signature`` over ``message``; BadSignature / UnsupportedKey with the reason."""
    method = method.lower()  # notary lower-cases the method when it reads a signature
    allowed = _METHOD_KEY_TYPES.get(method)
    if allowed is None:
        raise UnsupportedKey(
            f"signature method {method!r} is not supported "
            f"(supported: {', '.join(SIGNATURE_METHODS)})"
        )
    if key.key_type not in allowed:
        raise BadSignature(f"signature method {method!r} does not match key type {key.key_type!r}")
    crypto_key = key.crypto_key
    try:
        if isinstance(crypto_key, ec.EllipticCurvePublicKey):
            _verify_ecdsa(crypto_key, signature, message)
        elif isinstance(crypto_key, ed25519.Ed25519PublicKey):
            if len(signature) != _ED25519_SIGNATURE_SIZE:
                raise BadSignature(
                    f"ed25519 signature must be {_ED25519_SIGNATURE_SIZE} bytes, "
                    f"not {len(signature)}"
                )
            crypto_key.verify(signature, message)
        else:
            _verify_rsa(crypto_key, method, signature, message)
    except InvalidSignature:
        raise BadSignature("bad signature") from None


def _verify_ecdsa(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> None:
    # Notary signs raw r||s, each the curve's byte size (not ASN.1 DER).
    half = (key.curve.key_size + 7) // 8
    if len(signature) != 2 * half:
        raise BadSignature(
            f"ecdsa signature on {key.curve.name} must be {2 * half} bytes (r||s), "
            f"not {len(signature)}"
        )
    r = int.from_bytes(signature[:half], "big")
    s = int.from_bytes(signature[half:], "big")
    key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))


def _verify_rsa(key: rsa.RSAPublicKey, method: str, signature: bytes, message: bytes) -> None:
    if key.key_size < MIN_RSA_BITS:
        raise BadSignature(
            f"RSA key of {key.key_size} bits is below the {MIN_RSA_BITS}-bit minimum"
        )
    if len(signature) < MIN_RSA_BITS // 8:
        raise BadSignature(f"RSA signature of {len(signature)} bytes is too short")
    if method == METHOD_RSAPKCS1V15:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        return
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
    key.verify(signature, message, pss, hashes.SHA256())
