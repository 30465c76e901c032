"""Reading the OCI documents cosign stores signatures in (pure parsing for the discovery step).

What a discovery step looks for, for an image manifest digest ``sha256:<hex>`` in repository R:

* classic signatures (cosign 2 default; cosign 3 with ``--new-bundle-format=false``): the image
  manifest tagged ``sha256-<hex>.sig`` in R; each of its layers is a candidate
  (``classic.ClassicSignature``). With ``--registry-referrers-mode=oci-1-1`` cosign 2 instead
  pushes the same layers as a referrer whose ``artifactType`` is
  ``application/vnd.dev.cosign.artifact.sig.v1+json``.
* Sigstore bundles (cosign 3 default): referrers of the digest with ``artifactType``
  ``application/vnd.dev.sigstore.bundle.v0.3+json``, found with ``GET /v2/R/referrers/<digest>``
  or, where the registry has no referrers API, in the image index tagged ``sha256-<hex>`` (the
  OCI referrers tag schema). Each such manifest has exactly one layer, the bundle JSON
  (``bundle.BundleSignature``). cosign writes that tag-schema index through go-containerregistry,
  which lists the bundle manifests under their config's media type,
  ``application/vnd.oci.empty.v1+json``, not under their ``artifactType`` (seen with cosign
  2.6.5 against docker-registry 2.8): such entries must be fetched and looked at too.

Indexes, tags and manifests are unauthenticated hints: they only say where to look. Whatever
they list is verified by signature, and a listing that lies can only hide signatures, which
denies.
"""

from __future__ import annotations

from typing import Any, Final

from trustd.formats.cosign import _json
from trustd.formats.cosign.bundle import BUNDLE_MEDIA_TYPES, REFERRER_ARTIFACT_TYPE
from trustd.formats.cosign.classic import OCI11_ARTIFACT_TYPE
from trustd.formats.cosign.errors import MalformedCosignSignature
from trustd.net.descriptor import Descriptor, DescriptorError

# Neither cosign nor a registry makes documents with more entries than this for one image.
MAX_LAYERS: Final = 1000
MAX_REFERRERS: Final = 1000

# Index entries that may be bundle referrers (see the module docstring).
EMPTY_CONFIG_TYPE: Final = "application/vnd.oci.empty.v1+json"
_BUNDLE_INDEX_TYPES: Final = frozenset({REFERRER_ARTIFACT_TYPE, EMPTY_CONFIG_TYPE})

_IMAGE_MANIFEST_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)


def _manifest(data: bytes, where: str) -> dict[str, Any]:
    err = MalformedCosignSignature
    document = _json.expect_object(_json.loads(data, where, err), where, err)
    media_type = document.get("mediaType", "application/vnd.oci.image.manifest.v1+json")
    if media_type not in _IMAGE_MANIFEST_TYPES:
        raise err(f"{where}: mediaType {media_type!r} is not an image manifest")
    if document.get("schemaVersion") != 2:
        raise err(f"{where}: schemaVersion is not 2")
    return document


def _descriptors(value: Any, what: str, limit: int) -> tuple[Descriptor, ...]:
    err = MalformedCosignSignature
    items = _json.expect_list(value, what, err)
    if len(items) > limit:
        raise err(f"{what} lists {len(items)} entries, more than the {limit} accepted")
    out = []
    for index, item in enumerate(items):
        try:
            out.append(Descriptor.from_json(item))
        except DescriptorError as exc:
            raise err(f"{what}[{index}]: {exc}") from None
    return tuple(out)


def signature_manifest_layers(data: bytes, where: str) -> tuple[Descriptor, ...]:
    """The layers of a classic signature manifest (``.sig`` tag or cosign's OCI 1.1 referrer);
    fetch each layer's blob by digest to make a ``ClassicSignature``."""
    document = _manifest(data, where)
    artifact_type = document.get("artifactType")
    if artifact_type is not None and artifact_type != OCI11_ARTIFACT_TYPE:
        raise MalformedCosignSignature(
            f"{where}: artifactType {artifact_type!r} is not a cosign signature"
        )
    if "layers" not in document:
        raise MalformedCosignSignature(f"{where} has no layers")
    return _descriptors(document["layers"], f"{where}: layers", MAX_LAYERS)


def classic_referrer_layers(data: bytes, where: str) -> tuple[Descriptor, ...] | None:
    """The layers of a classic signature manifest pushed as a referrer (cosign 2's
    ``--registry-referrers-mode=oci-1-1``); None for a referrer of another ``artifactType``."""
    if _manifest(data, where).get("artifactType") != OCI11_ARTIFACT_TYPE:
        return None
    return signature_manifest_layers(data, where)


def bundle_referrers(data: bytes, where: str) -> tuple[Descriptor, ...]:
    """The entries of a referrers index (the API's answer or the ``sha256-<hex>`` tag-schema
    index) that may be Sigstore bundle manifests: those listed as bundles, and those listed under
    the empty config's media type. Fetch each and read it with ``bundle_manifest_layer``."""
    err = MalformedCosignSignature
    document = _json.expect_object(_json.loads(data, where, err), where, err)
    if document.get("schemaVersion") != 2:
        raise err(f"{where}: schemaVersion is not 2")
    manifests = _descriptors(document.get("manifests", []), f"{where}: manifests", MAX_REFERRERS)
    return tuple(entry for entry in manifests if entry.artifact_type in _BUNDLE_INDEX_TYPES)


def bundle_manifest_layer(data: bytes, where: str) -> Descriptor | None:
    """The one bundle layer of a bundle referrer manifest (fetch its blob by digest to make a
    ``BundleSignature``); None for a manifest whose ``artifactType`` is not a bundle's (another
    kind of referrer, not a signature)."""
    err = MalformedCosignSignature
    document = _manifest(data, where)
    if document.get("artifactType") != REFERRER_ARTIFACT_TYPE:
        return None
    layers = _descriptors(document.get("layers", []), f"{where}: layers", MAX_LAYERS)
    if len(layers) != 1:
        raise err(f"{where} has {len(layers)} layers; a bundle referrer has exactly one")
    if layers[0].media_type not in BUNDLE_MEDIA_TYPES:
        raise err(f"{where}: layer media type {layers[0].media_type!r} is not a Sigstore bundle")
    return layers[0]
