from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.unit import notary_factory as f
from trustd.errors import (
    BadSignature,
    DelegationViolation,
    ExpiredMetadata,
    HashMismatch,
    RollbackDetected,
    RootRotationInvalid,
    ThresholdNotMet,
)
from trustd.formats.notary.trusted_set import TrustedSet

FIXTURES = Path(__file__).parent.parent / "data" / "notary"
FIXTURE_GUN = "127.0.0.1:5000/library/hello"
NOW = f.NOW


def _read(role: str) -> bytes:
    return (FIXTURES / f"{role}.json").read_bytes()


def test_real_fixture_chain_loads_fully() -> None:
    now = datetime(2026, 11, 25, tzinfo=UTC)  # inside the fixture timestamp's 14 days
    trusted = TrustedSet(FIXTURE_GUN, _read("root"))
    trusted.update_timestamp(_read("timestamp"), now)
    trusted.update_snapshot(_read("snapshot"), now)
    trusted.update_targets(_read("targets"), now)
    releases = trusted.update_delegated_targets("targets/releases", _read("targets/releases"), now)
    trusted.check_fresh(now)
    assert set(trusted.targets.targets) == {"v1", "latest", "odd<&>\u2028café"}
    assert set(releases.targets) == {"release"}
    assert trusted.raw("targets/releases") == _read("targets/releases")
    assert trusted.delegation("targets/releases").paths == ("",)


def _loaded(repo: f.Repo, targets: bytes | None = None, **snapshot_files: bytes):
    trusted = TrustedSet(f.GUN, repo.root())
    targets = targets or repo.targets({"v1": b"one"})
    snapshot = repo.snapshot({"targets": targets, **snapshot_files})
    trusted.update_timestamp(repo.timestamp(snapshot), NOW)
    trusted.update_snapshot(snapshot, NOW)
    trusted.update_targets(targets, NOW)
    return trusted, snapshot


def test_bad_signature_is_reported_with_the_key() -> None:
    repo = f.Repo()
    trusted = TrustedSet(f.GUN, repo.root())
    forged = repo.timestamp(repo.snapshot({"targets": b"x"})).replace(
        b'"version": 1', b'"version": 9'
    )
    with pytest.raises(ThresholdNotMet, match=r"timestamp.json for .*: 0 of 1 .*bad signature"):
        trusted.update_timestamp(forged, NOW)


def test_signature_by_an_unknown_key_is_ignored() -> None:
    repo = f.Repo()
    trusted = TrustedSet(f.GUN, repo.root())
    snapshot = repo.snapshot({"targets": b"x"})
    with pytest.raises(ThresholdNotMet, match="0 of 1"):
        trusted.update_timestamp(repo.timestamp(snapshot, signers=[f.ed25519_key()]), NOW)


def test_below_threshold_and_duplicate_signatures_count_once() -> None:
    first, second = f.x509_key(), f.x509_key()
    repo = f.Repo(root_keys=[first, second], root_threshold=2)
    TrustedSet(f.GUN, repo.root())  # both sign: accepted
    with pytest.raises(ThresholdNotMet, match="1 of 2"):
        TrustedSet(f.GUN, repo.root(signers=[first]))
    with pytest.raises(ThresholdNotMet, match="1 of 2"):
        TrustedSet(f.GUN, repo.root(signers=[first, first]))


def test_method_mismatch_is_named_in_threshold_message() -> None:
    repo = f.Repo()
    repo.timestamp_key.method = "ecdsa"  # claims ecdsa for an ed25519 key
    trusted = TrustedSet(f.GUN, repo.root())
    with pytest.raises(BadSignature, match="'ecdsa' does not match key type 'ed25519'"):
        trusted.update_timestamp(repo.timestamp(repo.snapshot({"targets": b"x"})), NOW)


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_expired_metadata_is_rejected(role: str) -> None:
    repo = f.Repo()
    past = NOW - timedelta(seconds=1)
    targets = repo.targets(expires=past if role == "targets" else None)
    snapshot = repo.snapshot({"targets": targets}, expires=past if role == "snapshot" else None)
    timestamp = repo.timestamp(snapshot, expires=past if role == "timestamp" else None)
    trusted = TrustedSet(f.GUN, repo.root())
    with pytest.raises(ExpiredMetadata, match=f"{role}.json for {f.GUN} expired at"):
        trusted.update_timestamp(timestamp, NOW)
        trusted.update_snapshot(snapshot, NOW)
        trusted.update_targets(targets, NOW)


def test_expired_cached_metadata_loads_with_allow_expired_but_is_not_fresh() -> None:
    repo = f.Repo()
    snapshot = repo.snapshot({"targets": repo.targets()})
    trusted = TrustedSet(f.GUN, repo.root())
    later = NOW + timedelta(days=30)
    trusted.update_timestamp(repo.timestamp(snapshot), later, allow_expired=True)
    with pytest.raises(ExpiredMetadata, match=r"timestamp.json"):
        trusted.check_fresh(later)


def test_rollback_against_held_version() -> None:
    repo = f.Repo()
    trusted, snapshot = _loaded(repo)
    trusted.update_timestamp(repo.timestamp(snapshot, version=5), NOW)
    with pytest.raises(RollbackDetected, match="version 4 is older than the verified version 5"):
        trusted.update_timestamp(repo.timestamp(snapshot, version=4), NOW)


def test_rollback_against_baseline() -> None:
    repo = f.Repo()
    targets = repo.targets(version=3)
    snapshot = repo.snapshot({"targets": targets})
    trusted = TrustedSet(f.GUN, repo.root(), baseline={"targets": 5})
    trusted.update_timestamp(repo.timestamp(snapshot), NOW)
    trusted.update_snapshot(snapshot, NOW)
    with pytest.raises(RollbackDetected, match=r"targets.json .* version 3 is older than cached"):
        trusted.update_targets(targets, NOW)


def test_snapshot_mix_and_match_is_a_hash_mismatch() -> None:
    repo = f.Repo()
    trusted = TrustedSet(f.GUN, repo.root())
    listed = repo.snapshot({"targets": repo.targets()}, version=1)
    other = repo.snapshot({"targets": repo.targets({"evil": b"x"})}, version=1)
    trusted.update_timestamp(repo.timestamp(listed), NOW)
    with pytest.raises(HashMismatch, match=r"snapshot.json"):
        trusted.update_snapshot(other, NOW)
    assert trusted.snapshot is None


def test_targets_not_listed_by_snapshot_are_rejected() -> None:
    repo = f.Repo()
    trusted, _ = _loaded(repo)
    with pytest.raises(HashMismatch, match=r"targets.json"):
        trusted.update_targets(repo.targets({"v1": b"evil"}, version=2), NOW)


def test_new_timestamp_drops_snapshot_checked_against_other_meta() -> None:
    repo = f.Repo()
    trusted, _ = _loaded(repo)
    newer = repo.snapshot({"targets": repo.targets()}, version=2)
    trusted.update_timestamp(repo.timestamp(newer, version=2), NOW)
    assert trusted.snapshot is None and trusted.targets is None
    assert trusted.expected_meta("snapshot").length == len(newer)


def test_root_rotation_must_be_signed_by_the_old_root() -> None:
    repo = f.Repo()
    trusted = TrustedSet(f.GUN, repo.root())
    repo.root_keys = [f.x509_key()]
    with pytest.raises(RootRotationInvalid, match="trusted root's root keys"):
        trusted.update_root(repo.root(version=2), NOW)


def test_root_rotation_signed_by_both_drops_other_metadata() -> None:
    repo = f.Repo()
    trusted, _ = _loaded(repo)
    old = repo.root_keys
    repo.root_keys = [f.x509_key()]
    new_root = repo.root(version=2, signers=old + repo.root_keys)
    assert trusted.update_root(new_root, NOW).version == 2
    assert trusted.timestamp is None and trusted.targets is None
    with pytest.raises(RollbackDetected):
        trusted.update_root(repo.root(version=1, signers=repo.root_keys), NOW)


def test_the_same_root_signed_again_is_accepted_and_keeps_what_is_verified() -> None:
    first, second = f.x509_key(), f.x509_key()
    repo = f.Repo(root_keys=[first, second], root_threshold=1)
    trusted, _ = _loaded(repo)
    original = trusted.raw("root")
    # ECDSA signatures differ on every signing; a second root key adds its signature.
    for resigned in (repo.root(signers=[first]), repo.root(signers=[first, second])):
        assert resigned != original
        assert trusted.update_root(resigned, NOW).version == 1
        assert trusted.raw("root") == resigned
        assert trusted.timestamp is not None and trusted.targets is not None


def test_the_same_root_signed_by_keys_it_does_not_trust_is_refused() -> None:
    repo = f.Repo()
    trusted = TrustedSet(f.GUN, repo.root())
    with pytest.raises(RootRotationInvalid, match="trusted root's root keys"):
        trusted.update_root(repo.root(signers=[f.x509_key()]), NOW)


def test_a_different_root_under_the_same_version_is_equivocation() -> None:
    repo = f.Repo()
    trusted = TrustedSet(f.GUN, repo.root())
    other = repo.root(expires=NOW + timedelta(days=100))  # same keys, same version, other body
    with pytest.raises(RootRotationInvalid, match=r"signed content differs .* same version 1"):
        trusted.update_root(other, NOW)


def test_rotated_root_with_expired_certificate_is_refused() -> None:
    repo = f.Repo()
    trusted = TrustedSet(f.GUN, repo.root())
    old = repo.root_keys
    repo.root_keys = [f.x509_key(not_after=NOW - timedelta(days=1))]
    with pytest.raises(ExpiredMetadata, match="expired at"):
        trusted.update_root(repo.root(version=2, signers=old + repo.root_keys), NOW)


def _with_delegation(paths: list[str], delegated_targets: dict[str, bytes]):
    repo = f.Repo()
    releases_key = f.ecdsa_key()
    targets = repo.targets(delegations=f.delegation("targets/releases", [releases_key], paths))
    releases = repo.targets(delegated_targets, signers=[releases_key])
    trusted, _ = _loaded(repo, targets, **{"targets/releases": releases})
    return trusted, releases


def test_delegation_target_outside_paths_is_rejected() -> None:
    trusted, releases = _with_delegation(["prod/"], {"dev/app": b"x"})
    with pytest.raises(DelegationViolation, match=r"'dev/app' is outside .*targets/releases"):
        trusted.update_delegated_targets("targets/releases", releases, NOW)


def test_delegation_inside_paths_is_accepted() -> None:
    trusted, releases = _with_delegation(["prod/"], {"prod/app": b"x"})
    loaded = trusted.update_delegated_targets("targets/releases", releases, NOW)
    assert "prod/app" in loaded.targets


def test_delegation_signed_by_the_wrong_key_is_rejected() -> None:
    repo = f.Repo()
    targets = repo.targets(delegations=f.delegation("targets/releases", [f.ecdsa_key()], [""]))
    releases = repo.targets({"a": b"x"})  # signed by the targets key, not the delegated one
    trusted, _ = _loaded(repo, targets, **{"targets/releases": releases})
    with pytest.raises(ThresholdNotMet, match=r"targets/releases.json"):
        trusted.update_delegated_targets("targets/releases", releases, NOW)


def test_undelegated_role_is_rejected() -> None:
    repo = f.Repo()
    trusted, _ = _loaded(repo)
    with pytest.raises(DelegationViolation, match="does not delegate"):
        trusted.update_delegated_targets("targets/other", repo.targets(), NOW)
