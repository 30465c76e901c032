"""Smoke tests of the real-stack harness: the Debian programs work together as tests need."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.stack import (
    Containerd,
    NotaryCLIError,
    NotaryPublisher,
    NotaryServer,
    PushedImage,
    Registry,
    Stack,
    metadata_key_id,
)
from tests.stack.images import push_busybox_image
from tests.stack.notary_keys import read_key_file

PushImage = Callable[..., PushedImage]


def test_different_seeds_give_different_images(push_image: PushImage, registry: Registry) -> None:
    first = push_image("smoke/seeds", "one", seed="a")
    second = push_image("smoke/seeds", "two", seed="b")
    again = push_image("smoke/seeds-again", "one", seed="a")

    assert first.digest != second.digest
    assert again.digest == first.digest
    assert first.repository == f"{registry.host}/smoke/seeds"
    assert registry.manifest_digest("smoke/seeds", "one") == first.digest
    served, media_type = registry.get_manifest("smoke/seeds", first.digest)
    assert served == first.manifest
    assert first.size == len(first.manifest)
    assert media_type == "application/vnd.oci.image.manifest.v1+json"
    config = json.loads(first.manifest)["config"]
    assert config["mediaType"] == "application/vnd.oci.image.config.v1+json"


def test_a_registry_with_a_password_refuses_others(tmp_path: Path) -> None:
    registry = Registry.start(tmp_path / "registry", credentials=("someone", "the-password"))
    try:
        image = push_busybox_image(
            registry, "smoke/auth", "1", {"Cmd": ["/bin/sh"]}, workdir=tmp_path / "images"
        )
        assert registry.manifest_digest("smoke/auth", "1") == image.digest
        url = f"{registry.url}/v2/smoke/auth/manifests/1"
        session = requests.Session()
        session.trust_env = False  # no proxy for loopback
        assert session.get(url, timeout=10).status_code == 401
        wrong = session.get(url, auth=("someone", "not-the-password"), timeout=10)
        assert wrong.status_code == 401
    finally:
        registry.stop()


def test_signed_tag_matches_registry_digest(
    stack: Stack, push_image: PushImage, notary: NotaryPublisher, notary_server: NotaryServer
) -> None:
    image = push_image("smoke/signed", "v1")
    stack.sign(image)

    assert notary.lookup(image.repository, "v1") == (image.digest, image.size)
    with pytest.raises(NotaryCLIError, match="No valid trust data"):
        notary.lookup(image.repository, "not-signed")
    targets = json.loads(notary_server.metadata(image.repository, "targets"))
    assert targets["signed"]["targets"]["v1"]["length"] == image.size


def test_delegation_signer_adds_a_tag(
    stack: Stack, push_image: PushImage, notary: NotaryPublisher, notary_server: NotaryServer
) -> None:
    gun = push_image("smoke/delegated", "base").repository
    notary.init(gun)
    key_id = notary.add_delegation_signer(gun, "targets/releases")
    release = push_image("smoke/delegated", "release")
    stack.sign(release, roles=["targets/releases"])

    listed = {target.tag: target for target in notary.list(gun)}
    assert listed["release"].role == "targets/releases"
    assert listed["release"].digest == release.digest
    assert key_id in notary.delegation_list(gun)
    assert notary.key_ids(gun, "targets/releases") == [key_id]
    targets = json.loads(notary_server.metadata(gun, "targets"))
    delegated_keys = targets["signed"]["delegations"]["roles"][0]["keyids"]
    assert delegated_keys == [metadata_key_id(notary.signer_certs[key_id])]


def _ecdsa_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = {
        "keytype": "ecdsa",
        "keyval": {"private": None, "public": base64.b64encode(spki).decode()},
    }
    return hashlib.sha256(
        json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def test_private_keys_decrypt_with_the_passphrase(
    stack: Stack, push_image: PushImage, notary: NotaryPublisher, notary_server: NotaryServer
) -> None:
    image = push_image("smoke/keys", "v1")
    stack.sign(image)
    (targets_key_id,) = notary.key_ids(image.repository, "targets")
    headers, _ = read_key_file(notary.trust_dir / "private" / f"{targets_key_id}.key")
    assert headers == {"role": "targets", "gun": image.repository}
    key = notary.private_key("targets", image.repository)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    root = json.loads(notary_server.metadata(image.repository, "root"))
    assert _ecdsa_key_id(key.public_key()) in root["signed"]["roles"]["targets"]["keyids"]

    notary.rotate_key(image.repository, "targets")
    assert notary.key_ids(image.repository, "targets") != [targets_key_id]
    assert notary.lookup(image.repository, "v1") == (image.digest, image.size)


def test_containerd_pulls_by_digest_and_survives_restart(
    containerd: Containerd, push_image: PushImage
) -> None:
    assert "Server:" in containerd.ctr("version")
    image = push_image("smoke/pull", "v1")

    containerd.pull(image.by_digest)
    assert image.digest in containerd.ctr("images", "ls", "--quiet")

    containerd.restart()
    assert containerd.running()
    containerd.stop()
    assert not containerd.running()
    containerd.start()
    assert containerd.running()
    # Same root and state: the image pulled before the restart is still there.
    assert image.digest in containerd.ctr("images", "ls", "--quiet")
    second = push_image("smoke/pull", "v2")
    containerd.pull(second.by_digest)
    assert second.digest in containerd.ctr("images", "ls", "--quiet")
