"""trustctl against the real notary-server, every answer checked against ``notary lookup``.

The notary CLI creates and signs everything; trustd runs as ``trustctl verify --json`` (in this
process, or as a new process where restarts matter) with a config file written per test.
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.attacks.harness import Run, tamper_server, trustctl, trustctl_process, write_config
from tests.stack import (
    NotaryCLIError,
    NotaryPublisher,
    NotaryServer,
    PushedImage,
    Registry,
    Stack,
    TestPKI,
    free_port,
)
from trustd.formats.notary.keys import canonical_key_id, load_public_key

PushImage = Callable[..., PushedImage]


class Trustctl:
    """trustctl with one config (and so one state dir) for one test."""

    def __init__(self, directory: Path, registry: Registry, url: str, ca: Path, extra: str = ""):
        self.config = write_config(directory, registry.host, url, ca, extra=extra)
        self.state_dir = directory / "state"

    def verify(self, reference: str) -> Run:
        return trustctl("verify", reference, "--json", "-c", str(self.config))

    def verify_process(self, reference: str) -> Run:
        return trustctl_process("verify", reference, "--json", "-c", str(self.config))

    def inspect(self, reference: str) -> Run:
        return trustctl("inspect", reference, "--json", "-c", str(self.config))


@pytest.fixture
def trustd(
    tmp_path: Path, registry: Registry, notary_server: NotaryServer
) -> Callable[..., Trustctl]:
    counter = iter(range(1000))

    def make(extra: str = "", url: str | None = None) -> Trustctl:
        return Trustctl(
            tmp_path / f"trustd-{next(counter)}",
            registry,
            url or notary_server.url,
            notary_server.ca_file,
            extra,
        )

    return make


def assert_matches_lookup(run: Run, notary: NotaryPublisher, gun: str, tag: str) -> None:
    assert run.status == 0, run.stderr
    result = run.json()
    assert (result["digest"], result["size"]) == notary.lookup(gun, tag)


def cached_root(trustctl_: Trustctl, gun: str) -> dict[str, object]:
    (path,) = trustctl_.state_dir.rglob("root.json")
    assert gun.split("/")[-1] in str(path)
    return json.loads(path.read_bytes())["signed"]


# --- resolution ---------------------------------------------------------------------------------


def test_tags_signed_in_targets(
    stack: Stack, push_image: PushImage, notary: NotaryPublisher, trustd: Callable[..., Trustctl]
) -> None:
    one = push_image("verify/targets", "1.0")
    two = push_image("verify/targets", "2.0")
    stack.sign(one)
    stack.sign(two)
    cli = trustd()
    for image in (one, two):
        run = cli.verify(image.tagged)
        assert_matches_lookup(run, notary, image.repository, image.tag)
        assert run.json()["digest"] == image.digest
        assert run.json()["role"] == "targets"
        assert run.json()["pinned"] == image.by_digest


def test_releases_wins_over_targets_unlike_notary_lookup(
    stack: Stack, push_image: PushImage, notary: NotaryPublisher, trustd: Callable[..., Trustctl]
) -> None:
    in_targets = push_image("verify/releases", "v1", seed="targets-copy")
    in_releases = push_image("verify/releases", "v1", seed="releases-copy")
    only_releases = push_image("verify/releases", "rc")
    gun = in_targets.repository
    notary.init(gun)
    notary.add_delegation_signer(gun, "targets/releases")
    notary.add(gun, "v1", in_targets.manifest)
    notary.add(gun, "v1", in_releases.manifest, roles=["targets/releases"])
    notary.add(gun, "rc", only_releases.manifest, roles=["targets/releases"])
    notary.publish(gun)

    run = trustd().verify(f"{gun}:v1")
    assert run.status == 0, run.stderr
    # docker with content trust (and trustd): targets/releases first.
    assert (run.json()["digest"], run.json()["role"]) == (in_releases.digest, "targets/releases")
    # notary lookup walks targets before its delegations, so it answers the other digest.
    assert notary.lookup(gun, "v1") == (in_targets.digest, in_targets.size)
    # Both copies are really signed: notary list of the delegation shows the other one.
    released = {t.tag: t for t in notary.list(gun, roles=["targets/releases"])}
    assert (released["v1"].digest, released["v1"].role) == (in_releases.digest, "targets/releases")

    rc = trustd().verify(f"{gun}:rc")
    assert_matches_lookup(rc, notary, gun, "rc")
    assert rc.json()["role"] == "targets/releases"


def test_required_signers(
    push_image: PushImage, notary: NotaryPublisher, trustd: Callable[..., Trustctl]
) -> None:
    image = push_image("verify/signers", "v1")
    other = push_image("verify/signers", "v1-other")
    gun = image.repository
    notary.init(gun)
    notary.add_delegation_signer(gun, "targets/releases")
    notary.add_delegation_signer(gun, "targets/qa")
    notary.add(gun, "v1", image.manifest, roles=["targets/releases"], publish=True)
    policy = f'[[policy]]\nmatch = "{gun}"\nsigners = ["targets/releases", "targets/qa"]\n'

    missing = trustd(policy).verify(f"{gun}:v1")
    assert missing.status == 1
    assert f"tag v1 in {gun} is not signed by required signer targets/qa" in missing.stderr

    notary.add(gun, "v1", other.manifest, roles=["targets/qa"], publish=True)
    disagree = trustd(policy).verify(f"{gun}:v1")
    assert disagree.status == 1
    assert f"required signers disagree on tag v1 in {gun}" in disagree.stderr

    notary.add(gun, "v1", image.manifest, roles=["targets/qa"], publish=True)
    agreed = trustd(policy).verify(f"{gun}:v1")
    assert agreed.status == 0, agreed.stderr
    assert agreed.json()["role"] == "targets/releases,targets/qa"
    assert agreed.json()["digest"] == image.digest
    # notary lookup has no notion of required signers; the releases copy is what it finds here.
    assert notary.lookup(gun, "v1") == (image.digest, image.size)


def test_removed_tag_is_unsigned_at_once(
    stack: Stack, push_image: PushImage, notary: NotaryPublisher, trustd: Callable[..., Trustctl]
) -> None:
    image = push_image("verify/removed", "v1")
    stack.sign(image)
    cli = trustd()
    assert_matches_lookup(cli.verify(image.tagged), notary, image.repository, "v1")

    notary.remove(image.repository, "v1", publish=True)
    with pytest.raises(NotaryCLIError):
        notary.lookup(image.repository, "v1")
    run = cli.verify(image.tagged)  # same state dir: the cached timestamp must not be trusted
    assert run.status == 1
    assert run.stderr.strip() == f"trustctl: tag v1 is not signed in {image.repository}"


def test_removed_delegation_stops_signing_and_leaves_the_cache(
    push_image: PushImage, notary: NotaryPublisher, trustd: Callable[..., Trustctl]
) -> None:
    image = push_image("verify/removed-delegation", "v1")
    gun = image.repository
    notary.init(gun)
    notary.add_delegation_signer(gun, "targets/releases")
    notary.add(gun, "v1", image.manifest, roles=["targets/releases"])
    notary.publish(gun)
    cli = trustd()
    assert cli.verify(image.tagged).json()["role"] == "targets/releases"
    cached = [path.name for path in cli.state_dir.rglob("*.json")]
    assert any("releases" in name for name in cached), cached

    notary.delegation_remove(gun, "targets/releases", publish=True)

    run = cli.verify(image.tagged)
    assert run.status == 1
    assert f"tag v1 is not signed in {gun}" in run.stderr
    assert not [path for path in cli.state_dir.rglob("*.json") if "releases" in path.name]


def test_re_signed_tag_is_seen_at_once(
    stack: Stack, push_image: PushImage, notary: NotaryPublisher, trustd: Callable[..., Trustctl]
) -> None:
    first = push_image("verify/moved", "v1", seed="first")
    stack.sign(first)
    cli = trustd()
    assert cli.verify(first.tagged).json()["digest"] == first.digest

    second = push_image("verify/moved", "v1", seed="second")
    stack.sign(second)
    run = cli.verify(second.tagged)
    assert_matches_lookup(run, notary, first.repository, "v1")
    assert run.json()["digest"] == second.digest != first.digest


def test_unsigned_repository_and_unsigned_tag(
    stack: Stack,
    push_image: PushImage,
    notary_server: NotaryServer,
    trustd: Callable[..., Trustctl],
) -> None:
    unsigned = push_image("verify/unsigned", "v1")
    run = trustd().verify(unsigned.tagged)
    assert run.status == 1
    assert run.stderr.strip() == (
        f"trustctl: no trust data for {unsigned.repository} on {notary_server.url}"
    )

    signed = push_image("verify/some-tags", "v1")
    stack.sign(signed)
    run = trustd().verify(f"{signed.repository}:v2")
    assert run.status == 1
    assert run.stderr.strip() == f"trustctl: tag v2 is not signed in {signed.repository}"


def test_digest_references(
    stack: Stack, push_image: PushImage, notary: NotaryPublisher, trustd: Callable[..., Trustctl]
) -> None:
    image = push_image("verify/digests", "v1")
    stray = push_image("verify/digests", "stray")
    stack.sign(image)
    cli = trustd()

    by_digest = cli.verify(image.by_digest)
    assert by_digest.status == 0, by_digest.stderr
    assert (by_digest.json()["digest"], by_digest.json()["size"]) == notary.lookup(
        image.repository, "v1"
    )
    assert by_digest.json()["tag"] == "v1"

    unsigned = cli.verify(stray.by_digest)
    assert unsigned.status == 1
    assert f"{stray.digest} is not a signed target of {image.repository}" in unsigned.stderr

    both = cli.verify(f"{image.tagged}@{image.digest}")
    assert both.status == 0, both.stderr
    mismatch = cli.verify(f"{image.tagged}@{stray.digest}")
    assert mismatch.status == 1
    assert f"is signed as {image.digest}, not {stray.digest}" in mismatch.stderr


def test_inspect_lists_tags_signers_and_keys(
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    trustd: Callable[..., Trustctl],
) -> None:
    base = push_image("verify/inspect", "base")
    release = push_image("verify/inspect", "release")
    gun = base.repository
    notary.init(gun)
    notary.add_delegation_signer(gun, "targets/releases")
    notary.add(gun, "base", base.manifest)
    notary.add(gun, "release", release.manifest, roles=["targets/releases"])
    notary.publish(gun)

    run = trustd().inspect(f"{gun}:base")
    assert run.status == 0, run.stderr
    (report,) = run.json()
    assert report["Name"] == gun
    tags = {tag["SignedTag"]: tag for tag in report["SignedTags"]}
    assert tags["base"]["Digest"] == base.digest.removeprefix("sha256:")
    assert tags["base"]["Signers"] == ["Repo Admin"]
    assert tags["release"]["Signers"] == ["releases"]
    for target in notary.list(gun):
        assert "sha256:" + tags[target.tag]["Digest"] == target.digest

    targets = json.loads(notary_server.metadata(gun, "targets"))["signed"]
    root = json.loads(notary_server.metadata(gun, "root"))["signed"]
    (signer,) = report["Signers"]
    assert signer["Name"] == "releases"
    assert [key["ID"] for key in signer["Keys"]] == targets["delegations"]["roles"][0]["keyids"]
    admin = {
        entry["Name"]: [key["ID"] for key in entry["Keys"]]
        for entry in report["AdministrativeKeys"]
    }
    assert admin["Root"] == sorted(root["roles"]["root"]["keyids"])
    assert admin["Repository"] == sorted(root["roles"]["targets"]["keyids"])


# --- restarts, rotations ------------------------------------------------------------------------


def test_restart_keeps_trust_and_rejects_a_rolled_back_server(
    stack: Stack,
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    pki: TestPKI,
    trustd: Callable[..., Trustctl],
) -> None:
    old = push_image("verify/restart", "v1", seed="old")
    stack.sign(old)
    gun = old.repository
    captured = {r: notary_server.metadata(gun, r) for r in ("timestamp", "snapshot", "targets")}
    new = push_image("verify/restart", "v1", seed="new")
    stack.sign(new)

    with tamper_server(notary_server, pki) as tamper:
        cli = trustd(url=tamper.url)
        first = cli.verify_process(new.tagged)
        assert_matches_lookup(first, notary, gun, "v1")
        assert "root" in tamper.fetched(gun)

        tamper.clear_log()
        second = cli.verify_process(new.tagged)
        assert_matches_lookup(second, notary, gun, "v1")
        assert "root" not in tamper.fetched(gun)  # the cached root is the anchor
        assert tamper.fetched(gun) == ["timestamp"]  # nothing changed: nothing else fetched

        for role, data in captured.items():
            tamper.serve(gun, role, data)
        rolled_back = cli.verify_process(new.tagged)
    assert rolled_back.status == 1
    old_version = json.loads(captured["timestamp"])["signed"]["version"]
    assert f"timestamp.json for {gun} version {old_version} is older than" in rolled_back.stderr
    # The old state is validly signed: a node without history would have accepted it.
    assert old.digest != new.digest


def test_root_key_rotation_by_the_cli_is_followed(
    stack: Stack, push_image: PushImage, notary: NotaryPublisher, trustd: Callable[..., Trustctl]
) -> None:
    image = push_image("verify/root-rotation", "v1")
    stack.sign(image)
    gun = image.repository
    cli = trustd()
    assert_matches_lookup(cli.verify(image.tagged), notary, gun, "v1")
    before = cached_root(cli, gun)

    # Declining the CLI's confirmation rotates nothing and must not pass for success.
    with pytest.raises(NotaryCLIError, match=r"(?s)aborted: .*Aborting action\."):
        notary.run("key", "rotate", gun, "root", stdin="no\n")
    notary.rotate_key(gun, "root")
    later = push_image("verify/root-rotation", "v2")
    stack.sign(later)
    run = cli.verify(later.tagged)
    assert_matches_lookup(run, notary, gun, "v2")
    after = cached_root(cli, gun)
    assert after["version"] > before["version"]  # type: ignore[operator]
    assert after["roles"]["root"]["keyids"] != before["roles"]["root"]["keyids"]  # type: ignore[index]


def test_snapshot_key_rotation_to_the_server_is_followed(
    push_image: PushImage, notary: NotaryPublisher, trustd: Callable[..., Trustctl]
) -> None:
    image = push_image("verify/snapshot-rotation", "v1")
    gun = image.repository
    notary.init(gun, server_managed_snapshot=False)
    notary.add(gun, "v1", image.manifest, publish=True)
    cli = trustd()
    assert_matches_lookup(cli.verify(image.tagged), notary, gun, "v1")
    local_key = cached_root(cli, gun)["roles"]["snapshot"]["keyids"]  # type: ignore[index]
    assert local_key == [
        key_id for key_id in local_key if key_id in notary.key_ids(gun, "snapshot")
    ]

    notary.rotate_key(gun, "snapshot", server_managed=True)
    later = push_image("verify/snapshot-rotation", "v2")
    notary.add(gun, "v2", later.manifest, publish=True)
    run = cli.verify(later.tagged)
    assert_matches_lookup(run, notary, gun, "v2")
    server_key = cached_root(cli, gun)["roles"]["snapshot"]["keyids"]  # type: ignore[index]
    assert server_key != local_key


# --- trust pinning ------------------------------------------------------------------------------


def _root_key_ids(notary_server: NotaryServer, gun: str) -> tuple[str, str]:
    """(certificate-form ID, canonical ID) of the repository's root key."""
    root = json.loads(notary_server.metadata(gun, "root"))["signed"]
    (key_id,) = root["roles"]["root"]["keyids"]
    entry = root["keys"][key_id]
    key = load_public_key(entry["keytype"], entry["keyval"]["public"], declared_id=key_id)
    return key_id, canonical_key_id(key)


def test_pinned_root_key_ids(
    stack: Stack,
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    trustd: Callable[..., Trustctl],
) -> None:
    image = push_image("verify/pinned", "v1")
    stack.sign(image)
    gun = image.repository
    cert_id, canonical_id = _root_key_ids(notary_server, gun)
    assert canonical_id in notary.key_ids(gun, "root")  # the CLI names its key file so

    for pinned in (cert_id, canonical_id):
        pin = (
            f'[trust_pinning]\ndisable_tofu = true\n[trust_pinning.certs]\n"{gun}" = ["{pinned}"]\n'
        )
        assert_matches_lookup(trustd(pin).verify(image.tagged), notary, gun, "v1")

    wrong = "ab" * 32
    pin = f'[trust_pinning.certs]\n"{gun}" = ["{wrong}"]\n'
    run = trustd(pin).verify(image.tagged)
    assert run.status == 1
    assert f"root.json for {gun}: none of its root keys" in run.stderr
    assert "is pinned" in run.stderr

    run = trustd("[trust_pinning]\ndisable_tofu = true\n").verify(image.tagged)
    assert run.status == 1
    assert f"no trust pinning configured for {gun} and trust-on-first-use is disabled" in (
        run.stderr
    )


def _ca_issued_root(directory: Path, gun: str, passphrase: str) -> tuple[Path, Path, Path]:
    """A CA, and a root certificate (CN = GUN) it issued with its key: (ca, cert, key).

    The key is encrypted with the CLI's passphrase: ``notary init --rootkey`` imports no other.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trustd root-signing CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gun)]))
        .issuer_name(ca_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "root.crt", directory / "root.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(root.public_bytes(serialization.Encoding.PEM))
    plain = root_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # notary opens PBES2 with a PBKDF2-HMAC-SHA1 PRF only (what it writes itself).
    encrypt = ["openssl", "pkcs8", "-topk8", "-v2", "aes256", "-v2prf", "hmacWithSHA1"]
    encrypted = subprocess.run(
        [*encrypt, "-passout", f"pass:{passphrase}"],
        input=plain,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    paths[2].write_bytes(encrypted)
    return paths


def test_ca_pinning(
    tmp_path: Path,
    push_image: PushImage,
    notary: NotaryPublisher,
    trustd: Callable[..., Trustctl],
) -> None:
    image = push_image("verify/ca-pinned", "v1")
    gun = image.repository
    ca, root_cert, root_key = _ca_issued_root(tmp_path / "root-ca", gun, notary.passphrase)
    # notary init with a root certificate issued by our CA instead of a self-signed one.
    notary.run("init", gun, "--rootkey", str(root_key), "--rootcert", str(root_cert))
    notary.rotate_key(gun, "snapshot", server_managed=True)
    notary.add(gun, "v1", image.manifest, publish=True)
    root = json.loads(notary.server.metadata(gun, "root"))["signed"]
    (root_key_id,) = root["roles"]["root"]["keyids"]
    served_cert = base64.b64decode(root["keys"][root_key_id]["keyval"]["public"])
    assert served_cert == root_cert.read_bytes()

    pinned = trustd(f'[trust_pinning.ca]\n"{gun.rsplit("/", 1)[0]}/" = "{ca}"\n')
    assert_matches_lookup(pinned.verify(image.tagged), notary, gun, "v1")

    other_ca, _, _ = _ca_issued_root(tmp_path / "other-ca", gun, notary.passphrase)
    wrong = trustd(f'[trust_pinning.ca]\n"{gun}" = "{other_ca}"\n')
    run = wrong.verify(image.tagged)
    assert run.status == 1
    assert f"root.json for {gun}: no root certificate chains to the pinned CA" in run.stderr

    # A self-signed (CLI-made) root does not chain to the CA either.
    selfsigned = push_image("verify/ca-pinned-self", "v1")
    notary.init(selfsigned.repository)
    notary.add(selfsigned.repository, "v1", selfsigned.manifest, publish=True)
    ca_only = trustd(f'[trust_pinning.ca]\n"{gun.rsplit("/", 1)[0]}/" = "{ca}"\n')
    run = ca_only.verify(selfsigned.tagged)
    assert run.status == 1
    assert "no root certificate chains to the pinned CA" in run.stderr


# --- exit statuses ------------------------------------------------------------------------------


def test_exit_statuses(
    tmp_path: Path,
    stack: Stack,
    push_image: PushImage,
    registry: Registry,
    notary_server: NotaryServer,
    trustd: Callable[..., Trustctl],
) -> None:
    image = push_image("verify/exit", "v1")
    stack.sign(image)
    cli = trustd()
    assert cli.verify_process(image.tagged).status == 0
    assert cli.verify_process(f"{image.repository}:unsigned").status == 1

    bad_reference = cli.verify_process(f"{image.repository}:bad tag")
    assert bad_reference.status == 2
    assert "invalid image reference" in bad_reference.stderr
    missing = trustctl_process("verify", image.tagged, "-c", str(tmp_path / "missing.toml"))
    assert missing.status == 2

    dead_port = free_port()
    dead = trustd(url=f"https://127.0.0.1:{dead_port}").verify_process(image.tagged)
    assert dead.status == 3
    # trustctl judges as the daemon would: this config's state dir holds nothing to fall back on.
    assert dead.stderr.strip() == (
        f"trustctl: cannot reach notary at https://127.0.0.1:{dead_port} for "
        f"{image.repository}: connection refused; this node has no trust data of "
        f"{image.repository} to fall back on"
    )
    assert "Traceback" not in dead.stderr
