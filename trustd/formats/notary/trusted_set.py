"""The update state machine of one GUN: it only ever holds verified metadata.

Modelled on python-tuf's ngclient TrustedMetadataSet, with notary's rules: a trusted root
(cached, or a first root accepted by trust pinning), then timestamp, snapshot (by the length and
hashes the timestamp lists), targets and delegated targets (by what the snapshot lists). Each
update verifies the signature threshold, rollback against what is held and against the caller's
baseline (the versions this node trusted before), and expiry at the ``now`` passed in. Nothing
here reads a clock, a file or the network.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import datetime

from trustd.errors import (
    BadMetadata,
    DelegationViolation,
    ExpiredMetadata,
    PinningViolation,
    RollbackDetected,
    RootKeyChanged,
    RootRotationInvalid,
    ThresholdNotMet,
    TrustError,
)
from trustd.formats.notary.keys import PublicKey
from trustd.formats.notary.lifetime import root_keys
from trustd.formats.notary.metadata import (
    DelegatedRole,
    FileMeta,
    Root,
    SignedEnvelope,
    Snapshot,
    Targets,
    Timestamp,
    file_label,
    format_time,
    parse_envelope,
    parse_root,
    parse_snapshot,
    parse_targets,
    parse_timestamp,
    verify_threshold,
)
from trustd.formats.notary.pinning import check_root_certificates

_TOP_LEVEL_ORDER = ("root", "timestamp", "snapshot", "targets")


class TrustedSet:
    """Verified metadata of one GUN; every ``update_*`` either verifies fully or changes nothing."""

    def __init__(
        self, gun: str, root_data: bytes, baseline: Mapping[str, int] | None = None
    ) -> None:
        self._gun = gun
        envelope = parse_envelope(root_data, "root", gun)
        root = parse_root(envelope, gun)
        keys, threshold = root.role_keys("root")
        verify_threshold(envelope, keys, threshold, self._where("root"))
        self._root = root
        self._raw: dict[str, bytes] = {"root": root_data}
        self._timestamp: Timestamp | None = None
        self._snapshot: Snapshot | None = None
        self._targets: Targets | None = None
        self._delegated: dict[str, Targets] = {}
        # The FileMeta each held file was checked against, to notice when its parent changes.
        self._checked_against: dict[str, FileMeta] = {}
        self._baseline: dict[str, int] = {}
        for role, version in (baseline or {}).items():
            self.set_baseline(role, version)

    # --- what is held ----------------------------------------------------------------------------

    @property
    def gun(self) -> str:
        return self._gun

    @property
    def root(self) -> Root:
        return self._root

    @property
    def timestamp(self) -> Timestamp | None:
        return self._timestamp

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def targets(self) -> Targets | None:
        return self._targets

    def delegated(self, role: str) -> Targets | None:
        return self._delegated.get(role)

    def raw(self, role: str) -> bytes | None:
        """The exact verified bytes of ``role``, for the cache."""
        return self._raw.get(role)

    def expected_meta(self, role: str) -> FileMeta | None:
        """The length and hashes the next download of ``role`` must match, if known."""
        if role == "snapshot":
            return self._timestamp.snapshot_meta if self._timestamp else None
        if role == "timestamp" or self._snapshot is None:
            return None
        return self._snapshot.meta.get(role)

    def delegation(self, role: str) -> DelegatedRole | None:
        """The delegation of ``role`` by its held parent, paths narrowed by the parent's paths."""
        parent = _parent_of(role)
        if parent is None:
            return None
        parent_targets = self._held_targets(parent)
        if parent_targets is None:
            return None
        spec = parent_targets.delegations.role(role)
        if spec is None or parent == "targets":
            return spec
        parent_spec = self.delegation(parent)
        if parent_spec is None:
            return None
        # notary: a child path counts only if one of the parent's paths is a prefix of it.
        narrowed = tuple(p for p in spec.paths if any(p.startswith(q) for q in parent_spec.paths))
        return replace(spec, paths=narrowed)

    def set_baseline(self, role: str, version: int) -> None:
        """Raise the lowest version of ``role`` that will be accepted (from the node's cache)."""
        self._baseline[role] = max(version, self._baseline.get(role, 0))

    def check_fresh(self, now: datetime, roles: Collection[str] | None = None) -> None:
        """ExpiredMetadata for the first held role (of ``roles``, if given) past its expiry."""
        held: list[tuple[str, datetime]] = [("root", self._root.expires)]
        for role, metadata in (
            ("timestamp", self._timestamp),
            ("snapshot", self._snapshot),
            ("targets", self._targets),
        ):
            if metadata is not None:
                held.append((role, metadata.expires))
        held.extend((role, targets.expires) for role, targets in sorted(self._delegated.items()))
        for role, expires in held:
            if roles is None or role in roles:
                self._check_expiry(role, expires, now)

    # --- updates ---------------------------------------------------------------------------------

    def update_root(self, data: bytes, now: datetime) -> Root:
        """Rotate to a newer root signed by the trusted root's keys and by its own."""
        if data == self._raw["root"]:
            return self._root
        where = self._where("root")
        envelope = parse_envelope(data, "root", self._gun)
        new_root = parse_root(envelope, self._gun)
        old_keys, old_threshold = self._root.role_keys("root")
        not_signed_by_trusted: ThresholdNotMet | None = None
        try:
            verify_threshold(envelope, old_keys, old_threshold, where)
        except ThresholdNotMet as error:
            not_signed_by_trusted = error
            # A root in order by itself but foreign to this node: a re-created repository (its
            # versions start again, so this comes before the version checks) or a forgery.
            if self._is_self_consistent(envelope, new_root, now):
                older = (
                    f" and its version {new_root.version} is older than the trusted version "
                    f"{self._root.version}"
                    if new_root.version < self._root.version
                    else ""
                )
                raise RootKeyChanged(
                    self._gun,
                    f"new root not signed by the trusted root's root keys: {error}{older}",
                    root_key_ids(new_root),
                    root_key_ids(self._root),
                ) from None
        if new_root.version < self._root.version:
            raise RollbackDetected(
                f"{where} version {new_root.version} is older than the trusted version "
                f"{self._root.version}"
            )
        if new_root.version == self._root.version:
            return self._accept_resigned_root(envelope, data, where)
        if not_signed_by_trusted is not None:
            raise RootRotationInvalid(
                f"new root not signed by the trusted root's root keys: {not_signed_by_trusted}"
            )
        new_keys, new_threshold = new_root.role_keys("root")
        self._verify_rotation(envelope, new_keys, new_threshold, "its own root keys")
        try:
            check_root_certificates(self._gun, new_root, now)
        except PinningViolation as error:
            raise RootRotationInvalid(f"new {where} rejected: {error}") from None
        self._check_expiry("root", new_root.expires, now)
        self._root = new_root
        self._raw = {"root": data}
        # Everything else was verified with the old keys: it must be verified again.
        self._drop("timestamp", "snapshot", "targets", *self._delegated)
        return new_root

    def _accept_resigned_root(self, envelope: SignedEnvelope, data: bytes, where: str) -> Root:
        """The trusted root again with other signatures: benign, unless the body differs.

        ECDSA signs differently every time, and a second root key may add its signature; notary
        accepts either. A different signed body under the same version is equivocation.
        """
        trusted_body = parse_envelope(self._raw["root"], "root", self._gun).signed_bytes
        if envelope.signed_bytes != trusted_body:
            raise RootRotationInvalid(
                f"{where}: a root whose signed content differs from the trusted one under the "
                f"same version {self._root.version}"
            )
        keys, threshold = self._root.role_keys("root")
        self._verify_rotation(envelope, keys, threshold, "the trusted root's root keys")
        # Same keys and roles: everything verified with them stays verified.
        self._raw["root"] = data
        return self._root

    def update_timestamp(
        self, data: bytes, now: datetime, *, allow_expired: bool = False
    ) -> Timestamp:
        if not allow_expired:
            self._check_expiry("root", self._root.expires, now)
        envelope = parse_envelope(data, "timestamp", self._gun)
        timestamp = parse_timestamp(envelope, self._gun)
        self._verify_top_level(envelope, "timestamp")
        self._check_version("timestamp", timestamp.version, self._timestamp)
        if not allow_expired:
            self._check_expiry("timestamp", timestamp.expires, now)
        self._accept("timestamp", timestamp, data)
        self._timestamp = timestamp
        if self._snapshot is not None and self._checked_against.get("snapshot") != (
            timestamp.snapshot_meta
        ):
            self._drop("snapshot", "targets", *self._delegated)
        return timestamp

    def update_snapshot(
        self, data: bytes, now: datetime, *, allow_expired: bool = False
    ) -> Snapshot:
        if self._timestamp is None:
            raise TrustError(f"{self._where('snapshot')}: no verified timestamp to check it by")
        expected = self._timestamp.snapshot_meta
        expected.check(data, "snapshot.json", self._gun)
        envelope = parse_envelope(data, "snapshot", self._gun)
        snapshot = parse_snapshot(envelope, self._gun)
        self._verify_top_level(envelope, "snapshot")
        self._check_version("snapshot", snapshot.version, self._snapshot)
        if not allow_expired:
            self._check_expiry("snapshot", snapshot.expires, now)
        self._accept("snapshot", snapshot, data, expected)
        self._snapshot = snapshot
        if self._targets is not None and self._checked_against.get("targets") != (
            snapshot.meta.get("targets")
        ):
            self._drop("targets", *self._delegated)
        for role in sorted(self._delegated, key=lambda name: name.count("/")):
            if role in self._delegated and self._checked_against.get(role) != (
                snapshot.meta.get(role)
            ):
                self._drop(role, *self._descendants(role))
        return snapshot

    def update_targets(self, data: bytes, now: datetime, *, allow_expired: bool = False) -> Targets:
        expected = self._expected_from_snapshot("targets")
        expected.check(data, "targets.json", self._gun)
        envelope = parse_envelope(data, "targets", self._gun)
        targets = parse_targets(envelope, self._gun)
        self._verify_top_level(envelope, "targets")
        self._check_version("targets", targets.version, self._targets)
        if not allow_expired:
            self._check_expiry("targets", targets.expires, now)
        self._accept("targets", targets, data, expected)
        self._targets = targets
        # Delegations hang below targets: their keys and paths may have changed.
        self._drop(*self._delegated)
        return targets

    def update_delegated_targets(
        self, role: str, data: bytes, now: datetime, *, allow_expired: bool = False
    ) -> Targets:
        where = self._where(role)
        parent = _parent_of(role)
        if parent is None:
            raise DelegationViolation(f"{where}: {role!r} is not a delegated role name")
        parent_targets = self._held_targets(parent)
        if parent_targets is None:
            raise DelegationViolation(f"{where}: its parent {parent}.json is not verified")
        spec = self.delegation(role)
        if spec is None:
            raise DelegationViolation(f"{where}: {parent}.json does not delegate to {role}")
        expected = self._expected_from_snapshot(role)
        expected.check(data, f"{role}.json", self._gun)
        envelope = parse_envelope(data, role, self._gun)
        targets = parse_targets(envelope, self._gun)
        # Key IDs the parent names but does not list can never count towards the threshold.
        listed = parent_targets.delegations.keys
        keys = {k: listed[k] for k in spec.keyids if k in listed}
        verify_threshold(envelope, keys, spec.threshold, where)
        self._check_version(role, targets.version, self._delegated.get(role))
        if not allow_expired:
            self._check_expiry(role, targets.expires, now)
        for name in targets.targets:
            if not spec.allows(name):
                raise DelegationViolation(
                    f"{where}: target {name!r} is outside the paths delegated to {role} "
                    f"({', '.join(repr(p) for p in spec.paths) or 'none'})"
                )
        self._accept(role, targets, data, expected)
        self._drop(*self._descendants(role))
        self._delegated[role] = targets
        return targets

    # --- helpers ---------------------------------------------------------------------------------

    def _where(self, role: str) -> str:
        return file_label(role, self._gun)

    def _held_targets(self, role: str) -> Targets | None:
        return self._targets if role == "targets" else self._delegated.get(role)

    def _descendants(self, role: str) -> list[str]:
        return [name for name in self._delegated if name.startswith(role + "/")]

    def _expected_from_snapshot(self, role: str) -> FileMeta:
        if self._snapshot is None:
            raise TrustError(f"{self._where(role)}: no verified snapshot to check it by")
        expected = self._snapshot.meta.get(role)
        if expected is None:
            raise BadMetadata(f"{self._where('snapshot')} does not list {role}.json")
        return expected

    def _verify_top_level(self, envelope: SignedEnvelope, role: str) -> None:
        keys, threshold = self._root.role_keys(role)
        verify_threshold(envelope, keys, threshold, self._where(role))

    def _is_self_consistent(self, envelope: SignedEnvelope, root: Root, now: datetime) -> bool:
        """Whether ``root`` is signed by its own root keys: valid notary certificates of the GUN."""
        keys, threshold = root.role_keys("root")
        try:
            verify_threshold(envelope, keys, threshold, self._where("root"))
            check_root_certificates(self._gun, root, now)
        except TrustError:
            return False
        return True

    def _verify_rotation(
        self, envelope: SignedEnvelope, keys: Mapping[str, PublicKey], threshold: int, whose: str
    ) -> None:
        try:
            verify_threshold(envelope, keys, threshold, self._where("root"))
        except ThresholdNotMet as error:
            raise RootRotationInvalid(f"new root not signed by {whose}: {error}") from None

    def _check_version(self, role: str, version: int, held: object) -> None:
        held_version = getattr(held, "version", None)
        if held_version is not None and version < held_version:
            raise RollbackDetected(
                f"{self._where(role)} version {version} is older than the verified version "
                f"{held_version}"
            )
        floor = self._baseline.get(role)
        if floor is not None and version < floor:
            raise RollbackDetected(
                f"{self._where(role)} version {version} is older than cached version {floor}"
            )

    def _check_expiry(self, role: str, expires: datetime, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be a timezone-aware datetime")
        if now > expires:
            raise ExpiredMetadata(f"{self._where(role)} expired at {format_time(expires)}")

    def _accept(
        self,
        role: str,
        metadata: Timestamp | Snapshot | Targets,
        data: bytes,
        checked_against: FileMeta | None = None,
    ) -> None:
        self._raw[role] = data
        self.set_baseline(role, metadata.version)
        if checked_against is not None:
            self._checked_against[role] = checked_against

    def _drop(self, *roles: str) -> None:
        # The versions stay in the baseline: dropping metadata never reopens a rollback.
        for role in roles:
            self._raw.pop(role, None)
            self._checked_against.pop(role, None)
            if role == "timestamp":
                self._timestamp = None
            elif role == "snapshot":
                self._snapshot = None
            elif role == "targets":
                self._targets = None
            else:
                self._delegated.pop(role, None)


def root_key_ids(root: Root) -> tuple[tuple[str, str], ...]:
    """The root role's keys as (ID in root.json, canonical ID), in the root's order."""
    return tuple((key.key_id, key.canonical_id) for key in root_keys(root))


def _parent_of(role: str) -> str | None:
    if not role.startswith("targets/") or role.endswith("/") or "//" in role:
        return None
    return role.rsplit("/", 1)[0]
