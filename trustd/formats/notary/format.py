"""Notary v1 behind the format interface: a tag's signed digest from TUF trust data."""

from __future__ import annotations

from trustd.config.model import OfflinePolicy, PolicyRule
from trustd.errors import ConfigError, DigestNotSigned, TrustError
from trustd.formats.base import FormatName, Judgement, SignatureQuery, SignedDigest
from trustd.formats.notary.engine import OfflineUse, TrustEngine
from trustd.formats.notary.resolution import SignedTarget, resolve_digest, resolve_tag
from trustd.formats.notary.view import VerifiedRepository
from trustd.names.reference import Reference


class NotaryV1Format:
    """Answers for Notary v1 through the node's ``TrustEngine`` (its servers, pinning, cache)."""

    def __init__(self, trust: TrustEngine) -> None:
        self.trust = trust

    @property
    def name(self) -> FormatName:
        return FormatName.NOTARY_V1

    def judge(self, query: SignatureQuery) -> Judgement:
        reference, rule = query.reference, query.rule
        if reference.tag is None and not query.digest_must_be_signed:
            return Judgement(self.name)
        repository: VerifiedRepository | None = None
        try:
            repository = self.trust.repository(
                reference.registry,
                reference.repository,
                query.credentials,
                offline=offline_use(rule),
            )
            target = signed_target(repository, reference, rule)
        except (TrustError, ConfigError) as error:
            # ConfigError: e.g. an unreadable Notary password file; a denial, never a crash.
            if repository is not None and repository.from_cache:
                return Judgement(
                    self.name,
                    error=error,
                    cached_age=repository.cached_age,
                    outage=repository.outage,
                )
            return Judgement(self.name, error=error)
        signed = SignedDigest(
            format=self.name.value,
            repository=target.gun,
            name=target.name,
            digest=target.digest,
            signer=target.role,
            size=target.size,
        )
        if repository.from_cache:
            return Judgement(
                self.name, signed=signed, cached_age=repository.cached_age, outage=repository.outage
            )
        return Judgement(self.name, signed=signed)


def offline_use(rule: PolicyRule) -> OfflineUse | None:
    """Whether ``rule`` may be answered from cached trust data during a Notary outage."""
    if rule.offline is OfflinePolicy.DENY:
        return None
    return OfflineUse(max_age=rule.max_offline_age)


def signed_target(
    repository: VerifiedRepository, reference: Reference, rule: PolicyRule
) -> SignedTarget:
    """The signed target ``reference`` names in ``repository``, per ``rule``'s roles.

    A tag is resolved in the rule's roles (or must be signed by all its signers); with a digest
    too, the tag must be signed as exactly that digest. A bare digest must be a signed target.
    """
    if reference.tag is not None:
        signed = resolve_tag(repository, reference.tag, rule.roles, rule.signers)
        if reference.digest is not None and reference.digest != signed.digest:
            raise DigestNotSigned(
                f"tag {reference.tag} of {reference.repository} is signed as {signed.digest}, "
                f"not {reference.digest}"
            )
        return signed
    assert reference.digest is not None
    return resolve_digest(repository, reference.digest, rule.roles, rule.signers)
