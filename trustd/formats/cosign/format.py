"""cosign behind the format interface: the image's cosign signatures, found in its registry
(the classic ``sha256-<hex>.sig`` tag; Sigstore bundles, and classic signature manifests cosign 2
pushes with ``--registry-referrers-mode=oci-1-1``, among its referrers) and verified with the
public keys the policy rule configures."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from trustd.errors import ConfigError, RegistryUnavailable, TrustError
from trustd.formats.base import FormatName, SignatureQuery
from trustd.formats.cosign.bundle import REFERRER_ARTIFACT_TYPE, BundleSignature
from trustd.formats.cosign.classic import OCI11_ARTIFACT_TYPE, ClassicSignature, signature_tag
from trustd.formats.cosign.errors import NoCosignSignatures
from trustd.formats.cosign.keys import CosignPublicKey
from trustd.formats.cosign.loader import load_public_key_files
from trustd.formats.cosign.manifests import (
    EMPTY_CONFIG_TYPE,
    bundle_manifest_layer,
    classic_referrer_layers,
    signature_manifest_layers,
)
from trustd.formats.cosign.verify import CosignVerification, judge_signature, verify_cosign
from trustd.formats.registry_format import RegistrySignatureFormat, Verified
from trustd.formats.verified_cache import VerifiedDigests
from trustd.net.descriptor import Descriptor
from trustd.registry.client import RegistryClient
from trustd.registry.clients import RegistryClients

# Signature candidates read per image (layers of the .sig manifest plus bundles).
MAX_CANDIDATES = 32
# Referrers that may be signatures: bundles (listed under their config's media type by some
# registries, see manifests.py) and classic signature manifests pushed as referrers.
_SIGNATURES_LISTED_AS = frozenset(
    {REFERRER_ARTIFACT_TYPE, EMPTY_CONFIG_TYPE, OCI11_ARTIFACT_TYPE, ""}
)

Candidate = ClassicSignature | BundleSignature

FORM_CLASSIC = "classic"  # a layer of the sha256-<hex>.sig manifest
FORM_BUNDLE = "bundle"  # a Sigstore bundle among the digest's referrers


@dataclass(frozen=True)
class ListedSignature:
    """One cosign signature found for a digest, judged on its own against the rule's keys."""

    form: str  # FORM_CLASSIC or FORM_BUNDLE
    source: str  # where it was found
    key_ids: tuple[str, ...]  # configured keys that signed this very digest with it
    problem: str = ""  # why it does not count; "" when it does


@dataclass(frozen=True)
class CosignListing:
    """Every cosign signature of one manifest, and the rule's verdict on them all."""

    repository: str
    digest: str
    endpoint: str  # the registry, as messages name it
    keys: tuple[CosignPublicKey, ...]
    threshold: int
    signatures: tuple[ListedSignature, ...]
    unreadable: tuple[str, ...]  # listed signatures that could not be read
    error: str  # why the digest is not signed under the rule; "" when it is


class CosignFormat(RegistrySignatureFormat):
    """Verifies cosign signatures against the keys of the rule that applies."""

    def __init__(self, registries: RegistryClients, verified: VerifiedDigests) -> None:
        super().__init__(registries, verified)
        self._keys = _KeyFiles()

    @property
    def name(self) -> FormatName:
        return FormatName.COSIGN

    def verify_manifest(
        self, client: RegistryClient, query: SignatureQuery, target: Descriptor, now: datetime
    ) -> Verified:
        settings = query.rule.cosign
        if settings is None:
            raise ConfigError(
                f"{query.rule.source} requires cosign signatures but configures no cosign keys"
            )
        keys = self._keys.load(settings.keys)
        rekor_keys = self._keys.load(settings.rekor_public_keys)
        path = query.reference.path
        # The .sig tag first: when its signatures meet the threshold, the referrers (one more
        # round trip) are not asked.
        candidates, problems = discover_classic(client, path, target)
        if candidates:
            try:
                result = verify_cosign(
                    candidates,
                    target.digest,
                    keys,
                    settings.threshold,
                    now,
                    rekor_public_keys=rekor_keys,
                )
            except TrustError:
                pass  # bundles among the referrers may make up for it
            else:
                return _verified(result, keys)
        referred, more_problems = discover_referrers(
            client, path, target, MAX_CANDIDATES - len(candidates)
        )
        candidates, problems = candidates + referred, problems + more_problems
        if not candidates:
            why = f" ({'; '.join(problems[:3])})" if problems else ""
            raise NoCosignSignatures(
                f"no cosign signature of {query.reference.repository}@{target.digest} was "
                f"found in {client.endpoint.describe()}{why}"
            )
        result = verify_cosign(
            candidates, target.digest, keys, settings.threshold, now, rekor_public_keys=rekor_keys
        )
        return _verified(result, keys)

    def list_signatures(self, query: SignatureQuery) -> CosignListing:
        """The cosign signatures of the manifest ``query.reference`` names, each judged on its
        own with the rule's keys (``trustctl inspect``). Raises what a registry outage or an
        unusable key file raises; nothing is remembered."""
        settings = query.rule.cosign
        keys = self._keys.load(settings.keys) if settings is not None else ()
        rekor_keys = self._keys.load(settings.rekor_public_keys) if settings is not None else ()
        threshold = settings.threshold if settings is not None else 1
        reference, now = query.reference, datetime.now(UTC)
        with self.registries.client(reference.registry, query.credentials) as client:
            target = self._target(client, query)
            candidates, problems = discover(client, reference.path, target)
            endpoint = client.endpoint.describe()
        listed = []
        for candidate in candidates:
            form = FORM_CLASSIC if isinstance(candidate, ClassicSignature) else FORM_BUNDLE
            where = candidate.describe()
            try:
                verified = judge_signature(candidate, target.digest, keys, now, rekor_keys)
            except TrustError as rejected:
                problem = str(rejected).removeprefix(f"{where}: ")
                listed.append(ListedSignature(form, where, (), problem))
            else:
                listed.append(ListedSignature(form, where, verified.key_ids))
        error = ""
        try:
            verify_cosign(
                candidates, target.digest, keys, threshold, now, rekor_public_keys=rekor_keys
            )
        except (TrustError, ConfigError) as failure:
            error = str(failure)
        return CosignListing(
            reference.repository,
            target.digest,
            endpoint,
            keys,
            threshold,
            tuple(listed),
            tuple(problems),
            error,
        )


def discover(
    client: RegistryClient, path: str, target: Descriptor
) -> tuple[list[Candidate], list[str]]:
    """Both storage forms of ``target``'s cosign signatures, and why any listed one could not be
    read. A registry that cannot be reached raises (an outage)."""
    classic, problems = discover_classic(client, path, target)
    referred, more_problems = discover_referrers(
        client, path, target, MAX_CANDIDATES - len(classic)
    )
    return classic + referred, problems + more_problems


def discover_classic(
    client: RegistryClient, path: str, target: Descriptor
) -> tuple[list[Candidate], list[str]]:
    """The classic signatures of ``target``: the layers of its ``sha256-<hex>.sig`` tag."""
    try:
        found = client.tag_manifest(path, signature_tag(target.digest))
        if found is None:
            return [], []
        descriptor, data = found
        where = f"signature manifest {descriptor.digest} (tag {signature_tag(target.digest)})"
        layers = signature_manifest_layers(data, where)
        return _classic(client, path, layers[:MAX_CANDIDATES], where), []
    except RegistryUnavailable:
        raise
    except TrustError as error:
        return [], [str(error)]


def discover_referrers(
    client: RegistryClient, path: str, target: Descriptor, room: int
) -> tuple[list[Candidate], list[str]]:
    """The signatures among ``target``'s referrers (Sigstore bundles, and classic signatures
    cosign 2 pushes as referrers), at most ``room`` of them."""
    candidates: list[Candidate] = []
    problems: list[str] = []
    for listed in client.referrers(path, target.digest):
        if len(candidates) >= room:
            problems.append(f"more than {MAX_CANDIDATES} signatures; the rest were not read")
            break
        if listed.artifact_type not in _SIGNATURES_LISTED_AS:
            continue
        try:
            manifest, data = client.manifest(path, listed)
            where = f"bundle referrer {manifest.digest}"
            bundle_layer = bundle_manifest_layer(data, where)
            if bundle_layer is None:
                where = f"signature referrer {manifest.digest}"
                layers = classic_referrer_layers(data, where) or ()
                candidates += _classic(client, path, layers[: room - len(candidates)], where)
                continue
            bundle = client.blob(path, bundle_layer)
        except RegistryUnavailable:
            raise
        except TrustError as error:
            problems.append(str(error))
            continue
        candidates.append(BundleSignature(bundle, bundle_layer.media_type, where))
    return candidates, problems


def _verified(result: CosignVerification, keys: Sequence[CosignPublicKey]) -> Verified:
    by_id = {key.key_id: key for key in keys}
    signers = ", ".join(by_id[key_id].describe() for key_id in result.key_ids)
    return Verified(signer=f"key {signers}")


def _classic(
    client: RegistryClient, path: str, layers: Sequence[Descriptor], where: str
) -> list[Candidate]:
    """The classic signatures of a signature manifest's ``layers``, with their payloads."""
    # Named by position: signatures of one digest by several keys share one payload blob.
    return [
        ClassicSignature(layer, client.blob(path, layer), f"{where} layer {index}")
        for index, layer in enumerate(layers)
    ]


class _KeyFiles:
    """Public key files read once and again when they change on disk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[Path, ...], tuple[tuple[int, ...], tuple[CosignPublicKey, ...]]] = {}

    def load(self, paths: tuple[Path, ...]) -> tuple[CosignPublicKey, ...]:
        if not paths:
            return ()
        try:
            stamp = tuple(p.stat().st_mtime_ns for p in paths)
        except OSError as error:
            raise ConfigError(f"cannot read a cosign key file: {error}") from None
        with self._lock:
            held = self._held.get(paths)
        if held is not None and held[0] == stamp:
            return held[1]
        keys = load_public_key_files(list(paths))
        with self._lock:
            self._held[paths] = (stamp, keys)
        return keys
