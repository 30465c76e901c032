"""What Notation and cosign share: tag resolution, the freshness window, single flight and the
outage fallback (trustd.formats.registry_format), over a registry stand-in that counts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from trustd.config.load import parse_config
from trustd.config.model import PolicyRule
from trustd.errors import RegistryUnavailable, TagNotSigned
from trustd.formats.base import FormatName, SignatureQuery
from trustd.formats.registry_format import RegistrySignatureFormat, Verified
from trustd.formats.verified_cache import VerifiedDigests
from trustd.names.reference import parse_reference
from trustd.net.descriptor import Descriptor

DIGEST = "sha256:" + "ab" * 32
TARGET = Descriptor("application/vnd.oci.image.manifest.v1+json", DIGEST, 512)


class Registry:
    """Answers resolve() and manifest() with TARGET, or raises ``down`` while set."""

    def __init__(self) -> None:
        self.down: RegistryUnavailable | None = None
        self.resolved = 0

    def resolve(self, path: str, tag: str) -> Descriptor:
        if self.down is not None:
            raise self.down
        self.resolved += 1
        return TARGET

    def manifest(self, path: str, digest: str) -> tuple[Descriptor, bytes]:
        if self.down is not None:
            raise self.down
        return TARGET, b"{}"


class Clients:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @contextmanager
    def client(self, host: str, credentials: object) -> Iterator[Registry]:
        yield self.registry


class Counting(RegistrySignatureFormat):
    """Verifies whatever it is asked, counting, optionally waiting on ``gate`` first."""

    def __init__(self, registry: Registry, cache: VerifiedDigests) -> None:
        super().__init__(Clients(registry), cache)  # type: ignore[arg-type]
        self.calls = 0
        self.fail = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    @property
    def name(self) -> FormatName:
        return FormatName.COSIGN

    def verify_manifest(
        self, client: Any, query: SignatureQuery, target: Descriptor, now: datetime
    ) -> Verified:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise TagNotSigned("no signature")
        return Verified(signer="key abc")


def rule(offline: str = "cached", max_age: str = "") -> PolicyRule:
    text = f'[[policy]]\nmatch = "**"\noffline = "{offline}"\n{max_age}'
    return parse_config(text, "trustd.toml").policy[0]


def query(text: str = "registry.example.com/app:1.0", offline: str = "cached") -> SignatureQuery:
    return SignatureQuery(parse_reference(text), rule(offline))


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def fmt(registry: Registry, tmp_path: Path) -> Counting:
    return Counting(registry, VerifiedDigests(tmp_path / "cosign.json"))


def test_a_tag_is_pinned_to_the_digest_the_registry_resolves(fmt: Counting) -> None:
    answer = fmt.judge(query())
    assert answer.signed is not None
    assert (answer.signed.digest, answer.signed.name, answer.signed.signer) == (
        DIGEST,
        "1.0",
        "key abc",
    )


def test_within_the_window_one_verification_answers_again(
    fmt: Counting, registry: Registry
) -> None:
    fmt.freshness_window = 60
    same = query()
    assert fmt.judge(same).verified and fmt.judge(same).verified
    assert (fmt.calls, registry.resolved) == (1, 1)


def test_without_a_window_every_question_verifies(fmt: Counting) -> None:
    same = query()
    fmt.judge(same)
    fmt.judge(same)
    assert fmt.calls == 2


def test_a_failure_is_never_kept(fmt: Counting) -> None:
    fmt.freshness_window = 60
    fmt.fail = True
    assert isinstance(fmt.judge(query()).error, TagNotSigned)
    fmt.fail = False
    assert fmt.judge(query()).verified
    assert fmt.calls == 2


def test_concurrent_questions_share_one_verification(fmt: Counting) -> None:
    fmt.gate = threading.Event()
    answers: list[Any] = []
    same = query()
    first = threading.Thread(target=lambda: answers.append(fmt.judge(same)))
    first.start()
    assert fmt.entered.wait(10)
    joined = threading.Event()
    original = fmt._flight.wait

    def telling(call: Any) -> Any:
        joined.set()
        return original(call)

    fmt._flight.wait = telling  # type: ignore[method-assign]
    second = threading.Thread(target=lambda: answers.append(fmt.judge(same)))
    second.start()
    assert joined.wait(10)
    fmt.gate.set()
    first.join(10)
    second.join(10)
    assert fmt.calls == 1
    assert [a.verified for a in answers] == [True, True]


def test_an_outage_answers_from_what_this_node_verified(fmt: Counting, registry: Registry) -> None:
    assert fmt.judge(query()).verified
    registry.down = RegistryUnavailable("registry.example.com did not answer")
    cached = fmt.judge(query())
    assert cached.signed is not None and cached.signed.digest == DIGEST
    assert cached.cached_age is not None and cached.outage is not None
    by_digest = fmt.judge(query(f"registry.example.com/app@{DIGEST}"))
    assert by_digest.signed is not None and by_digest.cached_age is not None


def test_an_outage_fails_closed_under_deny_and_for_what_was_never_verified(
    fmt: Counting, registry: Registry
) -> None:
    assert fmt.judge(query()).verified
    registry.down = RegistryUnavailable("registry.example.com did not answer")
    denied = fmt.judge(query(offline="deny"))
    assert isinstance(denied.error, RegistryUnavailable)
    never = fmt.judge(query("registry.example.com/other:1.0"))
    assert isinstance(never.error, RegistryUnavailable)
    assert "never verified cosign signatures of registry.example.com/other:1.0" in str(never.error)


def test_an_outage_respects_max_offline_age(fmt: Counting, registry: Registry) -> None:
    assert fmt.judge(query()).verified
    registry.down = RegistryUnavailable("registry.example.com did not answer")
    old = rule(max_age="max_offline_age = 0.001\n")
    threading.Event().wait(0.01)
    answer = fmt.judge(SignatureQuery(parse_reference("registry.example.com/app:1.0"), old))
    assert isinstance(answer.error, RegistryUnavailable)
    assert "longer than policy[0]'s max_offline_age" in str(answer.error)
