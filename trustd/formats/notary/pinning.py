"""Trust pinning of a first root, and the x509 rules every notary root certificate must follow.

Notary semantics (``trustpinning/certs.go``): root role keys are x509 certificates whose common name
is the GUN, valid now, not SHA-1 signed, RSA of at least 2048 bits. A first root is accepted when
a threshold of its root signatures comes from pinned keys (certificate-form or canonical key IDs),
else from certificates that chain to the pinned CA, else by trust on first use if allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from trustd.errors import ExpiredMetadata, PinningViolation
from trustd.formats.notary.keys import MIN_RSA_BITS, PublicKey, canonical_key_id, short_key_id
from trustd.formats.notary.metadata import (
    Root,
    SignedEnvelope,
    file_label,
    format_time,
    parse_envelope,
    verify_threshold,
)

# notary gives a certificate's start one day of leeway for clock skew at the signer.
NOT_BEFORE_LEEWAY = timedelta(days=1)
_SHA1_SIGNATURES = frozenset(
    {
        SignatureAlgorithmOID.RSA_WITH_SHA1,
        SignatureAlgorithmOID.ECDSA_WITH_SHA1,
        SignatureAlgorithmOID.DSA_WITH_SHA1,
    }
)


@dataclass(frozen=True)
class TrustPinning:
    """How a GUN's first root is trusted: pinned root key IDs, a CA, or trust on first use."""

    pinned_key_ids: tuple[str, ...] = ()
    ca_certificates: tuple[x509.Certificate, ...] = ()
    allow_tofu: bool = True


def check_root_certificates(gun: str, root: Root, now: datetime) -> dict[str, PublicKey]:
    """The root role's keys, each checked as a notary root certificate for ``gun`` at ``now``."""
    where = file_label("root", gun)
    checked: dict[str, PublicKey] = {}
    for key_id in root.roles["root"].keyids:
        key = root.keys.get(key_id)
        label = f"root key {short_key_id(key_id)}"
        if key is None:
            raise PinningViolation(f"{where}: {label} is in the root role but not in keys")
        certificate = key.certificate
        if certificate is None:
            raise PinningViolation(
                f"{where}: {label} is a bare {key.key_type!r} key; notary root keys must be "
                "x509 certificates"
            )
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else ""
        if common_name != gun:
            raise PinningViolation(
                f"{where}: certificate of {label} is for {common_name!r}, not for {gun!r}"
            )
        if certificate.signature_algorithm_oid in _SHA1_SIGNATURES:
            raise PinningViolation(f"{where}: certificate of {label} is signed with SHA-1")
        public = certificate.public_key()
        if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
            raise PinningViolation(
                f"{where}: certificate of {label} has a {public.key_size}-bit RSA key "
                f"(minimum {MIN_RSA_BITS})"
            )
        not_before = certificate.not_valid_before_utc
        not_after = certificate.not_valid_after_utc
        if now + NOT_BEFORE_LEEWAY < not_before:
            raise ExpiredMetadata(
                f"{where}: certificate of {label} is not valid before {format_time(not_before)}"
            )
        if now > not_after:
            raise ExpiredMetadata(
                f"{where}: certificate of {label} expired at {format_time(not_after)}"
            )
        checked[key_id] = key
    return checked


def check_first_root(
    gun: str,
    root: Root,
    envelope: SignedEnvelope | bytes,
    now: datetime,
    pinning: TrustPinning,
) -> None:
    """PinningViolation (or ExpiredMetadata) unless a first ``root`` satisfies ``pinning``."""
    where = file_label("root", gun)
    if isinstance(envelope, bytes):
        envelope = parse_envelope(envelope, "root", gun)
    root_keys = check_root_certificates(gun, root, now)
    threshold = root.roles["root"].threshold
    if pinning.pinned_key_ids:
        pinned = set(pinning.pinned_key_ids)
        allowed = {
            key_id: key
            for key_id, key in root_keys.items()
            if key_id in pinned or canonical_key_id(key) in pinned
        }
        if not allowed:
            raise PinningViolation(
                f"{where}: none of its root keys "
                f"({', '.join(_both_ids(k) for k in root_keys.values())}) is pinned"
            )
        verify_threshold(envelope, allowed, threshold, f"{where} (pinned keys)", PinningViolation)
        return
    if pinning.ca_certificates:
        allowed = {}
        reasons = []
        for key_id, key in root_keys.items():
            problem = _chain_problem(key, pinning.ca_certificates, now)
            if problem is None:
                allowed[key_id] = key
            else:
                reasons.append(f"{short_key_id(key_id)}: {problem}")
        if not allowed:
            raise PinningViolation(
                f"{where}: no root certificate chains to the pinned CA ({'; '.join(reasons)})"
            )
        verify_threshold(
            envelope, allowed, threshold, f"{where} (CA-pinned keys)", PinningViolation
        )
        return
    if not pinning.allow_tofu:
        raise PinningViolation(
            f"no trust pinning configured for {gun} and trust-on-first-use is disabled"
        )


def _both_ids(key: PublicKey) -> str:
    canonical = canonical_key_id(key)
    return key.key_id if canonical == key.key_id else f"{key.key_id} / canonical {canonical}"


def _chain_problem(key: PublicKey, cas: tuple[x509.Certificate, ...], now: datetime) -> str | None:
    assert key.certificate is not None  # check_root_certificates admitted only certificates
    # Notary root certificates carry no subjectAltName and are not TLS certificates: check the
    # path (signatures, validity, CA basic constraints), not web PKI name rules.
    ca_policy = ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store(list(cas)))
        .time(now)
        .extension_policies(ca_policy=ca_policy, ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()
    )
    try:
        verifier.verify(key.certificate, list(key.intermediates))
    except VerificationError as error:
        return str(error)
    return None
