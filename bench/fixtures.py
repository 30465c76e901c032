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


def signed_samples(
    stack: Stack, repo_prefix: str, count: int, tags: Sequence[str]
) -> list[dict[str, PushedImage]]:
    """``count`` repositories ``<repo_prefix>-NN``, each with one new image per tag, all signed.

    One repository per sample lets each sample be the first lookup of its GUN in trustd's
    freshness window, so that it pays the Notary round trip a lone pull pays.
    """
    jobs = [(f"{repo_prefix}-{index:02d}", tag) for index in range(count) for tag in tags]
    if not jobs:
        return []
    with ThreadPoolExecutor(PUSH_WORKERS) as pool:
        pushed = list(
            pool.map(lambda job: stack.push_image(job[0], job[1], seed=f"{job[0]}-{job[1]}"), jobs)
        )
    samples: list[dict[str, PushedImage]] = [{} for _ in range(count)]
    for index, image in enumerate(pushed):
        samples[index // len(tags)][image.tag] = image
    publisher = stack.publisher

    def sign(sample: dict[str, PushedImage]) -> None:
        gun = next(iter(sample.values())).repository
        publisher.ensure_initialised(gun)
        for image in sample.values():
            publisher.add(gun, image.tag, image.manifest)
        publisher.publish(gun)

    sign(samples[0])  # the first init may create the root key the later ones reuse
    with ThreadPoolExecutor(INIT_WORKERS) as pool:
        list(pool.map(sign, samples[1:]))
    return samples
