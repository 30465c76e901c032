"""Deciding whether an image digest is signed with cosign by enough configured keys.

The caller discovers candidates (the layers of the ``sha256-<hex>.sig`` manifest and the Sigstore
bundles among the digest's referrers), fetches their bytes by digest, and passes them here with
the digest actually pulled and the policy's keys and threshold. Every candidate is judged on its
own; one that fails never vetoes another. The digest is admitted when at least ``threshold``
distinct configured keys each made at least one valid signature over this very digest. Nothing
here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from trustd.errors import TrustError
from trustd.formats.cosign.bundle import (
    DEFAULT_PREDICATE_TYPES,
    BundleSignature,
    BundleVerified,
    verify_bundle,
)
from trustd.formats.cosign.classic import ClassicSignature, ClassicVerified, verify_classic
from trustd.formats.cosign.errors import (
    KEYLESS_MESSAGE,
    CosignPayloadInvalid,
    CosignPolicyError,
    CosignSignatureInvalid,
    CosignThresholdNotMet,
    KeylessNotSupported,
    MalformedCosignSignature,
    NoCosignSignatures,
    RekorEntryInvalid,
    SignatureForOtherDigest,
    UnacceptedPredicateType,
)
from trustd.formats.cosign.keys import CosignPublicKey
from trustd.net.descriptor import is_digest

Candidate = ClassicSignature | BundleSignature

FORM_SIMPLE_SIGNING: Final = "simplesigning"
FORM_BUNDLE: Final = "bundle"

# Candidates judged per call; a repository can be made to list any number, each costing a
# signature check per key.
MAX_CANDIDATES: Final = 100
# Reasons quoted in one denial message.
_MAX_REASONS: Final = 5

# When no key signed, the denial is named after the most telling failure.
_PRIORITY: Final[tuple[type[TrustError], ...]] = (
    SignatureForOtherDigest,
    UnacceptedPredicateType,
    CosignPayloadInvalid,
    RekorEntryInvalid,
    CosignSignatureInvalid,
    MalformedCosignSignature,
    KeylessNotSupported,
)


@dataclass(frozen=True)
class VerifiedSignature:
    """One signature that counted: its form, where it was found, and the keys that verified it."""

    form: str  # FORM_SIMPLE_SIGNING or FORM_BUNDLE
    source: str
    key_ids: tuple[str, ...]
    schemes: tuple[str, ...]  # per key: "ecdsa-sha256", "rsa-pkcs1v15-sha256", "ed25519ph", ...
    claimed_identity: str  # simple signing: critical.identity.docker-reference; bundle: ""
    predicate_type: str  # bundle: the statement's predicate type; simple signing: ""
    rekor_integrated_time: int | None = None


@dataclass(frozen=True)
class CosignVerification:
    """The digest is signed by ``key_ids`` (at least ``threshold`` distinct configured keys)."""

    manifest_digest: str
    threshold: int
    key_ids: tuple[str, ...]  # distinct configured keys that signed, in configuration order
    signatures: tuple[VerifiedSignature, ...]
    rejected: tuple[str, ...]  # why each other candidate did not count, for the audit log

    @property
    def claimed_identities(self) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys(s.claimed_identity for s in self.signatures if s.claimed_identity)
        )


def verify_cosign(
    signatures: Sequence[Candidate],
    manifest_digest: str,
    keys: Sequence[CosignPublicKey],
    threshold: int,
    now: datetime,
    *,
    rekor_public_keys: Sequence[CosignPublicKey] = (),
    accepted_predicate_types: frozenset[str] = DEFAULT_PREDICATE_TYPES,
) -> CosignVerification:
    """Whether ``manifest_digest`` is signed by ``threshold`` of ``keys``; raise why not.

    ``rekor_public_keys``: when given, a classic signature counts only with a Rekor signed entry
    timestamp from one of these logs (bundle log entries are not verified yet, so bundles then do
    not count). ``accepted_predicate_types``: the in-toto predicate types that mean "signed".
    """
    if not is_digest(manifest_digest):
        raise ValueError(f"{manifest_digest!r} is not a manifest digest")
    by_id: dict[str, CosignPublicKey] = {}
    for key in keys:
        by_id.setdefault(key.key_id, key)
    distinct = list(by_id.values())
    if not distinct:
        raise KeylessNotSupported(
            f"no cosign public keys are configured to verify {manifest_digest}; {KEYLESS_MESSAGE}"
        )
    if not 1 <= threshold <= len(distinct):
        raise CosignPolicyError(
            f"cosign threshold {threshold} cannot be met by {len(distinct)} distinct "
            "configured key(s); it must be between 1 and the number of keys"
        )
    if not signatures:
        raise NoCosignSignatures(
            f"no cosign signature for {manifest_digest}: neither a classic .sig signature nor "
            "a Sigstore bundle was found"
        )

    accepted: list[VerifiedSignature] = []
    failures: list[TrustError] = []
    for candidate in signatures[:MAX_CANDIDATES]:
        try:
            accepted.append(
                judge_signature(
                    candidate,
                    manifest_digest,
                    distinct,
                    now,
                    rekor_public_keys,
                    accepted_predicate_types,
                )
            )
        except TrustError as exc:
            failures.append(exc)
    skipped = len(signatures) - MAX_CANDIDATES
    rejected = [str(exc) for exc in failures]
    if skipped > 0:
        # First, so that a shortened denial message still says it.
        rejected.insert(0, f"{skipped} signature(s) not examined (limit {MAX_CANDIDATES})")

    signed_ids = {key_id for sig in accepted for key_id in sig.key_ids}
    key_ids = tuple(key.key_id for key in distinct if key.key_id in signed_ids)
    if len(key_ids) >= threshold:
        return CosignVerification(
            manifest_digest, threshold, key_ids, tuple(accepted), tuple(rejected)
        )
    raise _denial(manifest_digest, threshold, distinct, key_ids, failures, rejected)


def judge_signature(
    candidate: Candidate,
    manifest_digest: str,
    keys: Sequence[CosignPublicKey],
    now: datetime,
    rekor_public_keys: Sequence[CosignPublicKey] = (),
    accepted_predicate_types: frozenset[str] = DEFAULT_PREDICATE_TYPES,
) -> VerifiedSignature:
    """One candidate on its own: the configured keys that signed ``manifest_digest`` with it,
    or the TrustError saying why it does not count (``verify_cosign`` asks it of each)."""
    if isinstance(candidate, ClassicSignature):
        classic: ClassicVerified = verify_classic(
            candidate, manifest_digest, keys, now, rekor_public_keys
        )
        return VerifiedSignature(
            FORM_SIMPLE_SIGNING,
            candidate.describe(),
            tuple(key.key_id for key, _ in classic.keys),
            tuple(scheme for _, scheme in classic.keys),
            classic.payload.docker_reference,
            "",
            classic.rekor_integrated_time,
        )
    bundle: BundleVerified = verify_bundle(
        candidate, manifest_digest, keys, accepted_predicate_types
    )
    if rekor_public_keys:
        raise RekorEntryInvalid(
            f"{candidate.describe()}: signed by "
            f"{', '.join(key.describe() for key, _ in bundle.keys)}, but the transparency log "
            "entries of Sigstore bundles are not verified yet and the policy requires one"
        )
    return VerifiedSignature(
        FORM_BUNDLE,
        candidate.describe(),
        tuple(key.key_id for key, _ in bundle.keys),
        tuple(scheme for _, scheme in bundle.keys),
        "",
        bundle.statement.predicate_type,
    )


def _denial(
    manifest_digest: str,
    threshold: int,
    keys: Sequence[CosignPublicKey],
    signed: tuple[str, ...],
    failures: Sequence[TrustError],
    rejected: Sequence[str],
) -> TrustError:
    reasons = list(rejected[:_MAX_REASONS])
    if len(rejected) > _MAX_REASONS:
        reasons.append(f"and {len(rejected) - _MAX_REASONS} more")
    detail = "; ".join(reasons)
    if signed:
        by = ", ".join(key.describe() for key in keys if key.key_id in signed)
        missing = ", ".join(key.describe() for key in keys if key.key_id not in signed)
        message = (
            f"{manifest_digest} is signed by {len(signed)} of the {threshold} required cosign "
            f"keys (signed by {by}; not by {missing})"
        )
        return CosignThresholdNotMet(f"{message}: {detail}" if detail else message)
    message = f"no configured cosign key signed {manifest_digest}"
    if threshold > 1:
        message += f" ({threshold} keys required)"
    kind: type[TrustError] = CosignSignatureInvalid
    if failures:
        kind = min((type(exc) for exc in failures), key=_rank)
    return kind(f"{message}: {detail}")


def _rank(kind: type[TrustError]) -> int:
    for index, known in enumerate(_PRIORITY):
        if issubclass(kind, known):
            return index
    return len(_PRIORITY)
