"""The refresh protocol and resolution over files the real notary-server served.

The transport here serves those files from memory so the unit tests can count requests and
change what the "server" says; the end-to-end tests run the same code against notary-server.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.attacks import resign
from tests.stack.notary_keys import load_notary_key
from trustd.errors import (
    AuthenticationFailed,
    DigestNotSigned,
    MetadataTooLarge,
    NotaryUnavailable,
    NoTrustData,
    PinningViolation,
    RollbackDetected,
    TagNotSigned,
)
from trustd.formats.notary.held_sets import HeldSets
from trustd.formats.notary.pinning import TrustPinning
from trustd.formats.notary.refresh import SizeLimits
from trustd.formats.notary.resolution import inspect_repository, resolve_digest, resolve_tag
from trustd.formats.notary.store import MetadataStore
from trustd.formats.notary.transport import NotaryEndpoint, NotFound
from trustd.formats.notary.trusted_set import TrustedSet
from trustd.formats.notary.updater import Updater
from trustd.formats.notary.view import VerifiedRepository
from trustd.formats.single_flight import SingleFlight
from trustd.net.credentials import Credentials
from trustd.net.deadline import call_deadline

FIXTURES = Path(__file__).parent.parent / "data" / "notary"
# The CLI's private root key file is named by the canonical ID of the certificate's public key.
ROOT_KEY_FILE = "1f09cda879ac0271a742cc31ef6222a4f147ce2e745f1c3812ba05f329bec620"
GUN = "127.0.0.1:5000/library/hello"
NOW = datetime(2026, 11, 25, tzinfo=UTC)
# Generous bound for waits that end at deadlines of a fraction of a second, on a busy machine.
WITHIN = 15.0


class ServedFiles:
    """Serves fixture files by role name, counting what was asked for."""

    endpoint = NotaryEndpoint(url="https://notary.test")

    def __init__(self) -> None:
        self.files = {
            "root": (FIXTURES / "root.json").read_bytes(),
            "timestamp": (FIXTURES / "timestamp.json").read_bytes(),
            "snapshot": (FIXTURES / "snapshot.json").read_bytes(),
            "targets": (FIXTURES / "targets.json").read_bytes(),
            "targets/releases": (FIXTURES / "targets" / "releases.json").read_bytes(),
        }
        self.requests: list[str] = []

    def fetch(self, gun: str, name: str, max_bytes: int, credentials: object = None) -> bytes:
        self.requests.append(name)
        assert gun == GUN
        role = name
        head, _, tail = name.rpartition(".")
        if head and len(tail) == 64:
            role = head  # fetched by hash: serve the file whose hash that is, if any
        data = self.files.get(role)
        if data is None:
            raise NotFound(name)
        return data[: max_bytes + 1]


def refresh(updater: Updater, served: ServedFiles, pinning: TrustPinning | None = None):
    return updater.refresh(GUN, served, pinning or TrustPinning())  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> MetadataStore:
    return MetadataStore(tmp_path / "state")


def test_first_refresh_resolves_like_notary_lookup(store: MetadataStore) -> None:
    served = ServedFiles()
    repository = refresh(Updater(store, clock=lambda: NOW), served)
    expected_tag, expected_digest, expected_size = (
        (FIXTURES / "lookup_latest.txt").read_text().split()
    )
    signed = resolve_tag(repository, expected_tag)
    assert (signed.digest, signed.size, signed.role) == (
        expected_digest,
        int(expected_size),
        "targets",
    )
    release = resolve_tag(repository, "release")
    assert release.role == "targets/releases"
    assert release.digest.endswith(
        "0bbf7ce97d062e08eb58dfbe5ac54e7062e489566e6bfea8f13e97ae12d14c39"
    )
    # every verified file is cached, and nothing unverified is
    assert sorted(store.cached_roles(GUN)) == [
        "root",
        "snapshot",
        "targets",
        "targets/releases",
        "timestamp",
    ]


def test_warm_refresh_fetches_only_the_timestamp(store: MetadataStore) -> None:
    served = ServedFiles()
    updater = Updater(store, clock=lambda: NOW)
    refresh(updater, served)
    served.requests.clear()
    refresh(updater, served)
    assert served.requests == ["timestamp"]


@pytest.mark.parametrize("role", ["snapshot", "targets"])
def test_a_signed_length_over_max_metadata_bytes_is_refused_unread(
    store: MetadataStore, role: str
) -> None:
    served = ServedFiles()
    length = len(served.files[role])
    # One byte short of this file (the fixture's snapshot is smaller than its targets).
    limits = SizeLimits(other=length - 1)
    parent = "timestamp" if role == "snapshot" else "snapshot"
    expected = (
        rf"^{role}\.json for {GUN} on https://notary\.test is {length} bytes as {parent}\.json "
        rf"lists it, over the {length - 1}-byte limit \(max_metadata_bytes\)$"
    )
    updater = Updater(store, clock=lambda: NOW)
    with pytest.raises(MetadataTooLarge, match=expected):
        updater.refresh(GUN, served, TrustPinning(), limits=limits)  # type: ignore[arg-type]
    assert not [name for name in served.requests if name.split(".")[0] == role]
    # Within the limit, the same files verify.
    assert resolve_tag(refresh(updater, served), "v1").size == 34


def test_restart_uses_the_cache_and_does_not_fetch_root_again(store: MetadataStore) -> None:
    refresh(Updater(store, clock=lambda: NOW), ServedFiles())
    served = ServedFiles()
    repository = refresh(Updater(store, clock=lambda: NOW), served)
    assert served.requests == ["timestamp"]
    assert resolve_tag(repository, "v1").size == 34


def test_held_versions_are_a_floor_for_the_server(store: MetadataStore) -> None:
    # A node that has trusted timestamp version N refuses the server's older file, even though
    # that file is validly signed: this is what protects a node from a replayed repository.
    held = HeldSets(store)
    updater = Updater(store, clock=lambda: NOW, held=held)
    refresh(updater, ServedFiles())
    root = store.load(GUN, "root")
    assert root is not None
    held.keep(GUN, TrustedSet(GUN, root, baseline={"timestamp": 10**6}))
    with pytest.raises(RollbackDetected, match=r"timestamp\.json for .* is older than cached"):
        refresh(updater, ServedFiles())


def test_unknown_repository_has_no_trust_data(store: MetadataStore) -> None:
    served = ServedFiles()
    served.files.clear()
    with pytest.raises(NoTrustData, match=f"no trust data for {GUN} on https://notary.test"):
        refresh(Updater(store, clock=lambda: NOW), served)


def test_first_root_needs_pinning_when_tofu_is_off(store: MetadataStore) -> None:
    with pytest.raises(PinningViolation):
        refresh(Updater(store, clock=lambda: NOW), ServedFiles(), TrustPinning(allow_tofu=False))
    assert store.load(GUN, "root") is None  # a refused root is never cached


def test_pinned_root_key_is_accepted(store: MetadataStore) -> None:
    root_key_file = sorted((FIXTURES / "private").iterdir())[0].stem
    pinning = TrustPinning(pinned_key_ids=(root_key_file,), allow_tofu=False)
    refresh(Updater(store, clock=lambda: NOW), ServedFiles(), pinning)
    assert store.load(GUN, "root") is not None


def test_unsigned_tag_and_digest_are_refused(store: MetadataStore) -> None:
    repository = refresh(Updater(store, clock=lambda: NOW), ServedFiles())
    with pytest.raises(TagNotSigned, match=f"tag 9.9 is not signed in {GUN}"):
        resolve_tag(repository, "9.9")
    with pytest.raises(DigestNotSigned):
        resolve_digest(repository, "sha256:" + "ab" * 32)
    signed = resolve_digest(
        repository, "sha256:0bbf7ce97d062e08eb58dfbe5ac54e7062e489566e6bfea8f13e97ae12d14c39"
    )
    assert (signed.name, signed.role) == ("release", "targets/releases")


def test_required_signers(store: MetadataStore) -> None:
    repository = refresh(Updater(store, clock=lambda: NOW), ServedFiles())
    assert resolve_tag(repository, "release", signers=["targets/releases"]).role == (
        "targets/releases"
    )
    with pytest.raises(TagNotSigned, match="required signer targets/releases"):
        resolve_tag(repository, "v1", signers=["targets/releases"])
    with pytest.raises(TagNotSigned):
        resolve_tag(repository, "v1", roles=["targets/releases"])


def test_inspect_lists_tags_signers_and_keys(store: MetadataStore) -> None:
    report = inspect_repository(refresh(Updater(store, clock=lambda: NOW), ServedFiles()))
    tags = {tag.tag: tag for tag in report.signed_tags}
    assert tags["release"].signers == ("releases",)
    assert tags["v1"].signers == ("Repo Admin",)
    assert [signer.role for signer in report.signers] == ["releases"]
    assert [admin.role for admin in report.administrative_keys] == ["Root", "Repository"]


# --- the cache hit/miss report ------------------------------------------------------------------


def test_on_refresh_reports_a_hit_only_when_nothing_but_the_timestamp_was_downloaded(
    store: MetadataStore,
) -> None:
    seen: list[bool] = []
    served = ServedFiles()
    updater = Updater(store, clock=lambda: NOW, on_refresh=seen.append)
    refresh(updater, served)  # first contact: every file downloaded
    refresh(updater, served)  # same timestamp: the rest is held in memory
    assert seen == [False, True]

    # A restart answers from the disk cache just the same.
    restarted = Updater(store, clock=lambda: NOW, on_refresh=seen.append)
    served.requests.clear()
    refresh(restarted, served)
    assert served.requests == ["timestamp"]
    assert seen == [False, True, True]

    # One file missing from the cache has to be downloaded again: a miss.
    store.delete(GUN, "targets/releases")
    served.requests.clear()
    refresh(Updater(store, clock=lambda: NOW, on_refresh=seen.append), served)
    assert served.requests[0] == "timestamp" and len(served.requests) > 1
    assert seen == [False, True, True, False]


def test_on_refresh_is_not_told_about_failed_refreshes(store: MetadataStore) -> None:
    seen: list[bool] = []
    served = ServedFiles()
    served.files.clear()
    with pytest.raises(NoTrustData):
        refresh(Updater(store, clock=lambda: NOW, on_refresh=seen.append), served)
    assert seen == []


def test_a_failing_on_refresh_does_not_fail_the_lookup(store: MetadataStore) -> None:
    def broken_counter(hit: bool) -> None:
        raise RuntimeError("counter is broken")

    repository = refresh(
        Updater(store, clock=lambda: NOW, on_refresh=broken_counter), ServedFiles()
    )
    assert resolve_tag(repository, "v1").size == 34


class HeldTimestamp(ServedFiles):
    """Holds every timestamp request until the test releases it, so lookups overlap for sure."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.waiting = threading.Event()

    def fetch(self, gun: str, name: str, max_bytes: int, credentials: object = None) -> bytes:
        if name == "timestamp":
            self.waiting.set()
            assert self.release.wait(10)
        return super().fetch(gun, name, max_bytes, credentials)


def test_concurrent_lookups_of_one_gun_share_one_refresh(store: MetadataStore) -> None:
    updater = Updater(store, clock=lambda: NOW)
    served = HeldTimestamp()
    with ThreadPoolExecutor(max_workers=8) as pool:
        leader = pool.submit(refresh, updater, served)
        assert served.waiting.wait(10)  # the first refresh is in flight, holding the timestamp
        followers = [pool.submit(refresh, updater, served) for _ in range(7)]
        served.release.set()
        views = [leader.result(10), *(follower.result(10) for follower in followers)]
    # One round of downloads served all eight lookups, and they all saw the same verified data.
    assert served.requests.count("timestamp") <= 2
    assert served.requests.count("root") == 1
    assert len({id(view) for view in views}) <= 2
    assert {resolve_tag(view, "v1").digest for view in views} == {
        resolve_tag(views[0], "v1").digest
    }


def test_joining_a_refresh_in_flight_waits_no_longer_than_the_call(store: MetadataStore) -> None:
    updater = Updater(store, clock=lambda: NOW)
    served = HeldTimestamp()
    with ThreadPoolExecutor(max_workers=1) as pool:
        leader = pool.submit(refresh, updater, served)
        try:
            assert served.waiting.wait(10)  # the leader's download is stalled
            started = time.monotonic()
            with (
                call_deadline(0.2),
                pytest.raises(
                    NotaryUnavailable,
                    match=rf"^{GUN}: a refresh of its trust data already under way did not "
                    "finish before this call's deadline$",
                ),
            ):
                refresh(updater, served)
            assert time.monotonic() - started < WITHIN
        finally:
            served.release.set()
        assert resolve_tag(leader.result(10), "v1").size == 34  # the leader was not disturbed
    assert served.requests.count("timestamp") == 1


class NeedsCredentials(HeldTimestamp):
    """A server that refuses anonymous readers, as a Notary behind a token service does."""

    def fetch(self, gun: str, name: str, max_bytes: int, credentials: object = None) -> bytes:
        if credentials is None:
            if name == "timestamp" or name == "root":
                self.waiting.set()
                assert self.release.wait(10)
            raise AuthenticationFailed(f"notary at https://notary.test refused access to {gun}")
        return ServedFiles.fetch(self, gun, name, max_bytes, credentials)


def test_a_lookup_with_credentials_does_not_inherit_an_anonymous_refusal(
    store: MetadataStore,
) -> None:
    # An ImageStatus (no credentials) is refreshing when a pull with credentials arrives: the
    # pull joins, the anonymous refresh is refused, and the pull must get a try of its own.
    joined = threading.Event()

    class TellingFlight(SingleFlight[VerifiedRepository]):
        def wait(self, call: Future[VerifiedRepository]) -> VerifiedRepository:
            joined.set()
            return super().wait(call)

    flight = TellingFlight(NotaryUnavailable, AuthenticationFailed)
    updater = Updater(store, clock=lambda: NOW, flight=flight)
    served = NeedsCredentials()
    alice = Credentials("alice", "s3cret")
    with ThreadPoolExecutor(max_workers=2) as pool:
        anonymous = pool.submit(refresh, updater, served)
        assert served.waiting.wait(10)
        with_credentials = pool.submit(
            lambda: updater.refresh(GUN, served, TrustPinning(), credentials=alice)  # type: ignore[arg-type]
        )
        # The pull is about to wait for the anonymous refresh; released now, it is joined.
        assert joined.wait(10)
        served.release.set()
        with pytest.raises(AuthenticationFailed):
            anonymous.result(10)
        assert resolve_tag(with_credentials.result(10), "v1").size == 34


# --- freshness window, outages, other processes ---------------------------------------------------


class DownFiles(ServedFiles):
    """The same server, unreachable."""

    def fetch(self, gun: str, name: str, max_bytes: int, credentials: object = None) -> bytes:
        self.requests.append(name)
        raise NotaryUnavailable(f"cannot reach notary at https://notary.test for {gun}")


def test_lookups_within_the_freshness_window_share_one_refresh(store: MetadataStore) -> None:
    served = ServedFiles()
    updater = Updater(store, clock=lambda: NOW)
    updater.freshness_window = 60.0
    first = refresh(updater, served)
    count = len(served.requests)
    assert refresh(updater, served) is first
    assert len(served.requests) == count  # no request at all inside the window

    updater.freshness_window = 0.0  # today's behaviour: every lookup asks for the timestamp
    refresh(updater, served)
    assert served.requests[count:] == ["timestamp"]


def test_outage_is_answered_from_the_cache_with_its_age(store: MetadataStore) -> None:
    confirmed = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    clock = [confirmed]
    updater = Updater(store, clock=lambda: clock[0])
    refresh(updater, ServedFiles())
    outage = NotaryUnavailable("cannot reach notary at https://notary.test for the test")

    # A new process (daemon restarted during the outage) holds nothing in memory.
    clock[0] = confirmed.replace(hour=11)
    restarted = Updater(store, clock=lambda: clock[0])
    down = DownFiles()
    with pytest.raises(NotaryUnavailable):
        refresh(restarted, down)
    view = restarted.cached(GUN, TrustPinning(), outage)
    assert view.from_cache and view.cached_age == pytest.approx(3600, abs=1)
    assert view.outage == str(outage)
    assert resolve_tag(view, "v1").size == 34


def test_outage_never_uses_expired_cached_data(store: MetadataStore) -> None:
    refresh(Updater(store, clock=lambda: NOW), ServedFiles())
    later = datetime(2040, 1, 1, tzinfo=UTC)  # past every expiry in the fixtures
    outage = NotaryUnavailable("cannot reach notary")
    with pytest.raises(NotaryUnavailable, match=r"cannot be used: .*expired"):
        Updater(store, clock=lambda: later).cached(GUN, TrustPinning(), outage)


def test_outage_without_cached_data_fails_closed(store: MetadataStore) -> None:
    outage = NotaryUnavailable("cannot reach notary")
    with pytest.raises(NotaryUnavailable, match=r"no trust data of .* to fall back on"):
        Updater(store, clock=lambda: NOW).cached(GUN, TrustPinning(), outage)


def test_a_root_removed_by_another_process_is_noticed(store: MetadataStore) -> None:
    served = ServedFiles()
    updater = Updater(store, clock=lambda: NOW)
    refresh(updater, served)
    with store.locked(GUN):  # what trustctl does while the daemon serves
        assert store.forget(GUN)
    served.requests.clear()
    refresh(updater, served)
    assert served.requests[0] == "root"  # trusted on first use again, not from memory
    assert store.load(GUN, "root") is not None


def test_a_root_signed_again_under_the_same_version_is_not_an_attack(
    store: MetadataStore,
) -> None:
    """The node holds root.json as first signed; the server now serves the same root with
    other signature bytes (ECDSA signs differently each time), as after a benign re-signing."""
    served = ServedFiles()
    original = served.files["root"]
    document = resign.edit(original)
    (root_key_id,) = document["signed"]["roles"]["root"]["keyids"]
    root_key = load_notary_key(FIXTURES / "private" / f"{ROOT_KEY_FILE}.key", "fixture-root-pass")
    resigned = resign.sign(document, [(root_key_id, root_key)])
    assert resigned != original
    store.save(GUN, "root", resigned)

    held_version = TrustedSet(GUN, resigned).root.version
    repository = refresh(Updater(store, clock=lambda: NOW), served)
    assert repository.root.version == held_version  # no rotation, and no refusal
    assert store.load(GUN, "root") == original  # now the server's copy
    assert resolve_tag(repository, "v1").size == 34


# --- the per-repository lock ---------------------------------------------------------------------


class OtherHolder:
    """The lock of GUN's cache held through another open file, as another process holds it."""

    def __init__(self, store: MetadataStore) -> None:
        store.lock_dir.mkdir(parents=True, exist_ok=True)
        self.descriptor = os.open(store.lock_dir / f"{quote(GUN, safe='-_.:')}.lock", os.O_RDWR)
        fcntl.flock(self.descriptor, fcntl.LOCK_EX)

    def release(self) -> None:
        os.close(self.descriptor)


def test_the_repository_lock_is_waited_for_until_the_call_deadline(store: MetadataStore) -> None:
    with store.locked(GUN):  # creates the lock file
        pass
    holder = OtherHolder(store)
    try:
        started = time.monotonic()
        with (
            call_deadline(0.3),
            pytest.raises(
                NotaryUnavailable,
                match=rf"^{GUN}: another lookup of it holds the lock on its cached trust data "
                r"\(.*\.lock\) and did not release it before this call's deadline$",
            ),
        ):
            refresh(Updater(store, clock=lambda: NOW), ServedFiles())
        assert time.monotonic() - started < WITHIN
    finally:
        holder.release()
    # Free again: the same lookup succeeds.
    with call_deadline(WITHIN):
        assert resolve_tag(refresh(Updater(store, clock=lambda: NOW), ServedFiles()), "v1")


@pytest.mark.parametrize("deadline", [None, 600.0])
def test_a_lock_released_in_time_is_taken(store: MetadataStore, deadline: float | None) -> None:
    with store.locked(GUN):
        pass
    holder = OtherHolder(store)
    taken = threading.Event()

    def lookup() -> None:
        with call_deadline(deadline), store.locked(GUN):
            taken.set()

    waiter = threading.Thread(target=lookup)
    waiter.start()
    try:
        assert not taken.wait(0.3)  # it waits while the lock is held
    finally:
        holder.release()
    assert taken.wait(WITHIN)
    waiter.join(WITHIN)
