"""What Notation and cosign share: signatures stored in the image's own registry.

Both resolve a tag at the registry with the pull's credentials, verify the signatures of the
manifest it resolves to, and pin the pull to that digest, so a tag moved after the check cannot
slip in (containerd pulls the digest). A reference with a digest is verified as that digest (the
image verifier's question: containerd already resolved the tag). During a registry outage, a rule
with ``offline = "cached"`` may answer from what this node verified before (``VerifiedDigests``),
no older than its ``max_offline_age``.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from time import monotonic, time

from trustd.config.model import OfflinePolicy, PolicyRule
from trustd.errors import ConfigError, RegistryUnavailable, TrustError
from trustd.formats.base import FormatName, Judgement, SignatureQuery, SignedDigest
from trustd.formats.single_flight import SingleFlight
from trustd.formats.verified_cache import VerifiedDigests
from trustd.net.descriptor import Descriptor
from trustd.registry.client import RegistryClient
from trustd.registry.clients import RegistryClients
from trustd.registry.errors import RegistryAuthenticationFailed

log = logging.getLogger(__name__)

# Answers kept for the freshness window are pruned once this many are held.
_RECENT_PRUNE_SIZE = 256


@dataclass(frozen=True)
class Verified:
    """What a format's verification of one manifest established."""

    signer: str
    notes: tuple[str, ...] = ()


class RegistrySignatureFormat(ABC):
    """A format whose signatures are found beside the image in its registry."""

    def __init__(self, registries: RegistryClients, verified: VerifiedDigests) -> None:
        self.registries = registries
        self.verified = verified
        # Seconds a verification answers the same question again without a request (kubelet's
        # ImageStatus, PullImage, ImageStatus for one container start); set from the config's
        # server.freshness_window. A signature removed or a tag moved is seen at most that late.
        self.freshness_window = 0.0
        self._recent: dict[tuple[str, str, PolicyRule], tuple[Judgement, float]] = {}
        self._recent_lock = threading.Lock()
        self._flight: SingleFlight[Judgement] = SingleFlight(
            RegistryUnavailable, RegistryAuthenticationFailed, "a verification of its signatures"
        )

    @property
    @abstractmethod
    def name(self) -> FormatName: ...

    @abstractmethod
    def verify_manifest(
        self, client: RegistryClient, query: SignatureQuery, target: Descriptor, now: datetime
    ) -> Verified:
        """Verify the signatures of ``target`` in ``query.reference.repository``; TrustError (or
        ConfigError) if none is accepted."""

    def judge(self, query: SignatureQuery) -> Judgement:
        reference = query.reference
        if reference.tag is None and not query.digest_must_be_signed:
            return Judgement(self.name)
        name = reference.tag if reference.digest is None else reference.digest
        assert name is not None
        key = (reference.repository, name, query.rule)
        recent = self._recent_answer(key)
        if recent is not None:
            return recent

        def verify() -> Judgement:
            answer = self._judge_now(query, name)
            if answer.verified and answer.cached_age is None:
                self._remember_answer(key, answer)
            return answer

        # Concurrent questions about one name under one rule share one verification.
        flight_key = f"{reference.repository}@{name} ({query.rule.source})"
        return self._flight.run(flight_key, query.credentials, verify)

    def _recent_answer(self, key: tuple[str, str, PolicyRule]) -> Judgement | None:
        if self.freshness_window <= 0:
            return None
        with self._recent_lock:
            held = self._recent.get(key)
        if held is None or monotonic() - held[1] >= self.freshness_window:
            return None
        return held[0]

    def _remember_answer(self, key: tuple[str, str, PolicyRule], answer: Judgement) -> None:
        if self.freshness_window <= 0:
            return
        now = monotonic()
        with self._recent_lock:
            if len(self._recent) >= _RECENT_PRUNE_SIZE:
                for stale in [
                    k for k, (_, at) in self._recent.items() if now - at >= self.freshness_window
                ]:
                    del self._recent[stale]
            self._recent[key] = (answer, now)

    def _judge_now(self, query: SignatureQuery, name: str) -> Judgement:
        reference = query.reference
        try:
            with self.registries.client(reference.registry, query.credentials) as client:
                target = self._target(client, query)
                verified = self.verify_manifest(client, query, target, datetime.now(UTC))
        except RegistryUnavailable as outage:
            return self._during_outage(query, name, outage)
        except (TrustError, ConfigError) as error:
            return Judgement(self.name, error=error)
        self.verified.remember(
            reference.repository, name, target.digest, verified.signer, target.size
        )
        signed = self._signed(query, target.digest, verified.signer, target.size, verified.notes)
        return Judgement(self.name, signed=signed)

    def _signed(
        self,
        query: SignatureQuery,
        digest: str,
        signer: str,
        size: int | None,
        notes: tuple[str, ...] = (),
    ) -> SignedDigest:
        """What the decision pins the pull to: the tag asked about (or the digest) as ``digest``."""
        reference = query.reference
        return SignedDigest(
            format=self.name.value,
            repository=reference.repository,
            name=reference.tag or digest,
            digest=digest,
            signer=signer,
            size=size,
            notes=notes,
        )

    def _target(self, client: RegistryClient, query: SignatureQuery) -> Descriptor:
        """The manifest the reference names: the registry's answer for a tag, or the manifest of
        the digest given (its bytes checked against the digest)."""
        reference = query.reference
        if reference.digest is not None:
            descriptor, _ = client.manifest(reference.path, reference.digest)
            return descriptor
        assert reference.tag is not None
        return client.resolve(reference.path, reference.tag)

    def _during_outage(
        self, query: SignatureQuery, name: str, outage: RegistryUnavailable
    ) -> Judgement:
        rule, reference = query.rule, query.reference
        if rule.offline is OfflinePolicy.DENY:
            return Judgement(self.name, error=outage)
        shown = f"{reference.repository}{':' if reference.digest is None else '@'}{name}"
        entry = self.verified.lookup(reference.repository, name)
        if entry is None:
            error = RegistryUnavailable(
                f"{outage}; this node never verified {self.name.value} signatures of {shown}"
            )
            return Judgement(self.name, error=error)
        age = entry.age(time())
        if rule.max_offline_age is not None and age > rule.max_offline_age:
            error = RegistryUnavailable(
                f"{outage}; this node verified {shown} {age:.0f}s ago, longer than "
                f"{rule.source}'s max_offline_age of {rule.max_offline_age:g}s"
            )
            return Judgement(self.name, error=error)
        log.warning(
            "%s of %s judged from a verification cached %.0fs ago: %s",
            self.name.value,
            reference.repository,
            age,
            outage,
        )
        signed = self._signed(query, entry.digest, entry.signer, entry.size)
        return Judgement(self.name, signed=signed, cached_age=age, outage=str(outage))
