"""The errors trustd reports.

Every message is written for the operator who reads it in ``kubectl describe pod`` or in the audit
log: it names the repository, the role or file, and what was wrong, and never contains credentials.

``TrustError`` covers every reason an image was not admitted. ``ConfigError`` and
``InvalidReference`` are about input, not trust, and are kept apart so callers can map them to
their own gRPC codes and exit statuses.
"""

from __future__ import annotations


class TrustdError(Exception):
    """Root of every error trustd raises on purpose."""


class InvalidReference(TrustdError, ValueError):
    """An image reference that cannot be parsed or normalised."""


class ConfigError(TrustdError):
    """A configuration file that cannot be used; the message names the file and the key."""


class TrustError(TrustdError):
    """An image could not be verified; the image is denied in enforce mode."""


# --- the repository or the tag has no trust data -------------------------------------------------


class NoTrustData(TrustError):
    """The Notary server has no trust data for the repository."""


class TagNotSigned(TrustError):
    """The repository is signed, but not this tag (in the roles the policy accepts)."""


class DigestNotSigned(TrustError):
    """A digest reference whose digest is not a signed target of the repository."""


class NoAcceptedSignature(TrustError):
    """A rule that accepts any of several signature formats found none that verified."""


class SignaturesDisagree(DigestNotSigned):
    """Formats a rule requires all of sign the reference as different digests."""


class FormatNotConfigured(TrustError):
    """A rule requires a signature format this node has no configuration for."""


# --- the trust data is there but cannot be trusted ------------------------------------------------


class BadMetadata(TrustError):
    """Metadata that is not well-formed Notary JSON (wrong type, missing field, bad encoding)."""


class BadSignature(TrustError):
    """A signature that does not verify, or uses a key or method the role does not allow."""


class ThresholdNotMet(BadSignature):
    """Fewer distinct valid signatures than the role's threshold."""


class UnsupportedKey(BadMetadata):
    """A key type or signature method trustd does not accept."""


class ExpiredMetadata(TrustError):
    """A role's metadata (or a root certificate) is past its expiry."""


class RollbackDetected(TrustError):
    """Metadata older than what this node has already trusted."""


class HashMismatch(TrustError):
    """A file whose length or hash differs from what the timestamp or snapshot says."""


class MetadataTooLarge(TrustError):
    """A download exceeded its size limit (protection against endless data)."""


class RootRotationInvalid(TrustError):
    """A new root that is not signed by both the trusted root's keys and its own."""


# A root key as operators meet it: (ID in root.json, notary's canonical ID of the bare key).
RootKeyIds = tuple[str, str]


class RootKeyChanged(RootRotationInvalid):
    """The server serves a well-formed root signed only by keys this node never trusted.

    What a repository that was deleted and re-created looks like (Portieris #64), and also what
    a forged root looks like: the node cannot tell them apart, so the message says both and
    names the keys, and the operator decides (``trustctl forget-root``).
    """

    def __init__(
        self,
        gun: str,
        detail: str,
        new_keys: tuple[RootKeyIds, ...],
        trusted_keys: tuple[RootKeyIds, ...],
    ) -> None:
        self.gun = gun
        self.new_keys = new_keys
        self.trusted_keys = trusted_keys
        same_key = {c for _, c in new_keys} == {c for _, c in trusted_keys}
        note = " (the same key in a new certificate)" if same_key else ""
        pins = " ".join(f"--pin {canonical}" for _, canonical in new_keys) or "--pin KEY_ID"
        super().__init__(
            f"{detail}; its root key is {_key_list(new_keys)}{note}, this node trusts "
            f"{_key_list(trusted_keys)}. If the repository was deleted and re-created and its "
            f"owner confirms the new key, run on this node: trustctl forget-root {gun} {pins} "
            "(without --pin: trust on first use again); otherwise someone is serving a root "
            "this node never trusted"
        )


def _key_list(keys: tuple[RootKeyIds, ...]) -> str:
    shown = [key if key == canon else f"{key} (canonical {canon})" for key, canon in keys]
    return ", ".join(shown) or "none"


class PinningViolation(TrustError):
    """A root that does not satisfy the configured trust pinning (pinned key IDs or CA)."""


class CacheCorrupt(TrustError):
    """Cached trust data that cannot be read back; it is never silently discarded."""


class DelegationViolation(TrustError):
    """A delegated role signed a target outside its allowed paths, or the delegation is invalid."""


# --- the trust data could not be fetched ----------------------------------------------------------


class SourceUnavailable(TrustError):
    """A source of signatures (a Notary server, a registry) could not be reached or answered
    with an unexpected error: reported to kubelet as ``RegistryUnavailable``."""


class NotaryUnavailable(SourceUnavailable):
    """The Notary server could not be reached or answered with an unexpected error."""


class RegistryUnavailable(SourceUnavailable):
    """The registry holding an image's signatures could not be reached or answered with an
    unexpected error."""


class AuthenticationFailed(NotaryUnavailable):
    """The Notary token service refused the supplied credentials."""


# --- how a denial is named to kubelet -------------------------------------------------------------

# kubelet (1.28+) turns an image-service error whose message starts with one of these into the
# pod's waiting reason of that name (cri-api pkg/errors); anything else is a generic ErrImagePull.
SIGNATURE_VALIDATION_FAILED = "SignatureValidationFailed"
REGISTRY_UNAVAILABLE = "RegistryUnavailable"


def kubernetes_reason(error: TrustdError | None) -> str:
    """The Kubernetes waiting reason a denial caused by ``error`` is reported under."""
    if isinstance(error, SourceUnavailable):
        return REGISTRY_UNAVAILABLE
    return SIGNATURE_VALIDATION_FAILED


def denial_message(error: TrustdError | None, reason: str) -> str:
    """The first line an operator sees for a denial: ``<Kubernetes reason>: trustd: <reason>``."""
    return f"{kubernetes_reason(error)}: trustd: {reason}"
