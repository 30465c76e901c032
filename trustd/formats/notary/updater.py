"""One refresh of a GUN's trust data: network -> verifying core -> disk.

The order follows the Notary client and TUF: the trusted root (cached, or a first root accepted by
trust pinning), then timestamp, snapshot (by the hash the timestamp gives), a root rotation when
the snapshot names a different root, targets, and every delegated role. Every lookup fetches
``timestamp.json`` again, so a re-signed or revoked tag is seen at once; the rest is fetched only
when the timestamp says it changed.

Concurrent lookups of one GUN share one refresh (single flight), so a burst of parallel pulls
costs the Notary server one round of requests.

A refresh that succeeded less than ``freshness_window`` seconds ago answers later lookups of the
same GUN without any request (kubelet asks ImageStatus, PullImage and ImageStatus again for one
container start); a re-signed or removed tag is therefore seen at most that much later.

When the server cannot be reached, ``cached`` answers from what this node verified before, as
notary's own client does: the cached files must still verify and be unexpired, and nothing
missing from the cache is fetched. The policy decides whether that is acceptable.

An optional ``on_refresh(hit)`` callback is told, once per successful refresh, whether it was
answered from what this node already held (nothing but ``timestamp.json`` downloaded) or had to
download more; the daemon counts these as cache hits and misses.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from trustd.errors import (
    AuthenticationFailed,
    BadSignature,
    ExpiredMetadata,
    NotaryUnavailable,
    NoTrustData,
    RollbackDetected,
    RootRotationInvalid,
    TrustError,
)
from trustd.formats.notary.metadata import (
    DelegatedRole,
    Delegations,
    FileMeta,
    Root,
    Targets,
    file_label,
    format_time,
    parse,
)
from trustd.formats.notary.pinning import TrustPinning, check_first_root
from trustd.formats.notary.store import MetadataStore
from trustd.formats.notary.transport import NotaryTransport, NotFound
from trustd.formats.notary.trusted_set import TrustedSet
from trustd.net.credentials import Credentials

log = logging.getLogger(__name__)

TOP_LEVEL_ROLES = ("root", "timestamp", "snapshot", "targets")
# A rotation can be followed by at most this many more during one refresh; more means a server
# that keeps changing its story, and the refresh is abandoned.
_MAX_ROOT_ROTATIONS = 8
# How many root versions a node that was offline for a long time walks to catch up.
_MAX_ROOT_CHAIN = 64
# Results kept for the freshness window are pruned once this many GUNs are held.
_RECENT_PRUNE_SIZE = 256


@dataclass(frozen=True)
class SizeLimits:
    """Caps on downloads whose length no signed metadata gives in advance."""

    root: int = 1024 * 1024
    timestamp: int = 64 * 1024
    other: int = 16 * 1024 * 1024


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


def utc_now() -> datetime:
    return datetime.now(UTC)


class Updater:
    """Keeps the verified trust data of every GUN it is asked about, in memory and on disk."""

    def __init__(
        self,
        store: MetadataStore,
        clock: Callable[[], datetime] = utc_now,
        on_refresh: Callable[[bool], None] | None = None,
        on_verified: Callable[[VerifiedRepository], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_refresh = on_refresh
        self.freshness_window = 0.0  # seconds; set from the config by the engine
        # Per GUN: the last verified result and when (monotonic) the server confirmed it.
        self._recent: dict[str, tuple[VerifiedRepository, float]] = {}
        # Told every verified view a refresh produced (the daemon's expiry gauges).
        self.on_verified = on_verified
        # The verified set held per GUN, with the stamp of the cached root it goes with: when
        # another process replaces or removes that root (``trustctl`` repairing a re-keyed
        # repository), the held set is dropped and the cache is read again.
        self._sets: dict[str, tuple[TrustedSet, tuple[int, int, int] | None]] = {}
        self._lock = threading.Lock()
        # The refresh in flight per GUN, with the credentials it runs with.
        self._inflight: dict[str, tuple[Future[VerifiedRepository], Credentials | None]] = {}

    def refresh(
        self,
        gun: str,
        transport: NotaryTransport,
        pinning: TrustPinning,
        credentials: Credentials | None = None,
        limits: SizeLimits | None = None,
    ) -> VerifiedRepository:
        """Fetch and verify the current trust data of ``gun``; shared by concurrent callers."""
        recent = self._recent_result(gun)
        if recent is not None:
            return recent
        while True:
            with self._lock:
                joined = self._inflight.get(gun)
                if joined is None:
                    pending: Future[VerifiedRepository] = Future()
                    self._inflight[gun] = (pending, credentials)
                    break
            shared, leader_credentials = joined
            try:
                return shared.result()
            except AuthenticationFailed:
                # The refresh this call joined ran with someone else's credentials (an
                # ImageStatus carries none); a pull with its own gets its own try.
                if credentials == leader_credentials:
                    raise
        try:
            refresh = _Refresh(self, gun, transport, pinning, credentials, limits or SizeLimits())
            with self.store.locked(gun):
                result = refresh.run()
        except BaseException as error:
            pending.set_exception(error)
            raise
        else:
            with self._lock:
                self._remember(gun, result)
            pending.set_result(result)
            self._report(refresh.downloaded == ["timestamp"])
            self._tell_verified(result)
            return result
        finally:
            with self._lock:
                del self._inflight[gun]

    def cached(
        self, gun: str, pinning: TrustPinning, outage: NotaryUnavailable
    ) -> VerifiedRepository:
        """The trust data of ``gun`` this node verified before, for use while ``outage`` lasts.

        Loaded and verified again from what is held or cached, never downloaded; it must be
        unexpired now. Raises NotaryUnavailable (naming the outage) when nothing usable is held.
        """
        refresh = _Refresh(self, gun, None, pinning, None, SizeLimits(), outage=outage)
        with self.store.locked(gun):
            view = refresh.run()
        confirmed = self.store.confirmed_at(gun)
        age = 0.0 if confirmed is None else max((refresh.now - confirmed).total_seconds(), 0.0)
        return replace(view, cached_age=age, outage=str(outage))

    def _remember(self, gun: str, result: VerifiedRepository) -> None:
        """Keep ``result`` for the window; drop entries past it (hold ``_lock``)."""
        now = time.monotonic()
        if len(self._recent) >= _RECENT_PRUNE_SIZE:
            for stale in [
                g for g, (_, at) in self._recent.items() if now - at >= self.freshness_window
            ]:
                del self._recent[stale]
        self._recent[gun] = (result, now)

    def forget_recent(self, gun: str | None = None) -> None:
        """Drop the result held for the freshness window for ``gun`` (every GUN's if None).

        After a config change, or after this process forgot or re-pinned ``gun``: another
        process (the daemon) keeps its own result for at most the window.
        """
        with self._lock:
            if gun is None:
                self._recent.clear()
            else:
                self._recent.pop(gun, None)

    def _recent_result(self, gun: str) -> VerifiedRepository | None:
        if self.freshness_window <= 0:
            return None
        with self._lock:
            recent = self._recent.get(gun)
        if recent is None or time.monotonic() - recent[1] >= self.freshness_window:
            return None
        return recent[0]

    def _report(self, hit: bool) -> None:
        if self.on_refresh is None:
            return
        try:
            self.on_refresh(hit)
        except Exception:
            # Counting must never turn a verified answer into a failed lookup.
            log.exception("the on_refresh callback failed")

    def _tell_verified(self, repository: VerifiedRepository) -> None:
        if self.on_verified is None:
            return
        try:
            self.on_verified(repository)
        except Exception:
            log.exception("the on_verified callback failed")

    # --- the cache without the network (trustctl, the daemon's expiry scan) ----------------------

    def cached_repository(self, gun: str) -> VerifiedRepository | None:
        """What this node holds for ``gun``, read from the cache and verified again; no network.

        Expired files count (the point is to see what expires); None when nothing is cached.
        A cached root that no longer verifies raises TrustError, as a refresh would.
        """
        with self.store.locked(gun):
            trusted = load_cached_set(self.store, gun, self.clock(), delegations=True)
        if trusted is None:
            return None
        return verified_view(trusted, "cache", self.clock(), {})

    def forget(self, gun: str) -> Root | None:
        """Drop everything this node holds for ``gun``; the next lookup trusts a first root again.

        Waits for a refresh of ``gun`` in flight (in any process sharing the state directory).
        Returns the root that was trusted, if it still verified, for the record.
        """
        with self.store.locked(gun):
            old = _cached_root(self.store, gun)
            self.store.forget(gun)
            self._keep_set(gun, None)
            self.forget_recent(gun)
        return old

    def replace_root(
        self,
        gun: str,
        transport: NotaryTransport,
        pinning: TrustPinning,
        limits: SizeLimits | None = None,
    ) -> tuple[Root | None, Root]:
        """Forget ``gun`` and trust the root the server serves now, through ``pinning`` only.

        Under the GUN's lock, so no refresh runs between the check and the replacement. Returns
        (the root trusted before, if it verified; the root trusted now). Nothing changes unless
        the served root satisfies ``pinning``.
        """
        refresh = _Refresh(self, gun, transport, pinning, None, limits or SizeLimits())
        with self.store.locked(gun):
            old = _cached_root(self.store, gun)
            data = refresh._fetch("root", refresh.limits.root, missing_means_no_data=True)
            trusted = TrustedSet(gun, data)
            check_first_root(gun, trusted.root, data, refresh.now, pinning)
            self.store.forget(gun)
            self.store.save(gun, "root", data)
            self._keep_set(gun, None)
            self.forget_recent(gun)
        return old, trusted.root

    # The trusted set of a GUN is only touched by the single refresh in flight for that GUN,
    # which holds the GUN's cross-process lock.
    def _held_set(self, gun: str) -> TrustedSet | None:
        with self._lock:
            held = self._sets.get(gun)
        if held is None:
            return None
        trusted, stamp = held
        if stamp != self.store.root_stamp(gun):
            log.info("the cached root of %s changed on disk; reading the cache again", gun)
            return None
        return trusted

    def _keep_set(self, gun: str, trusted: TrustedSet | None) -> None:
        stamp = None if trusted is None else self.store.root_stamp(gun)
        with self._lock:
            if trusted is None:
                self._sets.pop(gun, None)
            else:
                self._sets[gun] = (trusted, stamp)


class _Refresh:
    """The steps of one refresh, kept together so each reads as the protocol says."""

    def __init__(
        self,
        updater: Updater,
        gun: str,
        transport: NotaryTransport | None,
        pinning: TrustPinning,
        credentials: Credentials | None,
        limits: SizeLimits,
        outage: NotaryUnavailable | None = None,
    ) -> None:
        # Without a transport (during ``outage``) the refresh works from held and cached
        # files only: the same verification, no downloads.
        self.updater = updater
        self.store = updater.store
        self.limits = limits
        self.gun = gun
        self.transport = transport
        self.pinning = pinning
        self.credentials = credentials
        self.now = updater.clock()
        self.outage = outage
        self.server = transport.endpoint.base_url if transport is not None else "the cache"
        # Names of the files this refresh downloaded, in order (for the cache hit/miss report).
        self.downloaded: list[str] = []

    def run(self) -> VerifiedRepository:
        trusted = self.updater._held_set(self.gun) or self._load_from_cache()
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
            self._check_top_level_fresh(trusted)
        except TrustError as error:
            # What is held stays verified; a failed refresh must not leave half an update behind
            # for the next caller, so start the next refresh from the cache again.
            self.updater._keep_set(self.gun, None)
            if self.outage is not None and not isinstance(error, NotaryUnavailable):
                raise NotaryUnavailable(
                    f"{self.outage}; the trust data of {self.gun} cached on this node cannot "
                    f"be used: {error}"
                ) from error
            raise
        self.updater._keep_set(self.gun, trusted)
        if self.outage is None:
            self.store.mark_confirmed(self.gun, self.now)
        return self._view(trusted, broken)

    # --- root ------------------------------------------------------------------------------------

    def _load_from_cache(self) -> TrustedSet | None:
        return load_cached_set(self.store, self.gun, self.now)

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
        name = f"root.{expected.hashes['sha256'].hex()}" if _has_sha256(expected) else "root"
        limit = expected.length if expected else self.limits.root
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

        root_meta = trusted.snapshot.meta.get("root")
        if root_meta is not None and not _matches(root_meta, trusted.raw("root")):
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
        listed = sorted(
            (role for role in trusted.snapshot.meta if role.startswith("targets/")),
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
                expired = self._expired(role, held.expires)
                if expired is not None:
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
                    cached not in trusted.snapshot.meta or trusted.delegation(cached) is None
                ):
                    self.store.delete(self.gun, cached)
        return broken

    def _check_top_level_fresh(self, trusted: TrustedSet) -> None:
        """ExpiredMetadata for a held root, timestamp, snapshot or targets past its expiry.

        Files fetched in this refresh were checked as they were verified; held ones were not.
        Delegated roles are left to ``_update_delegations``, which breaks only the expired role.
        """
        for role, metadata in (
            ("root", trusted.root),
            ("timestamp", trusted.timestamp),
            ("snapshot", trusted.snapshot),
            ("targets", trusted.targets),
        ):
            expired = None if metadata is None else self._expired(role, metadata.expires)
            if expired is not None:
                raise expired

    def _expired(self, role: str, expires: datetime) -> ExpiredMetadata | None:
        if self.now <= expires:
            return None
        return ExpiredMetadata(f"{file_label(role, self.gun)} expired at {format_time(expires)}")

    def _load_cached_delegation(self, trusted: TrustedSet, role: str) -> bytes | None:
        data = self.store.load(self.gun, role)
        expected = trusted.expected_meta(role)
        if data is None or expected is None or not _matches(expected, data):
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
        if _has_sha256(expected):
            name = f"{role}.{expected.hashes['sha256'].hex()}"
            return self._fetch_by_hash_or_name(name, role, expected.length)
        return self._fetch(role, expected.length)

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

    def _view(self, trusted: TrustedSet, broken: dict[str, TrustError]) -> VerifiedRepository:
        return verified_view(trusted, self.server, self.now, broken)


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
        targets=trusted.targets if trusted.targets is not None else _NO_TARGETS,
        delegated=delegated,
        delegations=delegations,
        broken=dict(broken),
        timestamp_version=trusted.timestamp.version if trusted.timestamp is not None else 0,
        snapshot_version=trusted.snapshot.version if trusted.snapshot is not None else 0,
        expires=expires,
    )


def load_cached_set(
    store: MetadataStore, gun: str, now: datetime, *, delegations: bool = False
) -> TrustedSet | None:
    """The trusted set of ``gun`` rebuilt from the cache, every file verified again.

    Cached files were verified before they were written; loading them again restores the
    versions this node has seen (rollback protection across restarts) and spares downloads when
    the server's timestamp has not changed. An expired cached file is still a valid baseline.
    Stops at the first file that is missing or no longer fits; ``delegations`` also loads the
    delegated roles, parents first (the refresh loads those itself as it needs them).
    """
    root_data = store.load(gun, "root")
    if root_data is None:
        return None
    try:
        trusted = TrustedSet(gun, root_data)
    except TrustError as error:
        raise TrustError(
            f"the cached root of {gun} ({store.path(gun, 'root')}) no longer verifies "
            f"({error}); trustd will not silently trust a new root: inspect the file, then "
            f"run trustctl forget-root {gun} to re-establish trust"
        ) from error
    for role, update in (
        ("timestamp", trusted.update_timestamp),
        ("snapshot", trusted.update_snapshot),
        ("targets", trusted.update_targets),
    ):
        data = store.load(gun, role)
        if data is None:
            return trusted
        try:
            update(data, now, allow_expired=True)
        except TrustError as error:
            log.warning("ignoring cached %s.json of %s: %s", role, gun, error)
            return trusted
    if delegations:
        assert trusted.snapshot is not None  # loaded above
        listed = sorted(
            (role for role in trusted.snapshot.meta if role.startswith("targets/")),
            key=lambda role: (role.count("/"), role),
        )
        for role in listed:
            data = store.load(gun, role)
            expected = trusted.expected_meta(role)
            if data is None or expected is None or trusted.delegation(role) is None:
                continue
            try:
                trusted.update_delegated_targets(role, data, now, allow_expired=True)
            except TrustError as error:
                log.debug("not reading cached %s.json of %s: %s", role, gun, error)
    return trusted


def _cached_root(store: MetadataStore, gun: str) -> Root | None:
    data = store.load(gun, "root")
    if data is None:
        return None
    try:
        return TrustedSet(gun, data).root
    except TrustError:
        return None  # forgetting a root that no longer verifies is the repair for it


# A view read from a cache that holds a root only: no targets are signed.
_NO_TARGETS = Targets(
    version=0,
    expires=datetime.min.replace(tzinfo=UTC),
    targets={},
    delegations=Delegations(keys={}, roles=()),
)


def _unverified_version(data: bytes, gun: str) -> int:
    """The version a root claims, read before verification only to know how far to walk."""
    _, root = parse(data, "root", gun)
    return root.version


def _has_sha256(meta: FileMeta | None) -> bool:
    return meta is not None and "sha256" in meta.hashes


def _matches(meta: FileMeta, data: bytes | None) -> bool:
    if data is None or len(data) != meta.length:
        return False
    for algorithm, expected in meta.hashes.items():
        if algorithm in ("sha256", "sha512") and hashlib.new(algorithm, data).digest() != expected:
            return False
    return True
