"""Why a cosign signature was not accepted.

Every class subclasses the shared ``trustd.errors`` hierarchy, so callers that only know
``BadSignature`` or ``DigestNotSigned`` map cosign denials like any other. Messages name the
signature (where it was found), the key ID and the digest, and say what was wrong.
"""

from __future__ import annotations

from trustd.errors import (
    BadMetadata,
    BadSignature,
    ConfigError,
    DigestNotSigned,
    ThresholdNotMet,
)


class CosignKeyError(ConfigError):
    """A configured public key that cannot be used (not PEM, wrong type, too weak)."""


class CosignPolicyError(ConfigError):
    """Verification parameters that cannot be right (no keys, an impossible threshold)."""


class MalformedCosignSignature(BadMetadata):
    """Signature material that is not well formed: bad base64, bad JSON, a missing annotation,
    a bundle of an unknown media type or shape. Nothing in it was trusted."""


class CosignSignatureInvalid(BadSignature):
    """A signature that no configured key verifies."""


class CosignPayloadInvalid(BadMetadata):
    """A payload whose signature verified but which is not a valid simple-signing payload or
    in-toto statement (wrong type string, unknown critical field, bad digest)."""


class UnacceptedPredicateType(BadSignature):
    """A verified in-toto statement whose predicate type is not one that means "signed"."""


class SignatureForOtherDigest(DigestNotSigned):
    """A verified signature whose payload names a different image digest than the one pulled."""


class KeylessNotSupported(BadSignature):
    """A signature identified only by a (Fulcio) certificate, or a policy asking for keyless
    identities: not verified here; only configured public keys count."""


class NoCosignSignatures(DigestNotSigned):
    """No cosign signature was found for the digest."""


class CosignThresholdNotMet(ThresholdNotMet):
    """Fewer distinct configured keys signed the digest than the policy's threshold."""


class RekorEntryInvalid(BadSignature):
    """A Rekor signed entry timestamp that is missing, does not verify against the configured
    Rekor key, or does not describe this signature."""


KEYLESS_MESSAGE = (
    "keyless (Fulcio) signatures are not supported yet; configure public keys for this image"
)
