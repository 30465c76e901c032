"""Parsing the OCI documents cosign signatures are stored in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trustd.formats.cosign.errors import MalformedCosignSignature
from trustd.formats.cosign.manifests import (
    bundle_manifest_layer,
    bundle_referrers,
    classic_referrer_layers,
    signature_manifest_layers,
)

BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIMPLE = "application/vnd.dev.cosign.simplesigning.v1+json"


def _descriptor(media_type: str, fill: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + fill * 64, "size": 10, **extra}


def _sig_manifest(**changes: Any) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _descriptor("application/vnd.oci.image.config.v1+json", "c"),
        "layers": [
            _descriptor(SIMPLE, "1", annotations={"dev.cosignproject.cosign/signature": "MEUC"}),
            _descriptor(SIMPLE, "2", annotations={"dev.cosignproject.cosign/signature": "MEQC"}),
        ],
    }
    document.update(changes)
    return json.dumps(document).encode()


def test_signature_manifest_layers() -> None:
    layers = signature_manifest_layers(_sig_manifest(), "app:sha256-x.sig")
    assert [layer.digest[-1] for layer in layers] == ["1", "2"]
    assert layers[0].annotations["dev.cosignproject.cosign/signature"] == "MEUC"


def test_oci11_classic_referrer_is_read_too() -> None:
    data = _sig_manifest(artifactType="application/vnd.dev.cosign.artifact.sig.v1+json")
    assert len(signature_manifest_layers(data, "referrer")) == 2
    assert classic_referrer_layers(data, "referrer") == signature_manifest_layers(data, "x")
    # Referrers of other kinds are not classic signatures; a .sig-tagged manifest is not one.
    assert classic_referrer_layers(_sig_manifest(artifactType=BUNDLE), "referrer") is None
    assert classic_referrer_layers(_sig_manifest(), "referrer") is None


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"mediaType": "application/vnd.oci.image.index.v1+json"}, "not an image manifest"),
        ({"schemaVersion": 1}, "schemaVersion"),
        ({"artifactType": BUNDLE}, "not a cosign signature"),
        ({"layers": {}}, "must be a JSON array"),
        ({"layers": [{"mediaType": SIMPLE, "digest": "sha256:1", "size": 1}]}, "layers[0]"),
        ({"layers": [_descriptor(SIMPLE, "1")] * 1001}, "more than the 1000"),
    ],
)
def test_bad_signature_manifests(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MalformedCosignSignature) as caught:
        signature_manifest_layers(_sig_manifest(**changes), "app:sha256-x.sig")
    assert fragment in str(caught.value)


def test_bundle_referrers_are_filtered_by_artifact_type() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            _descriptor("application/vnd.oci.image.manifest.v1+json", "a", artifactType=BUNDLE),
            _descriptor(
                "application/vnd.oci.image.manifest.v1+json",
                "b",
                artifactType="application/vnd.cncf.notary.signature",
            ),
            _descriptor("application/vnd.oci.image.manifest.v1+json", "c"),
            # How go-containerregistry lists cosign's bundles in the tag-schema index.
            _descriptor(
                "application/vnd.oci.image.manifest.v1+json",
                "d",
                artifactType="application/vnd.oci.empty.v1+json",
            ),
        ],
    }
    found = bundle_referrers(json.dumps(index).encode(), "referrers of sha256:ab")
    assert [entry.digest[-1] for entry in found] == ["a", "d"]
    empty = bundle_referrers(b'{"schemaVersion": 2, "manifests": []}', "x")
    assert empty == ()


def _bundle_manifest(**changes: Any) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": BUNDLE,
        "config": _descriptor("application/vnd.oci.empty.v1+json", "e"),
        "layers": [_descriptor(BUNDLE, "1")],
        "subject": _descriptor("application/vnd.oci.image.manifest.v1+json", "f"),
        "annotations": {"dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
    }
    document.update(changes)
    return json.dumps(document).encode()


def test_bundle_manifest_layer() -> None:
    layer = bundle_manifest_layer(_bundle_manifest(), "r")
    assert layer is not None and layer.media_type == BUNDLE


def test_other_referrers_are_not_bundles() -> None:
    notation = _bundle_manifest(artifactType="application/vnd.cncf.notary.signature")
    assert bundle_manifest_layer(notation, "r") is None
    untyped = json.loads(_bundle_manifest())
    del untyped["artifactType"]
    assert bundle_manifest_layer(json.dumps(untyped).encode(), "r") is None


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"layers": []}, "has 0 layers"),
        ({"layers": [_descriptor(BUNDLE, "1"), _descriptor(BUNDLE, "2")]}, "has 2 layers"),
        ({"layers": [_descriptor(SIMPLE, "1")]}, "not a Sigstore bundle"),
    ],
)
def test_bad_bundle_manifests(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MalformedCosignSignature) as caught:
        bundle_manifest_layer(_bundle_manifest(**changes), "r")
    assert fragment in str(caught.value)
