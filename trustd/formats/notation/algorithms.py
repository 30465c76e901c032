"""The six signature algorithms of the Notary Project signature specification, the key each one
belongs to, and verification of a signature made with one.

The signing certificate's key decides the algorithm (RSA 2048/3072/4096 bits: RSASSA-PSS with
SHA-256/384/512; EC P-256/P-384/P-521: ECDSA with SHA-256/384/512); an envelope's ``alg`` must
name exactly that algorithm, which rules out algorithm substitution. JWS and COSE carry ECDSA
signatures as the fixed-length concatenation r||s and RSASSA-PSS with a salt as long as the hash.
"""

from __future__ import annotations

import enum
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

RSA: Final = "RSA"
EC: Final = "EC"


class SignatureAlgorithm(enum.Enum):
    """(JWS name, COSE label, hash name, key type, key size in bits)."""

    PS256 = ("PS256", -37, "sha256", RSA, 2048)
    PS384 = ("PS384", -38, "sha384", RSA, 3072)
    PS512 = ("PS512", -39, "sha512", RSA, 4096)
    ES256 = ("ES256", -7, "sha256", EC, 256)
    ES384 = ("ES384", -35, "sha384", EC, 384)
    ES512 = ("ES512", -36, "sha512", EC, 521)

    @property
    def jws_name(self) -> str:
        return self.value[0]

    @property
    def cose_label(self) -> int:
        return self.value[1]

    @property
    def hash_name(self) -> str:
        return self.value[2]

    @property
    def key_type(self) -> str:
        return self.value[3]

    @property
    def key_size(self) -> int:
        return self.value[4]

    def hash(self) -> hashes.HashAlgorithm:
        return _HASHES[self.hash_name]()

    @property
    def key_description(self) -> str:
        if self.key_type == RSA:
            return f"an RSA {self.key_size}-bit key"
        return f"an EC {_CURVE_NAMES[self.key_size]} key"


_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_CURVE_NAMES: Final = {256: "P-256", 384: "P-384", 521: "P-521"}
_CURVES: Final[dict[str, int]] = {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}

BY_JWS_NAME: Final = {alg.jws_name: alg for alg in SignatureAlgorithm}
BY_COSE_LABEL: Final = {alg.cose_label: alg for alg in SignatureAlgorithm}


def describe_key(key: CertificatePublicKeyTypes) -> str:
    """A key as an operator reads it: ``an RSA 1024-bit key``, ``an EC secp256k1 key``."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA {key.key_size}-bit key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = _CURVES.get(key.curve.name)
        return f"an EC {_CURVE_NAMES[size] if size else key.curve.name} key"
    return f"a {type(key).__name__.removeprefix('_')} key"


def algorithm_for_key(key: CertificatePublicKeyTypes) -> SignatureAlgorithm | None:
    """The one algorithm a signing key of this type and size signs with; None when the
    specification allows no algorithm for it."""
    if isinstance(key, rsa.RSAPublicKey):
        key_type, size = RSA, key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_type, size = EC, _CURVES.get(key.curve.name, 0)
    else:
        return None
    for alg in SignatureAlgorithm:
        if alg.key_type == key_type and alg.key_size == size:
            return alg
    return None


def signature_valid(
    alg: SignatureAlgorithm, key: CertificatePublicKeyTypes, signature: bytes, signed: bytes
) -> bool:
    """Whether ``signature`` (JWS/COSE encoding) is ``alg``'s signature of ``signed`` by ``key``;
    the key must be the one ``alg`` belongs to."""
    if algorithm_for_key(key) is not alg:
        return False
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if len(signature) != (key.key_size + 7) // 8:
                return False
            pss = padding.PSS(mgf=padding.MGF1(alg.hash()), salt_length=alg.hash().digest_size)
            key.verify(signature, signed, pss, alg.hash())
            return True
        if isinstance(key, ec.EllipticCurvePublicKey):
            width = (alg.key_size + 7) // 8
            if len(signature) != 2 * width:
                return False
            r = int.from_bytes(signature[:width], "big")
            s = int.from_bytes(signature[width:], "big")
            if r == 0 or s == 0:
                return False
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(alg.hash()))
            return True
    except InvalidSignature:
        return False
    return False
