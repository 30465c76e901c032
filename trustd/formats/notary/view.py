"""What a refresh hands out: an immutable view of one GUN's verified trust data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from trustd.errors import TrustError
from trustd.formats.notary.metadata import DelegatedRole, Delegations, Root, Targets
from trustd.formats.notary.trusted_set import TrustedSet


@dataclass(frozen=True)
class VerifiedRepository:
    """An immutable view of one GUN's verified trust data at one moment."""

    gun: str
    server: str
    verified_at: datetime
    root: Root
    targets: Targets
    delegated: Mapping[str, Targets]
    delegations: Mapping[str, DelegatedRole]
    # Delegated roles that failed verification, with why. Consulting one is an error; roles that
    # are never consulted do not make the whole repository unusable.
    broken: Mapping[str, TrustError] = field(default_factory=dict)
    timestamp_version: int = 0
    snapshot_version: int = 0
    # Set when the server could not be reached and this view comes from the node's cache:
    # seconds since the server last confirmed this data, and why it could not now.
    cached_age: float | None = None
    outage: str | None = None
    # When each verified role held here expires (root, timestamp, snapshot, targets, delegations).
    expires: Mapping[str, datetime] = field(default_factory=dict)

    @property
    def from_cache(self) -> bool:
        return self.cached_age is not None

    def role_targets(self, role: str) -> Targets | None:
        """The verified targets of ``role``; raises the stored error if the role is broken."""
        if role in self.broken:
            raise self.broken[role]
        if role == "targets":
            return self.targets
        return self.delegated.get(role)


def verified_view(
    trusted: TrustedSet, server: str, now: datetime, broken: Mapping[str, TrustError]
) -> VerifiedRepository:
    """An immutable view of what ``trusted`` holds (a cache read may hold less than a refresh)."""
    delegated: dict[str, Targets] = {}
    delegations: dict[str, DelegatedRole] = {}
    expires = {"root": trusted.root.expires}
    for role, held in (
        ("timestamp", trusted.timestamp),
        ("snapshot", trusted.snapshot),
        ("targets", trusted.targets),
    ):
        if held is not None:
            expires[role] = held.expires
    for role in trusted.snapshot.meta if trusted.snapshot is not None else ():
        if not role.startswith("targets/"):
            continue
        spec = trusted.delegation(role)
        if spec is not None:
            delegations[role] = spec
        loaded = trusted.delegated(role)
        if loaded is not None and role not in broken:
            delegated[role] = loaded
            expires[role] = loaded.expires
    return VerifiedRepository(
        gun=trusted.gun,
        server=server,
        verified_at=now,
        root=trusted.root,
        targets=trusted.targets if trusted.targets is not None else NO_TARGETS,
        delegated=delegated,
        delegations=delegations,
        broken=dict(broken),
        timestamp_version=trusted.timestamp.version if trusted.timestamp is not None else 0,
        snapshot_version=trusted.snapshot.version if trusted.snapshot is not None else 0,
        expires=expires,
    )


# A view read from a cache that holds a root only: no targets are signed.
NO_TARGETS = Targets(
    version=0,
    expires=datetime.min.replace(tzinfo=UTC),
    targets={},
    delegations=Delegations(keys={}, roles=()),
)
