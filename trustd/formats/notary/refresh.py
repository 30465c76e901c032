"""The steps of one refresh of a GUN's trust data: network -> verifying core -> disk.

The order follows the Notary client and TUF: the trusted root (cached, or a first root accepted by
trust pinning), then timestamp, snapshot (by the hash the timestamp gives), a root rotation when
the snapshot names a different root, targets, and every delegated role. Every refresh fetches
``timestamp.json`` again, so a re-signed or revoked tag is seen at once; the rest is fetched only
when the timestamp says it changed.

During an outage (``outage`` set, no transport) the same steps run over what this node holds,
as notary's own client falls back: the cached files must still verify and be unexpired, and
nothing missing from the cache is fetched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from trustd.errors import (
    BadSignature,
    ExpiredMetadata,
    MetadataTooLarge,
    NotaryUnavailable,
    NoTrustData,
    RollbackDetected,
    RootRotationInvalid,
    TrustError,
)
from trustd.formats.notary.cached import load_cached_set
from trustd.formats.notary.held_sets import HeldSets
from trustd.formats.notary.metadata import TOP_LEVEL_ROLES, FileMeta, parse
from trustd.formats.notary.pinning import TrustPinning, check_first_root
from trustd.formats.notary.store import MetadataStore
from trustd.formats.notary.transport import NotaryTransport, NotFound
from trustd.formats.notary.trusted_set import TrustedSet
from trustd.formats.notary.view import VerifiedRepository, verified_view
from trustd.net.credentials import Credentials

log = logging.getLogger(__name__)

# A rotation can be followed by at most this many more during one refresh; more means a server
# that keeps changing its story, and the refresh is abandoned.
_MAX_ROOT_ROTATIONS = 8
# How many root versions a node that was offline for a long time walks to catch up.
_MAX_ROOT_CHAIN = 64


@dataclass(frozen=True)
class SizeLimits:
    """Caps on metadata downloads (config: ``root_max_bytes``, ``timestamp_max_bytes``,
    ``max_metadata_bytes``). A file whose parent signs its length is read no further than that
    length, and refused unread when the signed length is over its cap: a signature on a huge
    length makes it no smaller."""

    root: int = 1024 * 1024
    timestamp: int = 64 * 1024
    other: int = 16 * 1024 * 1024


class Refresh:
    """The steps of one refresh, kept together so each reads as the protocol says."""

    def __init__(
        self,
        store: MetadataStore,
        held: HeldSets,
        gun: str,
        transport: NotaryTransport | None,
        pinning: TrustPinning,
        now: datetime,
        *,
        credentials: Credentials | None = None,
        limits: SizeLimits | None = None,
        outage: NotaryUnavailable | None = None,
    ) -> None:
        # Without a transport (during ``outage``) the refresh works from held and cached
        # files only: the same verification, no downloads.
        self.store = store
        self.held = held
        self.limits = limits or SizeLimits()
        self.gun = gun
        self.transport = transport
        self.pinning = pinning
        self.credentials = credentials
        self.now = now
        self.outage = outage
        self.server = transport.endpoint.base_url if transport is not None else "the cache"
        # Names of the files this refresh downloaded, in order (for the cache hit/miss report).
        self.downloaded: list[str] = []

    def run(self) -> VerifiedRepository:
        trusted = self.held.get(self.gun) or self._load_from_cache()
        if trusted is None:
            if self.outage is not None:
                raise NotaryUnavailable(
                    f"{self.outage}; this node has no trust data of {self.gun} to fall back on"
                )
            trusted = self._bootstrap()
        try:
            for _ in range(_MAX_ROOT_ROTATIONS):
                if not self._update_top_level(trusted):
                    break
            else:
                raise TrustError(
                    f"{self.gun}: notary at {self.server} rotated its root more than "
                    f"{_MAX_ROOT_ROTATIONS} times in one refresh"
                )
            broken = self._update_delegations(trusted)
            trusted.check_fresh(self.now, roles=TOP_LEVEL_ROLES)
        except TrustError as error:
            # What is held stays verified; a failed refresh must not leave half an update behind
            # for the next caller, so start the next refresh from the cache again.
            self.held.drop(self.gun)
            if self.outage is not None and not isinstance(error, NotaryUnavailable):
                raise NotaryUnavailable(
                    f"{self.outage}; the trust data of {self.gun} cached on this node cannot "
                    f"be used: {error}"
                ) from error
            raise
        self.held.keep(self.gun, trusted)
        if self.outage is None:
            self.store.mark_confirmed(self.gun, self.now)
        return verified_view(trusted, self.server, self.now, broken)

    # --- root ------------------------------------------------------------------------------------

    def _load_from_cache(self) -> TrustedSet | None:
        return load_cached_set(self.store, self.gun, self.now)

    def fetch_root(self) -> bytes:
        """The root the server serves now, unverified (``Updater.replace_root`` pins it)."""
        return self._fetch("root", self.limits.root, missing_means_no_data=True)

    def _bootstrap(self) -> TrustedSet:
        """First contact with a GUN: the server's root, accepted only through trust pinning."""
        data = self._fetch("root", self.limits.root, missing_means_no_data=True)
        trusted = TrustedSet(self.gun, data)
        check_first_root(self.gun, trusted.root, data, self.now, self.pinning)
        self.store.save(self.gun, "root", data)
        log.info(
            "trusting first root of %s (version %d) from %s",
            self.gun,
            trusted.root.version,
            self.server,
        )
        return trusted

    def _rotate_root(self, trusted: TrustedSet, expected: FileMeta | None) -> None:
        name = (
            f"root.{expected.sha256.hex()}" if expected is not None and expected.sha256 else "root"
        )
        if expected is None:
            limit = self.limits.root
        else:
            limit = self._signed_cap("root", expected, self.limits.root, "root_max_bytes")
        data = self._fetch_by_hash_or_name(name, "root", limit)
        if expected is not None:
            expected.check(data, "root.json", self.gun)
        if data == trusted.raw("root"):
            return
        old_version = trusted.root.version
        try:
            trusted.update_root(data, self.now)
        except RootRotationInvalid:
            # A node that missed several rotations walks the chain: each root is accepted only
            # when signed by its predecessor, as the server keeps every root by version.
            gap = _unverified_version(data, self.gun) - old_version
            if not 1 < gap <= _MAX_ROOT_CHAIN:
                raise
            for version in range(old_version + 1, old_version + gap):
                step = self._fetch(f"{version}.root", self.limits.root)
                trusted.update_root(step, self.now)
                self.store.save(self.gun, "root", step)
            trusted.update_root(data, self.now)
        self.store.save(self.gun, "root", data)
        if trusted.root.version == old_version:
            log.info("root of %s (version %d) was re-signed", self.gun, old_version)
            return
        log.warning(
            "root of %s rotated from version %d to %d", self.gun, old_version, trusted.root.version
        )

    # --- timestamp, snapshot, targets ------------------------------------------------------------

    def _update_top_level(self, trusted: TrustedSet) -> bool:
        """One pass over timestamp, snapshot and targets; True when the root rotated."""
        if self.outage is not None:
            # notary's fallback: the cached timestamp, checked for expiry below.
            data = trusted.raw("timestamp")
            if data is None:
                raise NotaryUnavailable(
                    f"{self.outage}; no timestamp.json of {self.gun} is cached on this node"
                )
        else:
            data = self._fetch("timestamp", self.limits.timestamp, missing_means_no_data=True)
        if data != trusted.raw("timestamp"):
            try:
                trusted.update_timestamp(data, self.now)
            except (BadSignature, RollbackDetected):
                # A repository deleted and re-created starts its versions again, and a server
                # that kept its timestamp key then serves "older" timestamps: the root says so.
                if self._newer_root_after_bad_signature(trusted):
                    return True
                raise
            self.store.save(self.gun, "timestamp", data)

        if trusted.snapshot is None:
            data = self._fetch_expected(trusted, "snapshot")
            try:
                trusted.update_snapshot(data, self.now)
            except (BadSignature, RollbackDetected):
                # The snapshot names the new root only once it verifies, and a snapshot key
                # rotated to the server is signed by a key only that new root lists.
                if self._newer_root_after_bad_signature(trusted):
                    return True
                raise
            self.store.save(self.gun, "snapshot", data)

        assert trusted.snapshot is not None  # fetched or held above
        root_meta = trusted.snapshot.meta.get("root")
        if root_meta is not None and not root_meta.matches(trusted.raw("root")):
            self._rotate_root(trusted, root_meta)
            return True

        if trusted.targets is None:
            data = self._fetch_expected(trusted, "targets")
            trusted.update_targets(data, self.now)
            self.store.save(self.gun, "targets", data)
        return False

    def _newer_root_after_bad_signature(self, trusted: TrustedSet) -> bool:
        """Whether the server's root.json rotated the trusted root (as the notary client does
        after a failed update: a rotated timestamp or snapshot key is only in the new root). If
        the root is unchanged, the caller's error stands; a root signed by other keys than the
        trusted ones raises RootKeyChanged instead."""
        before = trusted.raw("root")
        self._rotate_root(trusted, None)
        return trusted.raw("root") != before

    # --- delegations -----------------------------------------------------------------------------

    def _update_delegations(self, trusted: TrustedSet) -> dict[str, TrustError]:
        """Load every delegated role the snapshot lists, parents before children."""
        snapshot = trusted.snapshot
        assert snapshot is not None  # the top level is loaded before delegations
        listed = sorted(
            (role for role in snapshot.meta if role.startswith("targets/")),
            key=lambda role: (role.count("/"), role),
        )
        broken: dict[str, TrustError] = {}
        for role in listed:
            parent = role.rsplit("/", 1)[0]
            if parent in broken:
                broken[role] = broken[parent]
                continue
            if trusted.delegation(role) is None:
                continue  # listed in the snapshot but delegated by no loaded role: unreachable
            held = trusted.delegated(role)
            if held is not None:
                # Unchanged since the last refresh, but it may have expired while held: that
                # breaks this role only, as it would had it been fetched expired.
                try:
                    trusted.check_fresh(self.now, roles=(role,))
                except ExpiredMetadata as expired:
                    log.warning("delegated role %s of %s is unusable: %s", role, self.gun, expired)
                    broken[role] = expired
                continue
            try:
                data = self._load_cached_delegation(trusted, role)
                if data is None:
                    data = self._fetch_expected(trusted, role)
                    trusted.update_delegated_targets(role, data, self.now)
                    self.store.save(self.gun, role, data)
            except TrustError as error:
                log.warning("delegated role %s of %s is unusable: %s", role, self.gun, error)
                broken[role] = error
        if any(name.startswith("snapshot") for name in self.downloaded):
            # Only a new snapshot can drop a role; listing the cache on every warm lookup would
            # be disk I/O for nothing. A removed delegation may stay listed in the snapshot, so
            # what counts is whether any loaded role still delegates to it.
            for cached in self.store.cached_roles(self.gun):
                if cached.startswith("targets/") and (
                    cached not in snapshot.meta or trusted.delegation(cached) is None
                ):
                    self.store.delete(self.gun, cached)
        return broken

    def _load_cached_delegation(self, trusted: TrustedSet, role: str) -> bytes | None:
        data = self.store.load(self.gun, role)
        expected = trusted.expected_meta(role)
        if data is None or expected is None or not expected.matches(data):
            return None
        trusted.update_delegated_targets(role, data, self.now)
        return data

    # --- fetching --------------------------------------------------------------------------------

    def _fetch_expected(self, trusted: TrustedSet, role: str) -> bytes:
        """Download ``role`` by the hash its parent metadata gives, capped at the given length."""
        expected = trusted.expected_meta(role)
        if expected is None:
            raise NoTrustData(
                f"{self.gun}: {'timestamp' if role == 'snapshot' else 'snapshot'}.json on "
                f"{self.server} does not list {role}.json"
            )
        limit = self._signed_cap(role, expected, self.limits.other, "max_metadata_bytes")
        if expected.sha256 is not None:
            name = f"{role}.{expected.sha256.hex()}"
            return self._fetch_by_hash_or_name(name, role, limit)
        return self._fetch(role, limit)

    def _signed_cap(self, role: str, expected: FileMeta, limit: int, setting: str) -> int:
        """How much of ``role`` to read: its signed length, if that is within ``limit``."""
        if expected.length > limit:
            parent = "timestamp" if role == "snapshot" else "snapshot"
            raise MetadataTooLarge(
                f"{role}.json for {self.gun} on {self.server} is {expected.length} bytes as "
                f"{parent}.json lists it, over the {limit}-byte limit ({setting})"
            )
        return expected.length

    def _fetch_by_hash_or_name(self, hashed_name: str, role: str, limit: int) -> bytes:
        # Fetching by hash is immune to the file changing between two requests; servers that do
        # not offer it get the plain name, which the hash check then binds just the same.
        try:
            return self._download(hashed_name, limit)
        except NotFound:
            return self._fetch(role, limit)

    def _fetch(self, role: str, limit: int, *, missing_means_no_data: bool = False) -> bytes:
        try:
            return self._download(role, limit)
        except NotFound:
            if missing_means_no_data:
                raise NoTrustData(f"no trust data for {self.gun} on {self.server}") from None
            raise NoTrustData(f"{role}.json of {self.gun} is missing on {self.server}") from None

    def _download(self, name: str, limit: int) -> bytes:
        if self.transport is None:
            raise NotaryUnavailable(
                f"{self.outage}; {name}.json of {self.gun} is not cached on this node"
            )
        data = self.transport.fetch(self.gun, name, limit, self.credentials)
        self.downloaded.append(name)
        return data


def _unverified_version(data: bytes, gun: str) -> int:
    """The version a root claims, read before verification only to know how far to walk."""
    _, root = parse(data, "root", gun)
    return root.version
