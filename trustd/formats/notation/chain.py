"""The Notary Project's certificate requirements for a code signing chain, checked directly.

The chain is the envelope's own ordered list: leaf first, each certificate issued by the next,
ending in a self-signed root; nothing is searched for or reordered (web-PKI path building, as in
``cryptography.x509.verification``, is a different rule). A single self-signed certificate is a
chain of its own and must then meet the leaf requirements. Only basicConstraints, keyUsage and
extendedKeyUsage are evaluated; other extensions are ignored, as the specification requires.

Validity periods are not part of these rules: whether they count at the time of verification or
at an authentic signing time is the trust policy's decision (``certificates_not_valid_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    SignatureAlgorithmOID,
)

from trustd.formats.notation.algorithms import algorithm_for_key, describe_key
from trustd.formats.notation.errors import CertificateChainInvalid

# Signature algorithms a chain certificate may be signed with: no SHA-1, no MD5, no SHA-224.
_CERT_SIGNATURE_ALGORITHMS: Final = frozenset(
    {
        SignatureAlgorithmOID.RSA_WITH_SHA256,
        SignatureAlgorithmOID.RSA_WITH_SHA384,
        SignatureAlgorithmOID.RSA_WITH_SHA512,
        SignatureAlgorithmOID.RSASSA_PSS,
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
        SignatureAlgorithmOID.ED25519,
        SignatureAlgorithmOID.ED448,
    }
)
_PSS_HASHES: Final = frozenset({"sha256", "sha384", "sha512"})
_CA_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})
MIN_RSA_BITS: Final = 2048

# Extended key usages a code signing leaf must not have (signature specification; OCSP signing
# as notation-core-go also refuses it). Any other purpose, codeSigning included, is allowed.
FORBIDDEN_LEAF_EKUS: Final = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}

_E = TypeVar("_E", bound=x509.ExtensionType)


def load_certificate(der: bytes) -> x509.Certificate:
    """A DER certificate with every field the verifier reads parsed now; ValueError if any
    cannot be. (cryptography parses names, extensions and keys lazily, and some malformed
    encodings then raise other exceptions, KeyError among them.)"""
    try:
        cert = x509.load_der_x509_certificate(der)
        for name in (cert.subject, cert.issuer):
            name.rfc4514_string()
            for attribute in name:
                attribute.value  # noqa: B018 - parsed on access
        for extension in cert.extensions:
            extension.value  # noqa: B018 - parsed on access
        cert.public_key()
        cert.not_valid_before_utc  # noqa: B018 - parsed on access
        cert.not_valid_after_utc  # noqa: B018 - parsed on access
    except Exception as error:  # untrusted bytes: any parse failure is a refusal
        raise ValueError(str(error) or type(error).__name__) from None
    return cert


def subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def issuer(cert: x509.Certificate) -> str:
    return cert.issuer.rfc4514_string()


def validate_chain(chain: Sequence[x509.Certificate]) -> None:
    """Check the certificate requirements of the signature specification, signatures between
    the chain's certificates included; CertificateChainInvalid names the first broken rule."""
    if not chain:
        raise CertificateChainInvalid("the certificate chain is empty")
    for cert in chain:
        _check_signature_algorithm(cert)
    if len(chain) == 1:
        cert = chain[0]
        if not issued_by(cert, cert):
            raise CertificateChainInvalid(
                f"the only certificate of the chain, {subject(cert)!r}, is not self-signed; the "
                "chain must end with a root certificate"
            )
        _check_leaf(cert)
        return
    last = len(chain) - 1
    for index, cert in enumerate(chain):
        if index == last:
            if not issued_by(cert, cert):
                raise CertificateChainInvalid(
                    f"the last certificate of the chain, {subject(cert)!r}, is not a self-signed "
                    "root certificate"
                )
        else:
            if issued_by(cert, cert):
                role = "leaf" if index == 0 else "intermediate"
                raise CertificateChainInvalid(
                    f"the {role} certificate {subject(cert)!r} is self-signed; only the last "
                    "certificate of the chain may be"
                )
            parent = chain[index + 1]
            if not issued_by(cert, parent):
                raise CertificateChainInvalid(
                    f"certificate {subject(cert)!r} is not issued by the next certificate of "
                    f"the chain, {subject(parent)!r}"
                )
        if index == 0:
            _check_leaf(cert)
        else:
            _check_ca(cert, index - 1)


def certificates_not_valid_at(chain: Sequence[x509.Certificate], when: datetime) -> str | None:
    """Why a chain certificate is outside its validity period at ``when`` (aware), or None when
    every certificate is within it (both ends inclusive)."""
    for cert in chain:
        if when < cert.not_valid_before_utc:
            return (
                f"certificate {subject(cert)!r} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()}"
            )
        if when > cert.not_valid_after_utc:
            return (
                f"certificate {subject(cert)!r} expired at {cert.not_valid_after_utc.isoformat()}"
            )
    return None


def revocation_endpoints(cert: x509.Certificate) -> tuple[str, ...]:
    """The OCSP responders and CRL distribution points the certificate names (URIs)."""
    endpoints: list[str] = []
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
        for description in access.value:
            if description.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
                description.access_location, x509.UniformResourceIdentifier
            ):
                endpoints.append(f"OCSP {description.access_location.value}")
    except x509.ExtensionNotFound:
        pass
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        for point in points.value:
            for name in point.full_name or ():
                if isinstance(name, x509.UniformResourceIdentifier):
                    endpoints.append(f"CRL {name.value}")
    except x509.ExtensionNotFound:
        pass
    return tuple(endpoints)


def _extension(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None
    except ValueError as error:
        raise CertificateChainInvalid(
            f"certificate {subject(cert)!r} has malformed extensions ({error})"
        ) from None


def issued_by(cert: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent``'s subject is ``cert``'s issuer and its key signed ``cert``."""
    if cert.issuer != parent.subject:
        return False
    try:
        cert.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _check_signature_algorithm(cert: x509.Certificate) -> None:
    oid = cert.signature_algorithm_oid
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        digest = None
    hash_name = digest.name if digest is not None else "an unsupported hash"
    if oid not in _CERT_SIGNATURE_ALGORITHMS:
        weak = " (SHA-1 is not allowed)" if hash_name == "sha1" else ""
        raise CertificateChainInvalid(
            f"certificate {subject(cert)!r} is signed with algorithm {oid.dotted_string} over "
            f"{hash_name}{weak}; chain certificates must be signed with RSA, RSASSA-PSS or ECDSA "
            "over SHA-256/384/512 (or EdDSA)"
        )
    if oid == SignatureAlgorithmOID.RSASSA_PSS and hash_name not in _PSS_HASHES:
        raise CertificateChainInvalid(
            f"certificate {subject(cert)!r} is signed with RSASSA-PSS over {hash_name}; "
            "SHA-256/384/512 are required"
        )


def _public_key(cert: x509.Certificate) -> CertificatePublicKeyTypes:
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise CertificateChainInvalid(
            f"certificate {subject(cert)!r} has a public key that cannot be read ({error})"
        ) from None


def _check_leaf(cert: x509.Certificate) -> None:
    name = subject(cert)
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.value.ca:
        raise CertificateChainInvalid(
            f"the signing certificate {name!r} is a CA certificate (basicConstraints cA=true)"
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.critical:
        raise CertificateChainInvalid(
            f"the signing certificate {name!r} must have a critical keyUsage extension"
        )
    if not usage.value.digital_signature:
        raise CertificateChainInvalid(
            f"the signing certificate {name!r} lacks keyUsage digitalSignature"
        )
    extra = [flag for flag, present in _forbidden_leaf_usages(usage.value) if present]
    if extra:
        raise CertificateChainInvalid(
            f"the signing certificate {name!r} has keyUsage {', '.join(extra)}; only "
            "digitalSignature (and nonRepudiation) are allowed"
        )
    ekus = _extension(cert, x509.ExtendedKeyUsage)
    if ekus is not None:
        bad = [FORBIDDEN_LEAF_EKUS[oid] for oid in ekus.value if oid in FORBIDDEN_LEAF_EKUS]
        if bad:
            raise CertificateChainInvalid(
                f"the signing certificate {name!r} has extendedKeyUsage {', '.join(bad)}; a "
                "code signing certificate must not"
            )
    key = _public_key(cert)
    if algorithm_for_key(key) is None:
        raise CertificateChainInvalid(
            f"the signing certificate {name!r} has {describe_key(key)}; RSA 2048/3072/4096 or "
            "EC P-256/P-384/P-521 are required"
        )


def _forbidden_leaf_usages(usage: x509.KeyUsage) -> list[tuple[str, bool]]:
    agreement = usage.key_agreement
    return [
        ("keyEncipherment", usage.key_encipherment),
        ("dataEncipherment", usage.data_encipherment),
        ("keyAgreement", agreement),
        ("keyCertSign", usage.key_cert_sign),
        ("cRLSign", usage.crl_sign),
        # cryptography only answers these two when keyAgreement is set.
        ("encipherOnly", agreement and usage.encipher_only),
        ("decipherOnly", agreement and usage.decipher_only),
    ]


def _check_ca(cert: x509.Certificate, below: int) -> None:
    """A CA certificate with ``below`` CA certificates between it and the leaf."""
    name = subject(cert)
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.critical or not constraints.value.ca:
        raise CertificateChainInvalid(
            f"CA certificate {name!r} must have a critical basicConstraints extension with cA=true"
        )
    path_length = constraints.value.path_length
    if path_length is not None and path_length < below:
        raise CertificateChainInvalid(
            f"CA certificate {name!r} allows {path_length} intermediate CA certificates below "
            f"it (pathLenConstraint), the chain has {below}"
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.critical:
        raise CertificateChainInvalid(
            f"CA certificate {name!r} must have a critical keyUsage extension"
        )
    if not usage.value.key_cert_sign:
        raise CertificateChainInvalid(f"CA certificate {name!r} lacks keyUsage keyCertSign")
    key = _public_key(cert)
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateChainInvalid(
                f"CA certificate {name!r} has an RSA {key.key_size}-bit key; at least "
                f"{MIN_RSA_BITS} bits are required"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CA_CURVES:
            raise CertificateChainInvalid(
                f"CA certificate {name!r} has {describe_key(key)}; EC keys must be on "
                "P-256, P-384 or P-521"
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise CertificateChainInvalid(f"CA certificate {name!r} has an unsupported key type")
