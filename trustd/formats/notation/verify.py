"""The Notary Project verification workflow for one manifest's signatures, pure: no network, no
disk, no clock (``now`` is passed in).

Steps, per the trust store and trust policy specification: integrity (the envelope parses, its
signature verifies with the signing certificate's key, it marks critical only headers trustd
implements, its payload type is the Notary payload, its certificate chain meets the
specification's requirements), authenticity (a chain certificate is in a trust store of the type
the signing scheme names, and the signing certificate's subject is a trusted identity), expiry
(the signer's ``io.cncf.notary.expiry``), authentic timestamp (without a verified timestamp:
every chain certificate valid now; under ``notary.x509.signingAuthority``: valid at the
authentic signing time) and revocation. The trust policy's level makes each validation enforced
(a failure raises), logged (a failure is recorded in the result) or skipped. Integrity is always
enforced. Only then is the payload read, and its target must be the manifest being verified.

trustd contacts no revocation service and runs no verification plugins: a chain certificate
that names an OCSP responder or CRL distribution point has an unknown revocation status, which
fails where revocation is enforced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm

from trustd.errors import TrustError
from trustd.formats.notation import strictjson
from trustd.formats.notation.chain import (
    certificates_not_valid_at,
    issuer,
    revocation_endpoints,
    subject,
    validate_chain,
)
from trustd.formats.notation.cose import parse_cose
from trustd.formats.notation.envelope import (
    MEDIA_TYPE_COSE,
    MEDIA_TYPE_JWS,
    MEDIA_TYPE_PAYLOAD,
    Envelope,
    SigningScheme,
    check_critical_headers,
    verify_envelope_signature,
)
from trustd.formats.notation.errors import (
    CertificateNotValidAtTime,
    InvalidEnvelope,
    NoVerifiedSignature,
    RevocationUnknown,
    SignatureExpired,
    SignatureForOtherDigest,
    TimestampNotVerifiable,
    UntrustedSigner,
)
from trustd.formats.notation.jws import parse_jws
from trustd.formats.notation.stores import TrustStores
from trustd.formats.notation.trustpolicy import (
    Action,
    StoreType,
    TrustPolicy,
    Validation,
    VerifyTimestamp,
    subject_attributes,
)
from trustd.net.descriptor import Descriptor, DescriptorError

_PARSERS: Final[dict[str, Callable[[bytes], Envelope]]] = {
    MEDIA_TYPE_JWS: parse_jws,
    MEDIA_TYPE_COSE: parse_cose,
}
_STORE_FOR_SCHEME: Final = {
    SigningScheme.X509: StoreType.CA,
    SigningScheme.SIGNING_AUTHORITY: StoreType.SIGNING_AUTHORITY,
}
# verify_any's summary lists this many failures, each cut to this many characters.
MAX_LISTED_FAILURES: Final = 5
MAX_REASON_CHARS: Final = 400


@dataclass(frozen=True)
class Outcome:
    """One validation's result: passed, failed and logged, or skipped. (A failed enforced
    validation raises instead of being recorded.)"""

    validation: Validation
    action: Action
    failure: str | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None and self.action is not Action.SKIP

    def __str__(self) -> str:
        if self.action is Action.SKIP:
            return f"{self.validation.value}: skipped"
        if self.failure is None:
            return f"{self.validation.value}: passed"
        return f"{self.validation.value}: logged: {self.failure}"


@dataclass(frozen=True)
class NotationVerification:
    """What a verified (or, at level skip, unverified) Notation signature established."""

    policy: str
    level: str
    target: Descriptor
    skipped: bool = False
    envelope_media_type: str = ""
    signing_scheme: str = ""
    algorithm: str = ""
    signer_subject: str = ""
    issuer: str = ""
    signing_time: datetime | None = None
    authentic_signing_time: datetime | None = None
    expiry: datetime | None = None
    # The trust store ("ca:name") holding a chain certificate, when one does.
    trusted_by: str = ""
    signing_agent: str = ""
    outcomes: tuple[Outcome, ...] = ()

    @property
    def logged(self) -> tuple[str, ...]:
        """The validations that failed but were only logged, as ``<validation>: logged: why``."""
        return tuple(str(o) for o in self.outcomes if o.failure is not None)


@dataclass(frozen=True)
class SignatureEnvelope:
    """One discovered signature: its envelope bytes, their media type (the signature manifest's
    layer media type) and where it came from, for messages."""

    media_type: str
    data: bytes
    source: str = ""


def parse_envelope(data: bytes, media_type: str) -> Envelope:
    """The envelope of a signature layer of this media type; InvalidEnvelope if malformed."""
    parser = _PARSERS.get(media_type)
    if parser is None:
        raise InvalidEnvelope(
            f"signature media type {media_type!r} is not {MEDIA_TYPE_JWS} or {MEDIA_TYPE_COSE}"
        )
    try:
        return parser(data)
    except (ValueError, TypeError, OverflowError, UnsupportedAlgorithm) as error:
        # Input the parsers' own checks did not foresee still denies, never crashes.
        if isinstance(error, TrustError):
            raise
        raise InvalidEnvelope(f"signature envelope cannot be parsed ({error})") from None


def verify_signature(
    envelope_bytes: bytes,
    envelope_media_type: str,
    target: Descriptor,
    policy: TrustPolicy,
    stores: TrustStores,
    now: datetime,
) -> NotationVerification:
    """Verify one signature envelope of ``target`` (the manifest being admitted) under the trust
    policy statement that applies to its repository. Returns what was established; raises a
    TrustError for the first failure of an enforced validation, or a payload for another
    manifest."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if policy.level.skip:
        return NotationVerification(policy.name, str(policy.level), target, skipped=True)
    try:
        return _verify(envelope_bytes, envelope_media_type, target, policy, stores, now)
    except (ValueError, TypeError, KeyError, OverflowError, UnsupportedAlgorithm) as error:
        # Certificate content the checks did not foresee (cryptography parses some fields
        # lazily) still denies, never crashes.
        if isinstance(error, TrustError):
            raise
        raise InvalidEnvelope(f"signature cannot be verified ({error})") from None


def _verify(
    envelope_bytes: bytes,
    envelope_media_type: str,
    target: Descriptor,
    policy: TrustPolicy,
    stores: TrustStores,
    now: datetime,
) -> NotationVerification:
    run = _Run(policy, stores, now)

    # Integrity: always enforced.
    envelope = parse_envelope(envelope_bytes, envelope_media_type)
    verify_envelope_signature(envelope)
    check_critical_headers(envelope)
    attributes = envelope.attributes
    if attributes.content_type != MEDIA_TYPE_PAYLOAD:
        raise InvalidEnvelope(
            f"{envelope.format_name} signature: payload content type "
            f"{attributes.content_type!r} is not {MEDIA_TYPE_PAYLOAD}"
        )
    validate_chain(envelope.certificate_chain)
    run.outcomes.append(Outcome(Validation.INTEGRITY, Action.ENFORCE))

    trusted_by = _authenticity(run, envelope)
    _expiry(run, envelope)
    _authentic_timestamp(run, envelope)
    _revocation(run, envelope)

    # Only now, with the signature verified and trusted, is the payload read.
    _check_payload(envelope, target)
    leaf = envelope.signing_certificate
    return NotationVerification(
        policy=policy.name,
        level=str(policy.level),
        target=target,
        envelope_media_type=envelope.media_type,
        signing_scheme=attributes.signing_scheme.value,
        algorithm=attributes.algorithm.jws_name,
        signer_subject=subject(leaf),
        issuer=issuer(leaf),
        signing_time=attributes.signing_time,
        authentic_signing_time=attributes.authentic_signing_time,
        expiry=attributes.expiry,
        trusted_by=trusted_by,
        signing_agent=envelope.signing_agent or "",
        outcomes=tuple(run.outcomes),
    )


def verify_any(
    envelopes: Sequence[SignatureEnvelope],
    target: Descriptor,
    policy: TrustPolicy,
    stores: TrustStores,
    now: datetime,
    *,
    repository: str = "",
) -> NotationVerification:
    """The result for the first of a manifest's signatures that verifies (a manifest is
    verified when at least one of its signatures is); NoVerifiedSignature says why each
    failed, naming the manifest as ``repository@digest`` when ``repository`` is given."""
    if policy.level.skip:
        return NotationVerification(policy.name, str(policy.level), target, skipped=True)
    shown = f"{repository}@{target.digest}" if repository else target.digest
    if not envelopes:
        raise NoVerifiedSignature(
            f"{shown} has no Notation signature (trust policy {policy.name!r}, level "
            f"{policy.level})"
        )
    failures: list[TrustError] = []
    for envelope in envelopes:
        try:
            return verify_signature(envelope.data, envelope.media_type, target, policy, stores, now)
        except TrustError as error:
            failures.append(error)
    reasons = []
    for index, (envelope, failure) in enumerate(zip(envelopes, failures, strict=True)):
        if index == MAX_LISTED_FAILURES:
            reasons.append(f"and {len(failures) - index} more")
            break
        reason = str(failure)
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        label = envelope.source or f"signature {index + 1}"
        reasons.append(f"{label}: {reason}")
    count = "1 signature" if len(failures) == 1 else f"{len(failures)} signatures"
    raise NoVerifiedSignature(
        f"no Notation signature of {shown} verified ({count} tried): " + "; ".join(reasons),
        tuple(failures),
    )


class _Run:
    """The state of one verification: the policy's actions and the outcomes so far."""

    def __init__(self, policy: TrustPolicy, stores: TrustStores, now: datetime) -> None:
        self.policy = policy
        self.stores = stores
        self.now = now
        self.outcomes: list[Outcome] = []

    def action(self, validation: Validation) -> Action:
        return self.policy.level.action(validation)

    def passed(self, validation: Validation) -> None:
        self.outcomes.append(Outcome(validation, self.action(validation)))

    def failed(self, validation: Validation, error: type[TrustError], reason: str) -> None:
        """Raise when the validation is enforced; otherwise record the failure as logged."""
        action = self.action(validation)
        if action is Action.ENFORCE:
            raise error(
                f"{reason} (trust policy {self.policy.name!r}, level {self.policy.level}: "
                f"{validation.value} is enforced)"
            )
        self.outcomes.append(Outcome(validation, action, reason))


def _authenticity(run: _Run, envelope: Envelope) -> str:
    """Trust store and trusted identity checks; the store that vouched, or ""."""
    validation = Validation.AUTHENTICITY
    policy = run.policy
    scheme = envelope.attributes.signing_scheme
    kind = _STORE_FOR_SCHEME[scheme]
    refs = policy.stores_of(kind)
    trusted_by = ""
    if not refs:
        run.failed(
            validation,
            UntrustedSigner,
            f"the signature uses signing scheme {scheme.value}, which needs a "
            f"{kind.value} trust store, and the trust policy names none",
        )
    else:
        missing = [str(ref) for ref in refs if run.stores.get(ref) is None]
        for ref in refs:
            store = run.stores.get(ref)
            if store is not None and any(store.contains(c) for c in envelope.certificate_chain):
                trusted_by = str(ref)
                break
        if trusted_by:
            run.passed(validation)
        else:
            unloaded = f" (trust stores {', '.join(missing)} are not loaded)" if missing else ""
            run.failed(
                validation,
                UntrustedSigner,
                f"no certificate of the signature's chain ({_chain_names(envelope)}) is in the "
                f"trust stores {', '.join(str(ref) for ref in refs)}{unloaded}",
            )

    if policy.any_identity:
        return trusted_by
    leaf = envelope.signing_certificate
    if not policy.trusted_identities:
        run.failed(
            validation,
            UntrustedSigner,
            "the trust policy has no x509.subject trusted identity; its other identities "
            f"({', '.join(policy.other_identities)}) need a verification plugin, which trustd "
            "does not run",
        )
        return trusted_by
    try:
        attributes = subject_attributes(leaf.subject)
    except ValueError as error:
        run.failed(
            validation,
            UntrustedSigner,
            f"the signing certificate's subject {subject(leaf)!r} cannot be matched against "
            f"trusted identities: {error}",
        )
        return trusted_by
    if any(identity.matches(attributes) for identity in policy.trusted_identities):
        run.passed(validation)
    else:
        listed = "; ".join(repr(i.text) for i in policy.trusted_identities)
        run.failed(
            validation,
            UntrustedSigner,
            f"the signing certificate's subject {subject(leaf)!r} is none of the trusted "
            f"identities {listed}",
        )
    return trusted_by


def _expiry(run: _Run, envelope: Envelope) -> None:
    expiry = envelope.attributes.expiry
    if expiry is not None and run.now >= expiry:
        run.failed(
            Validation.EXPIRY,
            SignatureExpired,
            f"the signature expired at {expiry.isoformat()} (io.cncf.notary.expiry)",
        )
    else:
        run.passed(Validation.EXPIRY)


def _authentic_timestamp(run: _Run, envelope: Envelope) -> None:
    validation = Validation.AUTHENTIC_TIMESTAMP
    chain = envelope.certificate_chain
    attributes = envelope.attributes
    if attributes.signing_scheme is SigningScheme.SIGNING_AUTHORITY:
        when = attributes.authentic_signing_time
        assert when is not None  # the envelope parsers require it for this scheme
        problem = certificates_not_valid_at(chain, when)
        if problem:
            run.failed(
                validation,
                CertificateNotValidAtTime,
                f"{problem}, so it was not valid at the authentic signing time {when.isoformat()}",
            )
        else:
            run.passed(validation)
        return

    policy = run.policy
    timestamp_wanted = bool(policy.stores_of(StoreType.TSA)) and (
        policy.verify_timestamp is VerifyTimestamp.ALWAYS
        or any(run.now > cert.not_valid_after_utc for cert in chain)
    )
    if timestamp_wanted:
        # The policy makes the timestamp countersignature the evidence; its RFC 3161
        # verification is not implemented, so this fails rather than falling back.
        if envelope.timestamp_signature is None:
            reason = "the signature has no timestamp countersignature"
        else:
            reason = "trustd does not verify RFC 3161 timestamp countersignatures"
        run.failed(
            validation,
            TimestampNotVerifiable,
            f"the trust policy names a tsa trust store with verifyTimestamp "
            f"{policy.verify_timestamp.value}, which asks for the timestamp countersignature to "
            f"be verified, and {reason}; without a tsa trust store (or with verifyTimestamp "
            "afterCertExpiry while the chain is unexpired) trustd requires every chain "
            "certificate to be valid now",
        )
        return
    problem = certificates_not_valid_at(chain, run.now)
    if problem:
        run.failed(
            validation,
            CertificateNotValidAtTime,
            f"{problem}; without a verified timestamp every chain certificate must be valid at "
            "the time of verification",
        )
    else:
        run.passed(validation)


def _revocation(run: _Run, envelope: Envelope) -> None:
    validation = Validation.REVOCATION
    if run.action(validation) is Action.SKIP:
        run.outcomes.append(Outcome(validation, Action.SKIP))
        return
    # The root is never checked: only its issuer, itself, could revoke it.
    for cert in envelope.certificate_chain[:-1]:
        endpoints = revocation_endpoints(cert)
        if endpoints:
            run.failed(
                validation,
                RevocationUnknown,
                f"the revocation status of certificate {subject(cert)!r} cannot be checked: "
                f"it names {', '.join(endpoints)}, and trustd contacts no revocation service",
            )
            return
    run.passed(validation)


def _check_payload(envelope: Envelope, target: Descriptor) -> None:
    what = f"{envelope.format_name} signature"
    try:
        payload = strictjson.loads(envelope.payload)
    except strictjson.JsonError as error:
        raise InvalidEnvelope(f"{what}: the signed payload is not valid JSON ({error})") from None
    if not isinstance(payload, dict) or set(payload) != {"targetArtifact"}:
        raise InvalidEnvelope(
            f'{what}: the signed payload is not {{"targetArtifact": <descriptor>}}'
        )
    try:
        signed = Descriptor.from_json(payload["targetArtifact"])
    except DescriptorError as error:
        raise InvalidEnvelope(
            f"{what}: the signed payload's targetArtifact is not a descriptor ({error})"
        ) from None
    if not signed.same_content(target):
        raise SignatureForOtherDigest(
            f"the {what} is for {signed.media_type} {signed.digest} ({signed.size} bytes), "
            f"not for {target.media_type} {target.digest} ({target.size} bytes)"
        )


def _chain_names(envelope: Envelope) -> str:
    return " <- ".join(repr(subject(cert)) for cert in envelope.certificate_chain)
