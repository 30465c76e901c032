"""Classic cosign signatures: the layers of a ``sha256-<hex>.sig`` signature manifest.

Each layer (cosign ``specs/SIGNATURE_SPEC.md``, cosign ``pkg/oci/static``) is a simple-signing
payload blob of media type ``application/vnd.dev.cosign.simplesigning.v1+json`` whose descriptor
carries the base64 signature over the blob's exact bytes in the annotation
``dev.cosignproject.cosign/signature``. Optional annotations: ``dev.sigstore.cosign/certificate``
and ``dev.sigstore.cosign/chain`` (PEM), ``dev.sigstore.cosign/bundle`` (a Rekor signed entry
timestamp) and ``dev.sigstore.cosign/rfc3161timestamp``.

A certificate carried in a signature is never trusted by itself (cosign advisory
GHSA-fx35-mq7g-6g98): only configured keys verify. The payload is parsed only after a configured
key verified its signature, and its digest claim must equal the digest actually pulled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from trustd.formats.cosign import _json, rekor
from trustd.formats.cosign.errors import (
    KEYLESS_MESSAGE,
    CosignSignatureInvalid,
    KeylessNotSupported,
    MalformedCosignSignature,
    SignatureForOtherDigest,
)
from trustd.formats.cosign.keys import CosignPublicKey
from trustd.formats.cosign.simplesigning import (
    MEDIA_TYPE,
    SimpleSigningPayload,
    parse_simple_signing,
)
from trustd.net.descriptor import Descriptor, is_digest

ANNOTATION_SIGNATURE: Final = "dev.cosignproject.cosign/signature"
ANNOTATION_CERTIFICATE: Final = "dev.sigstore.cosign/certificate"
ANNOTATION_CHAIN: Final = "dev.sigstore.cosign/chain"
ANNOTATION_BUNDLE: Final = "dev.sigstore.cosign/bundle"
ANNOTATION_RFC3161: Final = "dev.sigstore.cosign/rfc3161timestamp"

# The artifact type of a classic signature manifest pushed as an OCI 1.1 referrer
# (``cosign sign --registry-referrers-mode=oci-1-1``); its layers are the same as in ``.sig``.
OCI11_ARTIFACT_TYPE: Final = "application/vnd.dev.cosign.artifact.sig.v1+json"


def signature_tag(manifest_digest: str) -> str:
    """The tag cosign stores an image's classic signatures under: ``sha256-<hex>.sig``."""
    if not is_digest(manifest_digest):
        raise ValueError(f"{manifest_digest!r} is not a digest")
    return manifest_digest.replace(":", "-", 1) + ".sig"


@dataclass(frozen=True)
class ClassicSignature:
    """One layer of a classic signature manifest, with the layer blob's bytes.

    ``payload`` must be the blob fetched by ``layer.digest`` (the registry client checks the
    digest; it is checked again here). ``source`` says where it was found, for messages.
    """

    layer: Descriptor
    payload: bytes = field(repr=False)
    source: str = ""

    def describe(self) -> str:
        return self.source or f"cosign signature layer {self.layer.digest}"


@dataclass(frozen=True)
class ClassicVerified:
    """A classic signature that configured keys verified over the pulled digest."""

    signature: ClassicSignature
    keys: tuple[tuple[CosignPublicKey, str], ...]  # (key, scheme) for every key that verified
    payload: SimpleSigningPayload
    rekor_integrated_time: int | None = None


def verify_classic(
    candidate: ClassicSignature,
    manifest_digest: str,
    keys: Sequence[CosignPublicKey],
    now: datetime,
    rekor_public_keys: Sequence[CosignPublicKey] = (),
) -> ClassicVerified:
    """Verify one classic signature layer; raise the reason it does not count otherwise.

    With ``rekor_public_keys``, the layer must also carry a Rekor signed entry timestamp that one
    of them signed and that records exactly this signature, payload and key.
    """
    where = candidate.describe()
    layer = candidate.layer
    if layer.media_type != MEDIA_TYPE:
        raise MalformedCosignSignature(
            f"{where}: layer media type {layer.media_type!r} is not {MEDIA_TYPE!r}"
        )
    _check_blob(candidate, where)
    encoded = layer.annotations.get(ANNOTATION_SIGNATURE)
    if encoded is None:
        raise MalformedCosignSignature(f"{where}: no {ANNOTATION_SIGNATURE} annotation")
    signature = _json.std_b64decode(
        encoded, f"{where}: annotation {ANNOTATION_SIGNATURE}", MalformedCosignSignature
    )

    verified = tuple(
        (key, scheme)
        for key in keys
        if (scheme := key.verify(signature, candidate.payload)) is not None
    )
    if not verified:
        tried = ", ".join(key.describe() for key in keys)
        if ANNOTATION_CERTIFICATE in layer.annotations:
            raise KeylessNotSupported(
                f"{where}: signed with a certificate's key, not with a configured key "
                f"(tried {tried}); the certificate in the signature is not trusted by itself; "
                f"{KEYLESS_MESSAGE}"
            )
        raise CosignSignatureInvalid(
            f"{where}: the signature does not verify with any configured key (tried {tried})"
        )

    payload = parse_simple_signing(candidate.payload, f"{where}: payload")
    if payload.manifest_digest != manifest_digest:
        raise SignatureForOtherDigest(
            f"{where}: signed by {_names(verified)} for {payload.manifest_digest}, "
            f"not for the pulled {manifest_digest}"
        )

    integrated_time: int | None = None
    if rekor_public_keys:
        bundle = layer.annotations.get(ANNOTATION_BUNDLE)
        integrated_time = rekor.verify_set(
            bundle,
            rekor_public_keys,
            signature=signature,
            payload=candidate.payload,
            signer_keys=[key for key, _ in verified],
            now=now,
            where=where,
        )
    return ClassicVerified(candidate, verified, payload, integrated_time)


def _check_blob(candidate: ClassicSignature, where: str) -> None:
    layer = candidate.layer
    algorithm, _, expected = layer.digest.partition(":")
    actual = hashlib.new(algorithm, candidate.payload).hexdigest()
    if actual != expected or len(candidate.payload) != layer.size:
        raise MalformedCosignSignature(
            f"{where}: the payload bytes do not match the layer descriptor "
            f"({layer.digest}, {layer.size} bytes)"
        )


def _names(verified: Sequence[tuple[CosignPublicKey, str]]) -> str:
    return ", ".join(f"key {key.describe()}" for key, _ in verified)
