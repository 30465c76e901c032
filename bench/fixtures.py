"""Images and signatures the benchmark needs, made on the real stack before anything is timed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tests.stack import PushedImage, Stack

PUSH_WORKERS = 4
INIT_WORKERS = 3


@dataclass(frozen=True)
class SignedRef:
    """A tag signed in Notary (the image may or may not exist in the registry)."""

    gun: str
    tag: str
    digest: str

    @property
    def tagged(self) -> str:
        return f"{self.gun}:{self.tag}"


def push_many(stack: Stack, repo: str, tags: Sequence[str], prefix: str) -> list[PushedImage]:
    """Push one new image per tag (a seed never used before), a few skopeo runs at a time."""
    if not tags:
        return []
    # The first push writes skopeo's policy file; later ones only read it.
    first = stack.push_image(repo, tags[0], seed=f"{prefix}-{tags[0]}")
    with ThreadPoolExecutor(PUSH_WORKERS) as pool:
        rest = list(
            pool.map(lambda tag: stack.push_image(repo, tag, seed=f"{prefix}-{tag}"), tags[1:])
        )
    return [first, *rest]


def sign_images(stack: Stack, images: Sequence[PushedImage]) -> None:
    """Sign every image's tag in its repository's GUN, one publish per GUN."""
    by_gun: dict[str, list[PushedImage]] = {}
    for image in images:
        by_gun.setdefault(image.repository, []).append(image)
    for gun, members in by_gun.items():
        stack.publisher.ensure_initialised(gun)
        for image in members:
            stack.publisher.add(gun, image.tag, image.manifest)
        stack.publisher.publish(gun)


def fake_manifest(label: str) -> bytes:
    """Bytes to sign as a target: resolution never fetches them from the registry."""
    return json.dumps({"schemaVersion": 2, "bench": label}, sort_keys=True).encode()


def signed_repositories(stack: Stack, guns: Sequence[str], tag: str) -> list[SignedRef]:
    """Initialise each GUN and sign ``tag`` in it (as a manifest the registry does not hold)."""
    publisher = stack.publisher

    def one(gun: str) -> SignedRef:
        manifest = fake_manifest(f"{gun}:{tag}")
        publisher.ensure_initialised(gun)
        publisher.add(gun, tag, manifest, publish=True)
        return SignedRef(gun, tag, "sha256:" + hashlib.sha256(manifest).hexdigest())

    if not guns:
        return []
    # The first init creates the root key that every later init reuses.
    first = one(guns[0])
    with ThreadPoolExecutor(INIT_WORKERS) as pool:
        rest = list(pool.map(one, guns[1:]))
    return [first, *rest]
