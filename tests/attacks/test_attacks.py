"""Attacks on a real signed repository: each is denied with its own error class and message.

Every file starts as what the real notary CLI and notary-server produced. A tampering HTTPS server
(tests/attacks/harness.py) serves modified copies in front of the real server; where an attack
needs "a valid signature on bad metadata", the copy is re-signed with the real key the CLI holds
(tests/attacks/resign.py). Where a new timestamp or snapshot is needed (their keys are held by
notary-server), the real root key first rotates those roles to keys the test holds, as the
repository's owner can; the chain that follows is validly signed throughout and only its content
is bad.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.attacks import resign
from tests.attacks.harness import ENDLESS, TamperServer, write_config
from tests.stack import NotaryPublisher, NotaryServer, PushedImage, Registry, Stack, TestPKI
from trustd.config.load import load_config
from trustd.errors import (
    DelegationViolation,
    ExpiredMetadata,
    HashMismatch,
    MetadataTooLarge,
    RollbackDetected,
    RootKeyChanged,
    RootRotationInvalid,
    ThresholdNotMet,
    TrustError,
    UnsupportedKey,
)
from trustd.formats.notary.engine import TrustEngine
from trustd.formats.notary.keys import key_id
from trustd.formats.notary.resolution import resolve_tag

PushImage = Callable[..., PushedImage]
NOW = datetime.datetime.now(datetime.UTC)


class Engine:
    """trustd's engine in this process, on its own state dir, with a clock the test sets."""

    def __init__(self, directory: Path, registry: Registry, url: str, ca: Path) -> None:
        config = load_config(write_config(directory, registry.host, url, ca))
        self.now = datetime.datetime.now(datetime.UTC)
        self.registry = registry.host
        self.engine = TrustEngine(config, config.server.state_dir, clock=lambda: self.now)

    def resolve(self, gun: str, tag: str) -> str:
        return resolve_tag(self.engine.repository(self.registry, gun), tag).digest


@pytest.fixture
def engine(
    tmp_path: Path, registry: Registry, notary_server: NotaryServer, tamper: TamperServer
) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(through_tamper: bool = True) -> Engine:
        url = tamper.url if through_tamper else notary_server.url
        made.append(Engine(tmp_path / f"engine-{len(made)}", registry, url, notary_server.ca_file))
        return made[-1]

    yield make
    for each in made:
        each.engine.close()


def signed_repo(
    stack: Stack, push_image: PushImage, name: str, local_snapshot: bool = False
) -> PushedImage:
    image = push_image(f"attacks/{name}", "v1")
    stack.publisher.init(image.repository, server_managed_snapshot=not local_snapshot)
    stack.publisher.add(image.repository, "v1", image.manifest, publish=True)
    return image


def denied(error_class: type[TrustError], pattern: str, action: Callable[[], object]) -> TrustError:
    """``action`` raises exactly ``error_class`` (not a subclass) with a message matching."""
    with pytest.raises(TrustError) as caught:
        action()
    assert type(caught.value) is error_class, f"{type(caught.value).__name__}: {caught.value}"
    assert re.search(pattern, str(caught.value)), str(caught.value)
    return caught.value


# --- signatures ---------------------------------------------------------------------------------


def test_flipped_signature_byte(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    engine: Callable[..., Engine],
) -> None:
    gun = signed_repo(stack, push_image, "bad-signature").repository
    timestamp = resign.edit(notary_server.metadata(gun, "timestamp"))
    value = bytearray(base64.b64decode(timestamp["signatures"][0]["sig"]))
    value[10] ^= 0x01
    timestamp["signatures"][0]["sig"] = base64.b64encode(bytes(value)).decode()
    tamper.serve(gun, "timestamp", resign.dump(timestamp))
    denied(
        ThresholdNotMet,
        rf"^timestamp\.json for {gun}: 0 of 1 required signatures valid "
        r"\(key \w+…: bad signature\)$",
        lambda: engine().resolve(gun, "v1"),
    )


def test_signatures_removed(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    engine: Callable[..., Engine],
) -> None:
    gun = signed_repo(stack, push_image, "no-signatures").repository
    # The timestamp is the file whose bytes no parent hash binds, so its signatures count.
    timestamp = resign.edit(notary_server.metadata(gun, "timestamp"))
    timestamp["signatures"] = []
    tamper.serve(gun, "timestamp", resign.dump(timestamp))
    denied(
        ThresholdNotMet,
        rf"^timestamp\.json for {gun}: 0 of 1 required signatures valid \(no signatures\)$",
        lambda: engine().resolve(gun, "v1"),
    )


def test_threshold_two_met_only_by_a_duplicated_signature(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    keys: resign.CLIKeys,
    engine: Callable[..., Engine],
) -> None:
    gun = signed_repo(stack, push_image, "duplicate-key").repository
    real_root = notary_server.metadata(gun, "root")
    root = resign.edit(real_root)
    root["signed"]["roles"]["root"]["threshold"] = 2
    forged = resign.load(resign.sign(root, keys.role_signers(real_root, "root")))
    forged["signatures"] = forged["signatures"] * 2  # one real key, signing twice
    tamper.serve(gun, "root", resign.dump(forged))
    denied(
        ThresholdNotMet,
        rf"^root\.json for {gun}: 1 of 2 required signatures valid",
        lambda: engine().resolve(gun, "v1"),
    )


def test_root_key_of_unsupported_type(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    keys: resign.CLIKeys,
    engine: Callable[..., Engine],
) -> None:
    gun = signed_repo(stack, push_image, "key-type").repository
    real_root = notary_server.metadata(gun, "root")
    root = resign.edit(real_root)
    (timestamp_key,) = root["signed"]["roles"]["timestamp"]["keyids"]
    root["signed"]["keys"][timestamp_key]["keytype"] = "dsa"
    tamper.serve(gun, "root", resign.sign(root, keys.role_signers(real_root, "root")))
    denied(
        UnsupportedKey,
        rf"key {timestamp_key[:8]}… has unsupported key type 'dsa'",
        lambda: engine().resolve(gun, "v1"),
    )


# --- expiry -------------------------------------------------------------------------------------


def test_expired_timestamp(
    stack: Stack, push_image: PushImage, notary_server: NotaryServer, engine: Callable[..., Engine]
) -> None:
    # The timestamp key is always server-held, so an expired timestamp is the real one seen
    # after its 14 days: the engine's clock is moved past its expiry (not past the others').
    gun = signed_repo(stack, push_image, "expired-timestamp").repository
    expires = json.loads(notary_server.metadata(gun, "timestamp"))["signed"]["expires"]
    late = engine(through_tamper=False)
    late.now = datetime.datetime.fromisoformat(expires[:19] + "+00:00") + datetime.timedelta(
        hours=1
    )
    denied(
        ExpiredMetadata,
        rf"^timestamp\.json for {gun} expired at {expires[:19]}",
        lambda: late.resolve(gun, "v1"),
    )


def serve_root_holders_chain(
    tamper: TamperServer,
    server: NotaryServer,
    keys: resign.CLIKeys,
    gun: str,
    changed: dict[str, bytes] | None = None,
    snapshot_expires: datetime.datetime | None = None,
) -> resign.RootHolder:
    """Serve a root rotated by the real root key, and a timestamp and snapshot over ``changed``."""
    holder = resign.RootHolder(keys, server.metadata(gun, "root"))
    snapshot = holder.snapshot(server.metadata(gun, "snapshot"), changed or {}, snapshot_expires)
    timestamp = holder.timestamp(server.metadata(gun, "timestamp"), snapshot)
    served = {"root": holder.root, "timestamp": timestamp, "snapshot": snapshot, **(changed or {})}
    for role, data in served.items():
        tamper.serve(gun, role, data)
    return holder


def trusts_rotated_root(node: Engine, gun: str, holder: resign.RootHolder) -> bool:
    """Whether ``node`` followed the root holder's rotation (so the chain's signatures held)."""
    return node.engine.updater.store.load(gun, "root") == holder.root


@pytest.mark.parametrize("role", ["snapshot", "targets"])
def test_expired_snapshot_and_targets(
    role: str,
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    tamper: TamperServer,
    keys: resign.CLIKeys,
    engine: Callable[..., Engine],
) -> None:
    image = signed_repo(stack, push_image, f"expired-{role}")
    gun = image.repository
    node = engine()
    assert node.resolve(gun, "v1") == image.digest  # the node trusts the real root first

    expired = NOW - datetime.timedelta(hours=1)
    if role == "snapshot":
        holder = serve_root_holders_chain(
            tamper, notary_server, keys, gun, snapshot_expires=expired
        )
    else:
        targets = resign.edit(notary_server.metadata(gun, "targets"))
        targets["signed"]["expires"] = resign.rfc3339(expired)
        targets["signed"]["version"] += 1
        root = notary_server.metadata(gun, "root")
        signed = resign.sign(targets, keys.role_signers(root, "targets"))
        holder = serve_root_holders_chain(tamper, notary_server, keys, gun, {"targets": signed})
    for attempt in (node, engine()):  # the node that followed the rotation, and a new one
        denied(
            ExpiredMetadata,
            rf"^{role}\.json for {gun} expired at {expired:%Y-%m-%dT%H:%M:%S}Z$",
            functools.partial(attempt.resolve, gun, "v1"),
        )
        assert trusts_rotated_root(attempt, gun, holder)


# --- rollback and mix-and-match -----------------------------------------------------------------


def test_rolled_back_state(
    stack: Stack,
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    tamper: TamperServer,
    engine: Callable[..., Engine],
) -> None:
    image = signed_repo(stack, push_image, "rollback")
    gun = image.repository
    old = {role: notary_server.metadata(gun, role) for role in ("timestamp", "snapshot", "targets")}
    newer = push_image("attacks/rollback", "v1", seed="newer")
    notary.add(gun, "v1", newer.manifest, publish=True)

    node = engine()
    assert node.resolve(gun, "v1") == newer.digest
    fresh = engine()  # a node with no history accepts the old, validly signed state
    for role, data in old.items():
        tamper.serve(gun, role, data)
    assert fresh.resolve(gun, "v1") == image.digest
    old_version = json.loads(old["timestamp"])["signed"]["version"]
    denied(
        RollbackDetected,
        rf"^timestamp\.json for {gun} version {old_version} is older than the verified version "
        rf"{old_version + 1}$",
        lambda: node.resolve(gun, "v1"),
    )


def test_targets_from_another_moment(
    stack: Stack,
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    tamper: TamperServer,
    engine: Callable[..., Engine],
) -> None:
    image = signed_repo(stack, push_image, "mix-and-match")
    gun = image.repository
    old_targets = notary_server.metadata(gun, "targets")
    other = push_image("attacks/mix-and-match", "v2")
    notary.add(gun, "v2", other.manifest, publish=True)
    tamper.serve(gun, "targets", old_targets)
    denied(
        HashMismatch,
        rf"^targets\.json for {gun}: length {len(old_targets)} does not match the expected",
        lambda: engine().resolve(gun, "v1"),
    )


def test_endless_timestamp(
    stack: Stack, push_image: PushImage, tamper: TamperServer, engine: Callable[..., Engine]
) -> None:
    gun = signed_repo(stack, push_image, "endless").repository
    tamper.serve(gun, "timestamp", ENDLESS)
    denied(
        MetadataTooLarge,
        rf"^timestamp\.json for {gun} from {tamper.url} exceeds the 65536-byte limit$",
        lambda: engine().resolve(gun, "v1"),
    )


# --- root rotation and delegations --------------------------------------------------------------


def test_root_rotation_not_signed_by_the_old_root(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    pki: TestPKI,
    tamper: TamperServer,
    engine: Callable[..., Engine],
) -> None:
    gun = signed_repo(stack, push_image, "forged-rotation").repository
    node = engine()
    assert node.resolve(gun, "v1")

    # The attacker's own root certificate (CN = GUN) and timestamp key.
    cert_path, key_path = pki.self_signed_cert(gun, file_stem="attacker-root")
    attacker_root = serialization.load_pem_private_key(key_path.read_bytes(), None)
    attacker_timestamp = ed25519.Ed25519PrivateKey.generate()
    cert_b64 = base64.b64encode(cert_path.read_bytes()).decode()
    raw = attacker_timestamp.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    timestamp_b64 = base64.b64encode(raw).decode()
    root_id, timestamp_id = key_id("ecdsa-x509", cert_b64), key_id("ed25519", timestamp_b64)

    root = resign.edit(notary_server.metadata(gun, "root"))
    signed = root["signed"]
    signed["keys"][root_id] = {
        "keytype": "ecdsa-x509",
        "keyval": {"private": None, "public": cert_b64},
    }
    signed["keys"][timestamp_id] = {
        "keytype": "ed25519",
        "keyval": {"private": None, "public": timestamp_b64},
    }
    signed["roles"]["root"]["keyids"] = [root_id]
    signed["roles"]["timestamp"]["keyids"] = [timestamp_id]
    signed["version"] += 1
    timestamp = resign.edit(notary_server.metadata(gun, "timestamp"))
    timestamp["signed"]["version"] += 1
    tamper.serve(gun, "root", resign.sign(root, [(root_id, attacker_root)]))
    tamper.serve(gun, "timestamp", resign.sign(timestamp, [(timestamp_id, attacker_timestamp)]))
    # A forged root in order by itself cannot be told from a repository re-created by its owner:
    # denied as a changed root key, naming the attacker's key, and never accepted without an
    # operator's trustctl forget-root.
    error = denied(
        RootKeyChanged,
        rf"^new root not signed by the trusted root's root keys: root\.json for {gun}: "
        r"0 of 1 required signatures valid.* its root key is "
        rf"{root_id} \(canonical \w{{64}}\), this node trusts .*otherwise someone is serving a "
        "root this node never trusted$",
        lambda: node.resolve(gun, "v1"),
    )
    assert isinstance(error, RootRotationInvalid)
    assert node.engine.updater.store.load(gun, "root") == notary_server.metadata(gun, "root")


def test_delegation_signs_outside_its_paths(
    stack: Stack,
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    tamper: TamperServer,
    keys: resign.CLIKeys,
    engine: Callable[..., Engine],
) -> None:
    image = signed_repo(stack, push_image, "delegation-paths")
    gun = image.repository
    notary.add_delegation_signer(gun, "targets/releases", paths=["prod-"])
    release = push_image("attacks/delegation-paths", "prod-1")
    notary.add(gun, "prod-1", release.manifest, roles=["targets/releases"], publish=True)
    node = engine()
    assert node.resolve(gun, "prod-1") == release.digest
    assert node.resolve(gun, "v1") == image.digest

    # The real delegation key signs "v1", outside "prod-", to take over the tag targets signs.
    releases = resign.edit(notary_server.metadata(gun, "targets/releases"))
    releases["signed"]["targets"]["v1"] = releases["signed"]["targets"]["prod-1"]
    releases["signed"]["version"] += 1
    targets = notary_server.metadata(gun, "targets")
    signed = resign.sign(releases, keys.role_signers(targets, "targets/releases"))
    holder = serve_root_holders_chain(
        tamper, notary_server, keys, gun, {"targets/releases": signed}
    )

    violation = (
        rf"^targets/releases\.json for {gun}: target 'v1' is outside the paths delegated to "
        r"targets/releases \('prod-'\)$"
    )
    # docker's role order consults targets/releases first, for every tag.
    denied(DelegationViolation, violation, lambda: node.resolve(gun, "v1"))
    denied(DelegationViolation, violation, lambda: node.resolve(gun, "prod-1"))
    assert trusts_rotated_root(node, gun, holder)
    # Only the broken role is unusable: a lookup that does not consult it still resolves.
    assert resolve_tag(
        node.engine.repository(node.registry, gun), "v1", roles=("targets",)
    ).digest == (image.digest)
    denied(DelegationViolation, violation, lambda: engine().resolve(gun, "v1"))


def test_delegation_expiring_while_held_breaks_only_that_role(
    stack: Stack,
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    tamper: TamperServer,
    keys: resign.CLIKeys,
    engine: Callable[..., Engine],
) -> None:
    image = signed_repo(stack, push_image, "delegation-expiry")
    gun = image.repository
    notary.add_delegation_signer(gun, "targets/releases")
    release = push_image("attacks/delegation-expiry", "rc")
    notary.add(gun, "rc", release.manifest, roles=["targets/releases"], publish=True)

    # The real delegation key re-signs targets/releases to expire in an hour.
    expires = NOW + datetime.timedelta(hours=1)
    releases = resign.edit(notary_server.metadata(gun, "targets/releases"))
    releases["signed"]["expires"] = resign.rfc3339(expires)
    releases["signed"]["version"] += 1
    targets = notary_server.metadata(gun, "targets")
    signed = resign.sign(releases, keys.role_signers(targets, "targets/releases"))
    serve_root_holders_chain(tamper, notary_server, keys, gun, {"targets/releases": signed})
    held, fresh = engine(), engine()
    assert held.resolve(gun, "rc") == release.digest  # valid now, and held in memory

    expired = rf"^targets/releases\.json for {gun} expired at {expires:%Y-%m-%dT%H:%M:%S}Z$"
    for node in (held, fresh):  # whether it expired in memory or was fetched expired
        node.now = NOW + datetime.timedelta(hours=2)
        by_targets = resolve_tag(
            node.engine.repository(node.registry, gun), "v1", roles=("targets",)
        )
        assert by_targets.digest == image.digest
        denied(ExpiredMetadata, expired, functools.partial(node.resolve, gun, "rc"))
