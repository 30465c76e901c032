"""The errors the Notation verifier raises, each a kind of trustd's own.

Integrity failures (a malformed or tampered envelope, a certificate chain that breaks the
signature specification) are ``BadSignature``; an envelope that does not chain to the trust
policy's stores or identities is ``UntrustedSigner``; time-related failures are
``ExpiredMetadata``; a payload naming another manifest is ``DigestNotSigned``. Trust policy and
trust store files that cannot be used are ``ConfigError``.
"""

from __future__ import annotations

from trustd.errors import (
    BadSignature,
    ConfigError,
    DigestNotSigned,
    ExpiredMetadata,
    TrustError,
)


class InvalidEnvelope(BadSignature):
    """A signature envelope that is not a well-formed Notary Project JWS or COSE_Sign1 envelope,
    or whose signature does not verify over its signed bytes."""


class UnsupportedCriticalHeader(InvalidEnvelope):
    """The envelope marks a header critical that trustd does not implement."""


class VerificationPluginRequired(UnsupportedCriticalHeader):
    """The envelope requires a Notation verification plugin; trustd runs no plugins."""


class CertificateChainInvalid(BadSignature):
    """The envelope's certificate chain breaks the Notary Project certificate requirements."""


class UntrustedSigner(TrustError):
    """The chain leads to no certificate in the policy's trust stores, or the signing
    certificate's subject is none of the policy's trusted identities."""


class CertificateNotValidAtTime(ExpiredMetadata):
    """A chain certificate is outside its validity period at the time that counts (now, or the
    authentic signing time)."""


class TimestampNotVerifiable(TrustError):
    """The trust policy asks for an RFC 3161 timestamp countersignature to be verified; trustd
    does not verify them."""


class SignatureExpired(ExpiredMetadata):
    """The signer's ``io.cncf.notary.expiry`` time has passed."""


class RevocationUnknown(TrustError):
    """A chain certificate names an OCSP responder or CRL distribution point; trustd contacts no
    revocation service, so its status cannot be checked."""


class SignatureForOtherDigest(DigestNotSigned):
    """A verified signature whose payload names another manifest (media type, digest or size)."""


class NoVerifiedSignature(TrustError):
    """None of an image's Notation signatures verified; the message says why for each."""

    def __init__(self, message: str, failures: tuple[TrustError, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures


class NoApplicableTrustPolicy(TrustError):
    """No statement of the Notation trust policy applies to the repository."""


class TrustPolicyError(ConfigError):
    """A Notation trust policy document that cannot be used."""


class TrustStoreError(ConfigError):
    """A Notation trust store directory or certificate file that cannot be used."""
