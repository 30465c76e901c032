"""Answering "which digest is this tag signed as, and by whom?" over verified trust data.

Pure functions over a ``VerifiedRepository``: no network, no disk.

Role order is docker's with content trust: ``targets/releases`` first, then ``targets``, and only
targets signed by exactly those roles count (``docker pull`` ignores tags that only other
delegations signed). A policy can name other roles, or require several signers to agree.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from trustd.errors import DigestNotSigned, TagNotSigned, TrustError
from trustd.formats.notary.metadata import TargetFile
from trustd.formats.notary.view import VerifiedRepository

DOCKER_ROLE_ORDER = ("targets/releases", "targets")
_SUPPORTED_DIGESTS = ("sha256", "sha512")


@dataclass(frozen=True)
class SignedTarget:
    """A tag (or target name) and the digest it is signed as."""

    gun: str
    name: str
    digest: str  # "sha256:<hex>"
    size: int
    role: str  # the signing role, or several joined by "," when signers must agree

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


def _digest_of(target: TargetFile) -> str | None:
    sha256 = target.hashes.get("sha256")
    return f"sha256:{sha256.hex()}" if sha256 is not None else None


def _signed_by(repository: VerifiedRepository, role: str, name: str) -> TargetFile | None:
    targets = repository.role_targets(role)
    if targets is None:
        return None
    return targets.targets.get(name)


def resolve_tag(
    repository: VerifiedRepository,
    tag: str,
    roles: Sequence[str] = DOCKER_ROLE_ORDER,
    signers: Sequence[str] = (),
) -> SignedTarget:
    """The digest ``tag`` is signed as; TagNotSigned (or the role's own error) otherwise."""
    if signers:
        return _resolve_with_signers(repository, tag, signers)
    for role in roles:
        target = _signed_by(repository, role, tag)
        if target is None:
            continue
        digest = _digest_of(target)
        if digest is None:
            raise TrustError(
                f"tag {tag} in {repository.gun} is signed by {role} without a sha256 hash"
            )
        return SignedTarget(repository.gun, tag, digest, target.length, role)
    raise TagNotSigned(
        f"tag {tag} is not signed in {repository.gun}{_roles_clause(repository, roles)}"
    )


def _resolve_with_signers(
    repository: VerifiedRepository, tag: str, signers: Sequence[str]
) -> SignedTarget:
    found: dict[str, TargetFile] = {}
    missing = []
    for role in signers:
        target = _signed_by(repository, role, tag)
        if target is None:
            missing.append(role)
        else:
            found[role] = target
    if missing:
        raise TagNotSigned(
            f"tag {tag} in {repository.gun} is not signed by required signer"
            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        )
    digests = {role: _digest_of(target) for role, target in found.items()}
    if len(set(digests.values())) != 1 or None in digests.values():
        detail = ", ".join(f"{role}: {digest}" for role, digest in digests.items())
        raise TagNotSigned(f"required signers disagree on tag {tag} in {repository.gun} ({detail})")
    first = found[signers[0]]
    return SignedTarget(
        repository.gun, tag, digests[signers[0]] or "", first.length, ",".join(signers)
    )


def resolve_digest(
    repository: VerifiedRepository,
    digest: str,
    roles: Sequence[str] = DOCKER_ROLE_ORDER,
    signers: Sequence[str] = (),
) -> SignedTarget:
    """A signed target (any tag) whose hash is ``digest``; DigestNotSigned otherwise."""
    algorithm, _, wanted_hex = digest.partition(":")
    if algorithm not in _SUPPORTED_DIGESTS:
        raise DigestNotSigned(f"digest algorithm {algorithm!r} cannot be checked against Notary")
    wanted = bytes.fromhex(wanted_hex)
    search = signers or roles
    matches: dict[str, tuple[str, TargetFile]] = {}
    for role in search:
        targets = repository.role_targets(role)
        if targets is None:
            continue
        for name, target in sorted(targets.targets.items()):
            signed = target.hashes.get(algorithm)
            if signed is not None and hmac.compare_digest(signed, wanted):
                matches.setdefault(role, (name, target))
                break
    if signers:
        missing = [role for role in signers if role not in matches]
        if missing:
            raise DigestNotSigned(
                f"{digest} is not signed in {repository.gun} by required signer(s) "
                f"{', '.join(missing)}"
            )
    elif not matches:
        raise DigestNotSigned(
            f"{digest} is not a signed target of {repository.gun}{_roles_clause(repository, roles)}"
        )
    role = next(iter(matches))
    name, target = matches[role]
    sha256 = _digest_of(target) or digest
    role_label = ",".join(signers) if signers else role
    return SignedTarget(repository.gun, name, sha256, target.length, role_label)


def _roles_clause(repository: VerifiedRepository, roles: Sequence[str]) -> str:
    if tuple(roles) == DOCKER_ROLE_ORDER:
        return ""
    return f" by {' or '.join(roles)}"


# --- inspect ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedTag:
    tag: str
    digest: str
    size: int
    signers: tuple[str, ...]


@dataclass(frozen=True)
class KeyHolder:
    """A signer or administrative role as ``inspect`` shows it: its name, keys and threshold."""

    role: str
    key_ids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class RepositoryReport:
    """What ``trustctl inspect`` shows, in the spirit of ``docker trust inspect``."""

    gun: str
    server: str
    signed_tags: tuple[SignedTag, ...]
    signers: tuple[KeyHolder, ...]
    administrative_keys: tuple[KeyHolder, ...]
    broken_roles: tuple[tuple[str, str], ...]


def signer_name(role: str) -> str:
    """docker's display name for a role: ``targets/alice`` -> ``alice``, ``targets`` -> admin."""
    if role == "targets":
        return "Repo Admin"
    return role.removeprefix("targets/")


def inspect_repository(repository: VerifiedRepository) -> RepositoryReport:
    by_tag: dict[tuple[str, str, int], list[str]] = {}
    roles = ["targets", *sorted(repository.delegated)]
    for role in roles:
        targets = repository.targets if role == "targets" else repository.delegated[role]
        for name, target in targets.targets.items():
            digest = _digest_of(target) or "?"
            by_tag.setdefault((name, digest, target.length), []).append(role)
    signed_tags = tuple(
        SignedTag(name, digest, size, tuple(signer_name(role) for role in sorted(found)))
        for (name, digest, size), found in sorted(by_tag.items())
    )
    signers = tuple(
        KeyHolder(signer_name(role), tuple(sorted(spec.keyids)), spec.threshold)
        for role, spec in sorted(repository.delegations.items())
    )
    admin = []
    for role, label in (("root", "Root"), ("targets", "Repository")):
        spec = repository.root.roles.get(role)
        if spec is not None:
            admin.append(KeyHolder(label, tuple(sorted(spec.keyids)), spec.threshold))
    broken = tuple((role, str(error)) for role, error in sorted(repository.broken.items()))
    return RepositoryReport(
        repository.gun, repository.server, signed_tags, signers, tuple(admin), broken
    )
