"""Trust data over its lifetime: expiry figures and warnings, re-created repositories, forgetting
and re-pinning a root, the pinning line. Metadata is made and signed here (notary_factory); the
end-to-end tests (tests/e2e/test_lifetime.py) do the same against the real notary CLI and server.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from tests.attacks.harness import trustctl
from tests.unit import notary_factory as f
from trustd.config.load import parse_config
from trustd.errors import PinningViolation, RollbackDetected, RootKeyChanged, RootRotationInvalid
from trustd.formats.notary.keys import canonical_key_id, load_public_key
from trustd.formats.notary.lifetime import (
    Expiry,
    ExpiryKind,
    due,
    pinning_line,
    repository_expiries,
    root_keys,
)
from trustd.formats.notary.pinning import TrustPinning
from trustd.formats.notary.store import MetadataStore
from trustd.formats.notary.transport import NotaryEndpoint, NotFound
from trustd.formats.notary.trusted_set import TrustedSet
from trustd.formats.notary.updater import Updater
from trustd.programs.trustd_command import main as trustd_main
from trustd.service.expiry import ExpiryWatch
from trustd.service.metrics import ExpiryGauges, Metrics

NOW = f.NOW
GUN = f.GUN


# --- a server of factory-made repositories ------------------------------------------------------


class FactoryServer:
    """Serves one repository's files by role, as notary-server does (no network)."""

    endpoint = NotaryEndpoint(url="https://notary.test")

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def publish(
        self,
        repo: f.Repo,
        version: int = 1,
        now: datetime = NOW,
        targets_expire: datetime | None = None,
    ) -> None:
        """A whole consistent repository at ``version``, with notary's expiries from ``now``."""
        root = repo.root(version=1, expires=now + timedelta(days=3650))
        targets = repo.targets(
            {"v1": b"image"},
            version=version,
            expires=targets_expire or now + timedelta(days=1095),
        )
        snapshot = repo.snapshot(
            {"root": root, "targets": targets},
            version=version,
            expires=now + timedelta(days=1095),
        )
        self.files = {
            "root": root,
            "targets": targets,
            "snapshot": snapshot,
            "timestamp": repo.timestamp(
                snapshot, version=version, expires=now + timedelta(days=14)
            ),
        }

    def fetch(self, gun: str, name: str, max_bytes: int, credentials: object = None) -> bytes:
        head, _, tail = name.rpartition(".")
        role = head if head and len(tail) == 64 else name
        if role not in self.files:
            raise NotFound(name)
        return self.files[role]


def refresh(updater: Updater, server: FactoryServer, pinning: TrustPinning | None = None):
    return updater.refresh(GUN, server, pinning or TrustPinning())  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> MetadataStore:
    return MetadataStore(tmp_path / "state")


def _ids(key: f.TestKey) -> tuple[str, str]:
    public = load_public_key(key.key_type, key.public_b64, key.key_id)
    return key.key_id, canonical_key_id(public)


def _new_certificate(key: f.TestKey) -> f.TestKey:
    """The same private key in a fresh certificate (what ``notary init`` does when it reuses
    the trust dir's root key for a re-created repository)."""
    assert not isinstance(key.private, f.ed25519.Ed25519PrivateKey)
    cert = f.certificate(key.private, GUN)  # type: ignore[arg-type]
    pem = base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode()
    return f.TestKey(key.key_type, key.private, pem, key.method)


# --- a repository deleted and re-created ---------------------------------------------------------


def test_re_created_repository_with_a_new_root_key_is_named_as_such() -> None:
    old = f.Repo()
    trusted = TrustedSet(GUN, old.root(version=2))
    new = f.Repo()  # every key new, versions started again
    with pytest.raises(RootKeyChanged) as caught:
        trusted.update_root(new.root(version=2), NOW)
    error = caught.value
    new_id, new_canonical = _ids(new.root_keys[0])
    old_id, old_canonical = _ids(old.root_keys[0])
    assert error.new_keys == ((new_id, new_canonical),)
    assert error.trusted_keys == ((old_id, old_canonical),)
    message = str(error)
    assert message.startswith("new root not signed by the trusted root's root keys: root.json for")
    for key_id in (new_id, new_canonical, old_id, old_canonical):
        assert key_id in message
    assert f"trustctl forget-root {GUN} --pin {new_canonical}" in message
    assert "same key" not in message
    assert isinstance(error, RootRotationInvalid)  # still a failed rotation for every caller


def test_re_created_repository_with_fewer_versions_is_not_reported_as_a_rollback() -> None:
    trusted = TrustedSet(GUN, f.Repo().root(version=5))
    with pytest.raises(RootKeyChanged, match="its version 2 is older than the trusted version 5"):
        trusted.update_root(f.Repo().root(version=2), NOW)


def test_repair_of_a_root_with_several_keys_pins_them_all() -> None:
    trusted = TrustedSet(GUN, f.Repo().root())
    new = f.Repo(root_keys=[f.x509_key(), f.x509_key()], root_threshold=2)
    with pytest.raises(RootKeyChanged) as caught:
        trusted.update_root(new.root(version=2), NOW)
    pins = " ".join(f"--pin {_ids(key)[1]}" for key in new.root_keys)
    assert f"trustctl forget-root {GUN} {pins} (without --pin" in str(caught.value)


def test_root_key_reused_in_a_new_certificate_is_said_to_be_the_same_key() -> None:
    old = f.Repo()
    trusted = TrustedSet(GUN, old.root(version=2))
    new = f.Repo(root_keys=[_new_certificate(old.root_keys[0])])
    with pytest.raises(RootKeyChanged, match=r"\(the same key in a new certificate\)"):
        trusted.update_root(new.root(version=2), NOW)


def test_a_foreign_root_that_does_not_verify_itself_stays_a_plain_rotation_failure() -> None:
    trusted = TrustedSet(GUN, f.Repo().root())
    stranger = f.Repo()
    garbage = stranger.root(version=2, signers=[f.x509_key()])  # signed by none of its own keys
    with pytest.raises(RootRotationInvalid) as caught:
        trusted.update_root(garbage, NOW)
    assert type(caught.value) is RootRotationInvalid


def test_an_older_root_signed_by_the_trusted_keys_is_still_a_rollback() -> None:
    repo = f.Repo()
    trusted = TrustedSet(GUN, repo.root(version=3))
    with pytest.raises(RollbackDetected):
        trusted.update_root(repo.root(version=2), NOW)


def test_refresh_names_a_re_created_repository_whose_server_kept_its_timestamp_key(
    store: MetadataStore,
) -> None:
    # notary-server kept the timestamp, snapshot and targets keys of the GUN; only the root key
    # is new, and every version starts again: the timestamp looks "rolled back" first.
    old = f.Repo()
    server = FactoryServer()
    server.publish(old, version=7)
    updater = Updater(store, clock=lambda: NOW)
    refresh(updater, server)
    new = f.Repo(
        targets_key=old.targets_key, snapshot_key=old.snapshot_key, timestamp_key=old.timestamp_key
    )
    server.publish(new, version=1)
    with pytest.raises(RootKeyChanged):
        refresh(updater, server)
    with pytest.raises(RootKeyChanged):  # and so does a node reading its cache afresh
        refresh(Updater(store, clock=lambda: NOW), server)


# --- forgetting and re-pinning --------------------------------------------------------------------


def test_forget_then_trust_on_first_use_again(store: MetadataStore) -> None:
    old, new = f.Repo(), f.Repo()
    server = FactoryServer()
    server.publish(old)
    updater = Updater(store, clock=lambda: NOW)
    refresh(updater, server)
    server.publish(new)
    with pytest.raises(RootKeyChanged):
        refresh(updater, server)

    # Another process (trustctl) forgets the GUN; the updater's held set notices.
    forgotten = Updater(store, clock=lambda: NOW).forget(GUN)
    assert forgotten is not None
    assert [key.key_id for key in root_keys(forgotten)] == [old.root_keys[0].key_id]
    assert store.cached_guns() == []
    assert refresh(updater, server).root.roles["root"].keyids == (new.root_keys[0].key_id,)


def test_replace_root_accepts_the_served_root_only_with_the_pinned_key(
    store: MetadataStore,
) -> None:
    old, new = f.Repo(), f.Repo()
    server = FactoryServer()
    server.publish(old, version=4)
    updater = Updater(store, clock=lambda: NOW)
    refresh(updater, server)
    server.publish(new)
    cached_before = store.load(GUN, "root")

    wrong = TrustPinning(pinned_key_ids=(old.root_keys[0].key_id,), allow_tofu=False)
    with pytest.raises(PinningViolation):
        updater.replace_root(GUN, server, wrong)  # type: ignore[arg-type]
    assert store.load(GUN, "root") == cached_before  # nothing changed

    _, canonical = _ids(new.root_keys[0])
    pinned = TrustPinning(pinned_key_ids=(canonical,), allow_tofu=False)
    before, after = updater.replace_root(GUN, server, pinned)  # type: ignore[arg-type]
    assert before is not None and before.roles["root"].keyids == (old.root_keys[0].key_id,)
    assert after.roles["root"].keyids == (new.root_keys[0].key_id,)
    assert store.cached_roles(GUN) == ["root"]  # the old timestamp's version is no floor now
    assert refresh(updater, server).timestamp_version == 1


# --- expiry figures -------------------------------------------------------------------------------


def _repo_expiring_soon(now: datetime = NOW) -> tuple[f.Repo, FactoryServer]:
    """Root certificate valid for 10 more days, targets for 20."""
    key = f.x509_key(not_before=now - timedelta(days=1), not_after=now + timedelta(days=10))
    repo = f.Repo(root_keys=[key])
    server = FactoryServer()
    server.publish(repo, now=now, targets_expire=now + timedelta(days=20))
    return repo, server


def test_expiries_of_a_cached_repository(store: MetadataStore) -> None:
    repo, server = _repo_expiring_soon()
    refresh(Updater(store, clock=lambda: NOW), server)
    cached = Updater(store, clock=lambda: NOW).cached_repository(GUN)
    assert cached is not None
    items = {(item.kind, item.name): item for item in expiries_of(cached)}
    assert set(items) == {
        (ExpiryKind.ROLE, "root"),
        (ExpiryKind.ROLE, "timestamp"),
        (ExpiryKind.ROLE, "snapshot"),
        (ExpiryKind.ROLE, "targets"),
        (ExpiryKind.CERTIFICATE, repo.root_keys[0].key_id),
    }
    certificate = items[(ExpiryKind.CERTIFICATE, repo.root_keys[0].key_id)]
    assert certificate.seconds_left(NOW) == pytest.approx(10 * 86400, abs=1)
    assert items[(ExpiryKind.ROLE, "targets")].seconds_left(NOW) == pytest.approx(20 * 86400, 1)

    soon = due(expiries_of(cached), NOW, timedelta(days=30))
    # Soonest first; the timestamp (14 days) is left out: the server re-signs it.
    assert [(item.kind, item.name) for item in soon] == [
        (ExpiryKind.CERTIFICATE, repo.root_keys[0].key_id),
        (ExpiryKind.ROLE, "targets"),
    ]
    assert due(expiries_of(cached), NOW, timedelta(days=5)) == []


def expiries_of(repository: Any) -> list[Expiry]:
    return repository_expiries(repository.gun, repository.root, repository.expires)


def test_delegation_expiry_is_read_from_the_cache_and_expired_roles_are_still_figures(
    store: MetadataStore,
) -> None:
    repo = f.Repo()
    releases_key = f.ecdsa_key()
    targets = repo.targets(delegations=f.delegation("targets/releases", [releases_key], [""]))
    releases = repo.targets({"v1": b"x"}, expires=NOW + timedelta(days=3), signers=[releases_key])
    root = repo.root()
    snapshot = repo.snapshot({"root": root, "targets": targets, "targets/releases": releases})
    server = FactoryServer()
    server.files = {
        "root": root,
        "targets": targets,
        "targets/releases": releases,
        "snapshot": snapshot,
        "timestamp": repo.timestamp(snapshot),
    }
    refresh(Updater(store, clock=lambda: NOW), server)
    later = NOW + timedelta(days=4)  # the delegation has expired by then
    cached = Updater(store, clock=lambda: later).cached_repository(GUN)
    assert cached is not None
    (item,) = [item for item in expiries_of(cached) if item.name == "targets/releases"]
    assert item.seconds_left(later) == pytest.approx(-86400, abs=1)
    assert "expired at" in item.describe(later) and "1 days ago" not in item.describe(later)


def test_watch_warns_once_and_feeds_the_gauges(
    store: MetadataStore, caplog: pytest.LogCaptureFixture
) -> None:
    repo, server = _repo_expiring_soon()
    metrics = Metrics(trustd_version="test")
    metrics.expiry._clock = lambda: NOW
    watch = ExpiryWatch(30, metrics.expiry, clock=lambda: NOW)
    updater = Updater(store, clock=lambda: NOW, on_verified=watch.observe)
    with caplog.at_level(logging.WARNING, logger="trustd.service.expiry"):
        refresh(updater, server)
        refresh(updater, server)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2, warnings  # certificate and targets, each once
    assert any(
        f"root certificate of key {repo.root_keys[0].key_id} of {GUN} expires at" in w
        and f"notary key rotate {GUN} root" in w
        for w in warnings
    )
    assert any(f"role targets of {GUN} expires at" in w for w in warnings)

    samples = gauge_samples(metrics.render().decode())
    key = repo.root_keys[0].key_id
    assert samples[("trustd_trust_expiry_seconds", GUN, "targets")] == 20 * 86400
    assert samples[("trustd_root_certificate_expiry_seconds", GUN, key)] == 10 * 86400
    assert samples[("trustd_trust_expiry_seconds", GUN, "timestamp")] == 14 * 86400

    # A scan after the repository was forgotten drops its figures.
    updater.forget(GUN)
    watch.scan(_Cache(updater))
    assert GUN not in metrics.render().decode()


def gauge_samples(exposition: str) -> dict[tuple[str, str, str], float]:
    """(metric, gun, role or key_id) -> value of the expiry gauges in a Prometheus exposition."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name in (ExpiryGauges.ROLE_METRIC, ExpiryGauges.CERTIFICATE_METRIC):
                name = sample.labels.get("role") or sample.labels["key_id"]
                found[(sample.name, sample.labels["gun"], name)] = sample.value
    return found


def test_watch_with_zero_days_never_warns(
    store: MetadataStore, caplog: pytest.LogCaptureFixture
) -> None:
    _, server = _repo_expiring_soon()
    watch = ExpiryWatch(0, None, clock=lambda: NOW)
    with caplog.at_level(logging.WARNING, logger="trustd.service.expiry"):
        refresh(Updater(store, clock=lambda: NOW, on_verified=watch.observe), server)
    assert not caplog.records


# --- root keys and the pinning line ---------------------------------------------------------------


def test_pinning_line_pins_the_canonical_ids_and_loads_as_config(tmp_path: Path) -> None:
    repo = f.Repo(root_keys=[f.x509_key(), f.x509_key()], root_threshold=2)
    root = TrustedSet(GUN, repo.root()).root
    keys = root_keys(root)
    assert [key.key_id for key in keys] == [key.key_id for key in repo.root_keys]
    assert [key.canonical_id for key in keys] == [_ids(key)[1] for key in repo.root_keys]
    line = pinning_line(GUN, root)
    config = parse_config(
        f"[trust_pinning]\ndisable_tofu = true\n[trust_pinning.certs]\n{line}\n",
        str(tmp_path / "t.toml"),
    )
    rule = config.pinning_for(GUN)
    assert set(rule.root_key_ids) == {key.canonical_id for key in keys}


# --- trustctl on a cache (no Notary needed) -------------------------------------------------------


def _config(tmp_path: Path, extra: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "trustd.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\n{extra}\n'
        f'[audit]\nfile = "{tmp_path / "audit.log"}"\nstdout = false\n'
    )
    return path


def test_trustctl_expiring_lists_what_is_due_and_says_so_in_its_status(tmp_path: Path) -> None:
    repo, server = _repo_expiring_soon(datetime.now(UTC))  # trustctl reads the real clock
    config = _config(tmp_path)
    refresh(Updater(MetadataStore(tmp_path / "state")), server)  # real clock: NOW is in 2026
    run = trustctl("expiring", "--days", "3650", "--json", "-c", str(config))
    assert run.status == 1, run.stderr
    report = run.json()
    names = [(entry["kind"], entry["name"]) for entry in report["due"]]
    assert ("certificate", repo.root_keys[0].key_id) in names
    assert ("role", "targets") in names
    assert ("role", "timestamp") not in names
    assert report["repositories"] == 1 and report["unreadable"] == []
    assert all(entry["gun"] == GUN for entry in report["due"])

    expired = trustctl("expiring", "--days", "0", "-c", str(config))  # nothing expired yet
    assert (expired.status, expired.stdout) == (
        0,
        "nothing expires within 0 days (1 repositories cached)\n",
    )
    empty = _config(tmp_path / "empty", extra="expiry_warning_days = 0")
    nothing = trustctl("expiring", "-c", str(empty))
    assert (nothing.status, nothing.stdout) == (
        0,
        "nothing expires within 30 days (0 repositories cached)\n",
    )


def test_trustctl_forget_root_by_pattern_is_audited(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = MetadataStore(tmp_path / "state")
    repo, server = _repo_expiring_soon(datetime.now(UTC))
    refresh(Updater(store), server)
    other = "registry.example.com/other/app"
    store.save(other, "root", b"not json")  # a cache that no longer verifies is forgotten too

    missing = trustctl("forget-root", "registry.example.com/nothing/**", "-c", str(config))
    assert missing.status == 1
    assert "no trust data cached for registry.example.com/nothing/**" in missing.stderr

    several = trustctl("forget-root", "registry.example.com/**", "-c", str(config))
    assert several.status == 2
    assert "registry.example.com/** matches 2 cached repositories" in several.stderr
    assert store.cached_guns() == sorted([GUN, other])

    run = trustctl("forget-root", "registry.example.com/**", "--all", "-c", str(config))
    assert run.status == 0, run.stderr
    assert f"{GUN}: forgot its trusted root; its next lookup trusts" in run.stdout
    assert f"it trusted root key {repo.root_keys[0].key_id}" in run.stdout
    assert store.cached_guns() == []
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    by_gun = {record["gun"]: record for record in records}
    assert set(by_gun) == {GUN, other}
    record = by_gun[GUN]
    assert record["action"] == "forget-root"
    assert record["pattern"] == "registry.example.com/**"
    assert record["pinned"] is None and record["new_root_keys"] is None
    assert record["old_root_keys"] == [
        dict(zip(("id", "canonical_id"), _ids(repo.root_keys[0]), strict=True))
    ]
    assert isinstance(record["uid"], int)
    assert by_gun[other]["old_root_keys"] is None


def test_trustctl_forget_root_of_one_gun_warns_when_tofu_is_off(tmp_path: Path) -> None:
    config = _config(tmp_path, extra="")
    config.write_text(config.read_text() + "[trust_pinning]\ndisable_tofu = true\n")
    _, server = _repo_expiring_soon(datetime.now(UTC))
    refresh(Updater(MetadataStore(tmp_path / "state")), server)
    run = trustctl("forget-root", GUN, "-c", str(config))
    assert run.status == 0, run.stderr
    assert "its next lookup is refused until you pin it" in run.stdout
    again = trustctl("forget-root", GUN, "-c", str(config))
    assert again.status == 1 and f"no trust data cached for {GUN}" in again.stderr
    for bad in (
        (GUN + ":v1",),
        (GUN, "--pin", "ABC"),
        ("registry.example.com/**", "--pin", "a" * 64),
    ):
        assert trustctl("forget-root", *bad, "-c", str(config)).status == 2


class _Cache:
    """The two things the watch's scan reads, over an updater (as the TrustEngine offers)."""

    def __init__(self, updater: Updater) -> None:
        self.updater = updater
        self.reads: list[str] = []

    def cached_guns(self) -> list[str]:
        return self.updater.store.cached_guns()

    def cached_repository(self, gun: str) -> Any:
        self.reads.append(gun)
        return self.updater.cached_repository(gun)

    def cache_stamp(self, gun: str) -> object:
        return self.updater.store.stamp(gun)


def test_watch_scan_reads_repositories_no_lookup_has_touched(
    store: MetadataStore, caplog: pytest.LogCaptureFixture
) -> None:
    _, server = _repo_expiring_soon()
    refresh(Updater(store, clock=lambda: NOW), server)  # another process filled the cache
    store.save("registry.example.com/broken/app", "root", b"{}")
    metrics = Metrics(trustd_version="test")
    metrics.expiry._clock = lambda: NOW
    watch = ExpiryWatch(30, metrics.expiry, clock=lambda: NOW)
    cache = _Cache(Updater(store, clock=lambda: NOW))
    with caplog.at_level(logging.WARNING):
        watch.scan(cache)
    samples = gauge_samples(metrics.render().decode())
    assert samples[("trustd_trust_expiry_seconds", GUN, "targets")] == 20 * 86400
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        "cannot read the cached trust data of registry.example.com/broken/app" in m
        for m in messages
    )
    assert sum("trust data expires soon" in m for m in messages) == 2

    # Files unchanged since the last scan are not read and verified again; changed ones are.
    cache.reads.clear()
    watch.scan(cache)
    assert cache.reads == ["registry.example.com/broken/app"]  # it never read successfully
    renewed = f.Repo(root_keys=[f.x509_key()])
    server.publish(renewed, version=2)
    with pytest.raises(RootKeyChanged):
        refresh(Updater(store, clock=lambda: NOW), server)
    store.forget(GUN)
    refresh(Updater(store, clock=lambda: NOW), server)  # trusted on first use
    watch.scan(cache)
    samples = gauge_samples(metrics.render().decode())
    assert samples[("trustd_trust_expiry_seconds", GUN, "targets")] == 1095 * 86400


class _HeldServer(FactoryServer):
    """Holds the timestamp download until released (a refresh in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()
        self.release = threading.Event()

    def fetch(self, gun: str, name: str, max_bytes: int, credentials: object = None) -> bytes:
        if name == "timestamp":
            self.waiting.set()
            assert self.release.wait(10)
        return super().fetch(gun, name, max_bytes, credentials)


def test_forget_waits_for_a_refresh_in_flight(store: MetadataStore) -> None:
    repo = f.Repo()
    server = _HeldServer()
    server.publish(repo)
    server.release.set()
    refresh(Updater(store, clock=lambda: NOW), server)
    server.release.clear()
    server.waiting.clear()
    daemon = Updater(store, clock=lambda: NOW)
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(refresh, daemon, server)
        assert server.waiting.wait(10)
        forgotten = pool.submit(Updater(store, clock=lambda: NOW).forget, GUN)  # trustctl
        time.sleep(0.2)  # give it the chance to cut in; it must wait for the lock instead
        assert not forgotten.done()
        server.release.set()
        assert in_flight.result(10).root is not None
        assert forgotten.result(10) is not None
    assert store.cached_guns() == []


def test_check_config_prints_the_docker_hub_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trustd.toml"
    path.write_text("")
    assert trustd_main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{path}: OK")
    assert captured.err.startswith(
        f"trustd: warning: {path}: the default rule (enforce) verifies docker.io images, but no "
        "[[notary]] entry is configured for docker.io"
    )
    path.write_text('[[policy]]\nmatch = "docker.io/**"\nmode = "off"\n')
    assert trustd_main(["check-config", str(path)]) == 0
    assert capsys.readouterr().err == ""
