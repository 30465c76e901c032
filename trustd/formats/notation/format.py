"""Notation behind the format interface: the image's Notation signatures, found in its registry
and verified under the node's Notation trust policy and trust store."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from trustd.errors import BadMetadata, RegistryUnavailable, TrustError
from trustd.formats.base import FormatName, SignatureQuery
from trustd.formats.notation.chain import issuer, subject
from trustd.formats.notation.envelope import MEDIA_TYPE_COSE, MEDIA_TYPE_JWS
from trustd.formats.notation.errors import NoVerifiedSignature
from trustd.formats.notation.stores import TrustStores
from trustd.formats.notation.trustpolicy import TrustPolicy
from trustd.formats.notation.truststore import NotationConfig
from trustd.formats.notation.verify import (
    SignatureEnvelope,
    parse_envelope,
    verify_any,
    verify_signature,
)
from trustd.formats.registry_format import RegistrySignatureFormat, Verified
from trustd.formats.verified_cache import VerifiedDigests
from trustd.net.descriptor import Descriptor, DescriptorError
from trustd.registry.client import RegistryClient
from trustd.registry.clients import RegistryClients

# A signature manifest says it is one by its artifactType (OCI 1.1), or, in the older form that
# registries without artifactType support store, by its config's media type.
SIGNATURE_ARTIFACT_TYPE = "application/vnd.cncf.notary.signature"
_ENVELOPE_TYPES = frozenset({MEDIA_TYPE_JWS, MEDIA_TYPE_COSE})
_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
# Signature manifests examined per image; more are ignored (and said so) rather than fetched.
MAX_SIGNATURES = 16


@dataclass(frozen=True)
class NotationSignature:
    """One signature manifest of an image, with its envelope, as the registry gave them."""

    manifest: Descriptor
    envelope: SignatureEnvelope


@dataclass(frozen=True)
class InspectedSignature:
    """One signature of an image as ``trustctl inspect`` lists it. What the envelope says
    (signer, times) is what it claims; ``verified`` says whether it verified under the trust
    policy, at which ``level``, and ``problem`` why not."""

    manifest: str  # the signature manifest's digest
    envelope_type: str
    verified: bool = False
    level: str = ""
    signing_scheme: str = ""
    signer: str = ""
    issuer: str = ""
    signing_time: datetime | None = None
    expiry: datetime | None = None  # the signer's io.cncf.notary.expiry
    certificate_expires: datetime | None = None  # the signing certificate's notAfter
    logged: tuple[str, ...] = ()  # failures the level only logs
    problem: str = ""


@dataclass(frozen=True)
class NotationInspection:
    """A manifest's Notation signatures, each verified on its own (``trustctl inspect``)."""

    repository: str
    name: str  # the tag, or the digest asked about
    target: Descriptor
    policy: str  # the trust policy statement that applies; "" when none does
    level: str
    signatures: tuple[InspectedSignature, ...]
    problems: tuple[str, ...] = ()  # why the policy or a listed signature could not be used


class NotationFormat(RegistrySignatureFormat):
    """Verifies Notation signatures with the trust policy and stores of one notation directory."""

    def __init__(
        self, config: NotationConfig, registries: RegistryClients, verified: VerifiedDigests
    ) -> None:
        super().__init__(registries, verified)
        self.config = config

    @property
    def name(self) -> FormatName:
        return FormatName.NOTATION

    def verify_manifest(
        self, client: RegistryClient, query: SignatureQuery, target: Descriptor, now: datetime
    ) -> Verified:
        repository = query.reference.repository
        # The policy first: a repository no statement covers is refused without a request.
        policy = self.config.policy.policy_for(repository)
        signatures, problems = discover(client, query.reference.path, target)
        if not signatures:
            why = f" ({'; '.join(problems[:3])})" if problems else ""
            raise NoVerifiedSignature(
                f"no Notation signature of {repository}@{target.digest} was found in "
                f"{client.endpoint.describe()}{why}"
            )
        envelopes = [s.envelope for s in signatures]
        result = verify_any(
            envelopes, target, policy, self.config.stores, now, repository=repository
        )
        if result.skipped:
            return Verified(
                signer="nobody (skipped)",
                notes=(f"trust policy {result.policy!r} skips verification",),
            )
        notes = result.logged
        if result.level != "strict":
            notes = (f"level {result.level}", *notes)
        return Verified(signer=result.signer_subject, notes=notes)

    def policy_for(self, repository: str) -> TrustPolicy:
        """The trust policy statement for ``repository``; NoApplicableTrustPolicy if none."""
        return self.config.policy.policy_for(repository)

    def inspect(self, query: SignatureQuery, now: datetime | None = None) -> NotationInspection:
        """Every Notation signature of the manifest ``query.reference`` names, found as
        ``judge`` finds them and each verified on its own under the trust policy. Raises for
        what stops the listing itself: an outage (RegistryUnavailable), a manifest that is not
        there (TrustError)."""
        now = now or datetime.now(UTC)
        reference = query.reference
        problems: list[str] = []
        policy: TrustPolicy | None
        try:
            policy = self.policy_for(reference.repository)
        except TrustError as error:
            policy, problems = None, [str(error)]
        with self.registries.client(reference.registry, query.credentials) as client:
            target = self._target(client, query)
            signatures, unusable = discover(client, reference.path, target)
        problems.extend(unusable)
        stores = self.config.stores
        inspected = tuple(_inspect_one(s, target, policy, stores, now) for s in signatures)
        return NotationInspection(
            repository=reference.repository,
            name=reference.tag if reference.digest is None and reference.tag else target.digest,
            target=target,
            policy=policy.name if policy is not None else "",
            level=str(policy.level) if policy is not None else "",
            signatures=inspected,
            problems=tuple(problems),
        )


def _inspect_one(
    signature: NotationSignature,
    target: Descriptor,
    policy: TrustPolicy | None,
    stores: TrustStores,
    now: datetime,
) -> InspectedSignature:
    envelope = signature.envelope
    listed = InspectedSignature(signature.manifest.digest, envelope.media_type)
    try:
        parsed = parse_envelope(envelope.data, envelope.media_type)
    except TrustError as error:
        return replace(listed, problem=str(error))
    leaf = parsed.signing_certificate
    attributes = parsed.attributes
    claimed = replace(
        listed,
        signing_scheme=attributes.signing_scheme.value,
        signer=subject(leaf),
        issuer=issuer(leaf),
        signing_time=attributes.authentic_signing_time or attributes.signing_time,
        expiry=attributes.expiry,
        certificate_expires=leaf.not_valid_after_utc,
    )
    if policy is None:
        return replace(claimed, problem="no trust policy statement applies")
    try:
        result = verify_signature(envelope.data, envelope.media_type, target, policy, stores, now)
    except TrustError as error:
        return replace(claimed, level=str(policy.level), problem=str(error))
    return replace(claimed, verified=True, level=result.level, logged=result.logged)


def discover(
    client: RegistryClient, path: str, target: Descriptor
) -> tuple[list[NotationSignature], list[str]]:
    """The Notation signatures whose subject is ``target``: referrers (the API, or the tag
    schema), each signature manifest fetched by digest and checked for its form; and why any
    listed one could not be used. A registry that cannot be reached raises (an outage)."""
    found: list[NotationSignature] = []
    problems: list[str] = []
    for listed in client.referrers(path, target.digest):
        if len(found) == MAX_SIGNATURES:
            problems.append(f"more than {MAX_SIGNATURES} signatures; the rest were not read")
            break
        if listed.artifact_type not in ("", SIGNATURE_ARTIFACT_TYPE):
            continue  # another kind of referrer (an SBOM, a cosign bundle)
        try:
            manifest, data = client.manifest(path, listed)
            layer = _signature_layer(data, manifest, target)
            if layer is None:
                continue
            blob = client.blob(path, layer)
        except RegistryUnavailable:
            raise
        except TrustError as error:
            # One unusable signature must not hide another that verifies.
            problems.append(str(error))
            continue
        source = f"signature manifest {manifest.digest}"
        found.append(NotationSignature(manifest, SignatureEnvelope(layer.media_type, blob, source)))
    return found, problems


def _signature_layer(data: bytes, manifest: Descriptor, target: Descriptor) -> Descriptor | None:
    """The envelope layer of a Notation signature manifest of ``target``; None for a manifest
    that is not one (listed as a referrer, but of another kind)."""
    where = f"signature manifest {manifest.digest}"
    try:
        document = json.loads(data)
    except ValueError as error:
        raise BadMetadata(f"{where} is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("mediaType", _MANIFEST_TYPE) != (
        _MANIFEST_TYPE
    ):
        return None
    try:
        config = Descriptor.from_json(document.get("config"))
        subject = Descriptor.from_json(document.get("subject"))
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise DescriptorError("layers is not an array")
        described = [Descriptor.from_json(layer) for layer in layers]
    except DescriptorError as error:
        raise BadMetadata(f"{where}: {error}") from None
    artifact_type = document.get("artifactType", "")
    if SIGNATURE_ARTIFACT_TYPE not in (artifact_type, config.media_type):
        return None
    if subject.digest != target.digest:
        # The index is a hint: a manifest listed for this image must say it signs this image.
        raise BadMetadata(f"{where} is listed for {target.digest} but signs {subject.digest}")
    if len(described) != 1 or described[0].media_type not in _ENVELOPE_TYPES:
        raise BadMetadata(
            f"{where} must have exactly one layer of type {MEDIA_TYPE_JWS} or {MEDIA_TYPE_COSE}"
        )
    return described[0]
