"""Trust data over its lifetime, against the real notary-server, notary CLI and containerd.

* expiry: a delegation signed to expire in 12 days (published to the real server as the CLI
  publishes) and a root certificate valid for 10 days (``notary init --rootcert``) show up in
  the daemon's metrics and log and in ``trustctl expiring``, and go away once the owner does what
  the warning says (``notary witness`` + publish, ``notary key rotate root``);
* a repository deleted and re-created with a new root key is refused with the keys and the
  repair, and repaired by ``trustctl forget-root`` while the daemon serves;
* ``trustctl explain`` for an exempt, an audited, an enforced and an unmatched image;
* the pinning line ``trustctl inspect`` prints, pasted into a config with trust on first use
  disabled, makes the repository verify.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.attacks import resign
from tests.attacks.harness import Run, trustctl_process
from tests.e2e.test_daemon import FakeServiceManager, RunningDaemon, pull_outcome, serving
from tests.stack import NotaryPublisher, NotaryServer, PushedImage, Stack, TestPKI, free_port
from tests.stack.trustd_config import trustd_config_text

PushImage = Callable[..., PushedImage]
DAY = 86400.0


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --- a daemon per test ------------------------------------------------------------------------


class Node:
    """``trustd serve`` in front of the real containerd, and trustctl on the same config."""

    def __init__(self, daemon: RunningDaemon) -> None:
        self.daemon = daemon

    def pull(self, image: str) -> str:
        client = self.daemon.client()
        try:
            return pull_outcome(client, image)
        finally:
            client.close()

    def trustctl(self, *args: str) -> Run:
        """trustctl as its own process on the daemon's config, while the daemon runs."""
        return trustctl_process(*args, "-c", str(self.daemon.config))

    def expiry_gauges(self) -> dict[tuple[str, str, str], float]:
        url = f"http://127.0.0.1:{self.daemon.metrics_port}/metrics"
        text = requests.get(url, timeout=10).text
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_expiry_seconds"):
                    name = sample.labels.get("role") or sample.labels["key_id"]
                    found[(sample.name, sample.labels["gun"], name)] = sample.value
        return found

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.daemon.log_text():
            assert time.monotonic() < deadline, f"{text!r} not in:\n{self.daemon.log_text()}"
            time.sleep(0.1)

    def audit(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.daemon.audit.read_text().splitlines()]


@pytest.fixture
def node(stack: Stack, tmp_path: Path) -> Iterator[Node]:
    manager = FakeServiceManager(tmp_path / "notify.sock")
    config = tmp_path / "trustd.toml"
    port = free_port()
    config.write_text(
        trustd_config_text(
            state_dir=tmp_path / "state",
            notary=[(stack.registry.host, stack.notary_server.url, stack.notary_server.ca_file)],
            containerd_endpoint=stack.containerd.endpoint,
            socket=tmp_path / "cri.sock",
            # freshness_window 0: the real CLI re-creates a repository in well under the default
            # second, and each pull here must see what the server serves by then.
            server={"shutdown_grace": 5, "expiry_warning_days": 30, "freshness_window": 0},
            audit_file=tmp_path / "audit.log",
            metrics_listen=f"127.0.0.1:{port}",
        )
    )
    log = tmp_path / "trustd.log"
    try:
        with serving(config, log, manager, grace=0) as process:
            yield Node(
                RunningDaemon(
                    process,
                    config,
                    tmp_path / "cri.sock",
                    tmp_path / "audit.log",
                    log,
                    manager,
                    port,
                )
            )
            assert process.poll() is None, "trustd exited during the test"
    finally:
        manager.close()


def owner(notary_server: NotaryServer, pki: TestPKI, directory: Path) -> NotaryPublisher:
    """A repository owner with a trust dir (and so root keys) of their own."""
    return NotaryPublisher(notary_server, directory, pki=pki)


# --- expiry -------------------------------------------------------------------------------------


def short_lived_root(
    pki: TestPKI, directory: Path, gun: str, passphrase: str, days: int
) -> tuple[Path, Path]:
    """A self-signed root certificate (CN = GUN) valid for ``days``, and its key encrypted for
    ``notary init --rootkey`` (PBES2 with HMAC-SHA1, the only PRF notary reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, plain_key_path = pki.self_signed_cert(gun, days=days, file_stem="short-lived-root")
    key_path = directory / "root.key"
    encrypt = ["openssl", "pkcs8", "-topk8", "-v2", "aes256", "-v2prf", "hmacWithSHA1"]
    key_path.write_bytes(
        subprocess.run(
            [*encrypt, "-passout", f"pass:{passphrase}"],
            input=plain_key_path.read_bytes(),
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    )
    return cert_path, key_path


def resign_to_expire(
    publisher: NotaryPublisher,
    server: NotaryServer,
    gun: str,
    role: str,
    expires: datetime.datetime,
) -> None:
    """The owner's real delegation key re-signs ``role`` to expire at ``expires``, published to
    the real server (the CLI has no expiry option; this is what it would publish with one).

    notary-server writes the role, a snapshot and a timestamp in the one request before it
    answers, and its snapshot lists its own encoding of the file: the snapshot it then serves
    must name exactly the uploaded bytes, or trustd would rightly refuse the repository.
    """
    signers = resign.CLIKeys(publisher).role_signers(server.metadata(gun, "targets"), role)
    document = resign.edit(server.metadata(gun, role))
    document["signed"]["expires"] = resign.rfc3339(expires)
    document["signed"]["version"] += 1
    uploaded = resign.go_envelope(resign.sign(document, signers))
    server.publish_metadata(gun, {role: uploaded})
    listed = json.loads(server.metadata(gun, "snapshot"))["signed"]["meta"][role]
    assert listed == resign.file_meta(uploaded), (
        f"notary-server's snapshot lists {role} as {listed}, not as the {len(uploaded)} bytes "
        f"published: {uploaded.decode()}"
    )


def test_expiring_delegation_and_root_certificate(
    node: Node,
    push_image: PushImage,
    notary_server: NotaryServer,
    pki: TestPKI,
    tmp_path: Path,
) -> None:
    image = push_image("lifetime/expiry", "v1")
    gun = image.repository
    publisher = owner(notary_server, pki, tmp_path / "owner")
    cert, key = short_lived_root(pki, tmp_path / "root", gun, publisher.passphrase, days=10)
    publisher.run("init", gun, "--rootkey", str(key), "--rootcert", str(cert))
    publisher.rotate_key(gun, "snapshot", server_managed=True)
    publisher.publish(gun)
    publisher.add_delegation_signer(gun, "targets/releases")
    publisher.add(gun, "v1", image.manifest, roles=["targets/releases"], publish=True)
    # A whole second: the time notary encodes without a fraction, which the re-signed file
    # must match byte for byte (resign.rfc3339).
    releases_expire = utc_now().replace(microsecond=0) + datetime.timedelta(days=12)
    resign_to_expire(publisher, notary_server, gun, "targets/releases", releases_expire)
    root = json.loads(notary_server.metadata(gun, "root"))["signed"]
    (root_key,) = root["roles"]["root"]["keyids"]
    assert root["keys"][root_key]["keyval"]["public"].encode() != b""
    cert_expires = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc

    assert node.pull(image.tagged) == "OK"

    # Metrics: seconds left, as of the scrape.
    gauges = node.expiry_gauges()
    scraped = utc_now()
    releases = gauges[("trustd_trust_expiry_seconds", gun, "targets/releases")]
    certificate = gauges[("trustd_root_certificate_expiry_seconds", gun, root_key)]
    assert releases == pytest.approx((releases_expire - scraped).total_seconds(), abs=120)
    assert certificate == pytest.approx((cert_expires - scraped).total_seconds(), abs=120)
    assert gauges[("trustd_trust_expiry_seconds", gun, "targets")] > 1000 * DAY

    # The log warns about both, once each.
    node.wait_for_log(f"trust data expires soon: role targets/releases of {gun} expires at")
    node.wait_for_log(f"root certificate of key {root_key} of {gun} expires at")
    assert f"notary witness {gun} targets/releases && notary publish {gun}" in (
        node.daemon.log_text()
    )
    assert node.pull(image.tagged) == "OK"
    assert node.daemon.log_text().count(f"role targets/releases of {gun} expires at") == 1

    # The listing, for cron: exit 1 while anything is due.
    listing = node.trustctl("expiring", "--json")
    assert listing.status == 1, listing.stderr
    due = {(entry["kind"], entry["name"]): entry for entry in listing.json()["due"]}
    assert set(due) == {("certificate", root_key), ("role", "targets/releases")}
    assert due[("role", "targets/releases")]["seconds_left"] == pytest.approx(12 * DAY, abs=300)
    assert due[("certificate", root_key)]["seconds_left"] == pytest.approx(10 * DAY, abs=300)
    assert node.trustctl("expiring", "--days", "5").status == 0

    # inspect shows the same figures.
    inspected = node.trustctl("inspect", gun, "--json")
    assert inspected.status == 0, inspected.stderr
    expiry = {(item["Kind"], item["Name"]): item for item in inspected.json()[0]["Expiry"]}
    assert expiry[("role", "targets/releases")]["Due"] is True
    assert expiry[("certificate", root_key)]["Due"] is True
    assert expiry[("role", "targets")]["Due"] is False

    # The owner does what the warnings say; the node follows and nothing is due any more.
    publisher.run("witness", gun, "targets/releases")
    publisher.publish(gun)
    publisher.rotate_key(gun, "root")
    assert node.pull(image.tagged) == "OK"
    gauges = node.expiry_gauges()
    assert gauges[("trustd_trust_expiry_seconds", gun, "targets/releases")] > 1000 * DAY
    certificates = [
        value
        for (metric, each_gun, _), value in gauges.items()
        if metric == "trustd_root_certificate_expiry_seconds" and each_gun == gun
    ]
    assert len(certificates) == 1 and certificates[0] > 3000 * DAY  # the rotated root's own
    after = node.trustctl("expiring")
    assert (after.status, after.stdout) == (
        0,
        "nothing expires within 30 days (1 repositories cached)\n",
    )


# --- a repository deleted and re-created ---------------------------------------------------------


def root_key_ids(server: NotaryServer, gun: str) -> tuple[str, ...]:
    return tuple(json.loads(server.metadata(gun, "root"))["signed"]["roles"]["root"]["keyids"])


def test_re_created_repository_is_refused_then_repaired_while_the_daemon_serves(
    node: Node,
    stack: Stack,
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    pki: TestPKI,
    tmp_path: Path,
) -> None:
    first = push_image("lifetime/rekey", "v1", seed="first")
    gun = first.repository
    stack.sign(first)
    assert node.pull(first.tagged) == "OK"
    (old_key,) = root_key_ids(notary_server, gun)
    pid = node.daemon.process.pid

    # The repository is deleted and created again by someone with another root key.
    notary.run("delete", gun, "--remote")
    second = push_image("lifetime/rekey", "v1", seed="second")
    new_owner = owner(notary_server, pki, tmp_path / "new-owner")
    new_owner.init(gun)
    new_owner.add(gun, "v1", second.manifest, publish=True)
    (new_key,) = root_key_ids(notary_server, gun)
    (new_canonical,) = new_owner.key_ids(gun, "root")
    assert new_key != old_key

    refused = node.pull(second.tagged)
    assert refused.startswith(
        "UNKNOWN: SignatureValidationFailed: trustd: new root not signed by the trusted root's "
        f"root keys: root.json for {gun}"
    ), refused
    assert f"its root key is {new_key} (canonical {new_canonical}), this node trusts {old_key}" in (
        refused
    )
    assert f"run on this node: trustctl forget-root {gun} --pin {new_canonical}" in refused
    (denial,) = [r for r in node.audit() if r["verdict"] == "deny"]
    assert denial["error"] == "RootKeyChanged"

    # Repair 1: forget, and trust on first use again; the daemon is not restarted.
    forgot = node.trustctl("forget-root", gun)
    assert forgot.status == 0, forgot.stderr
    assert f"{gun}: it trusted root key {old_key}" in forgot.stdout
    assert node.pull(second.tagged) == "OK"
    assert node.audit()[-1]["digest"] == second.digest

    # Re-created once more; repair 2: pin the key the owner confirms.
    notary_server_root_before = notary_server.metadata(gun, "root")
    new_owner.run("delete", gun, "--remote")
    third = push_image("lifetime/rekey", "v1", seed="third")
    third_owner = owner(notary_server, pki, tmp_path / "third-owner")
    third_owner.init(gun)
    third_owner.add(gun, "v1", third.manifest, publish=True)
    assert notary_server.metadata(gun, "root") != notary_server_root_before
    (third_canonical,) = third_owner.key_ids(gun, "root")
    assert "SignatureValidationFailed" in node.pull(third.tagged)

    wrong = node.trustctl("forget-root", gun, "--pin", new_canonical)  # the previous key
    assert wrong.status == 1
    assert "is pinned" in wrong.stderr
    assert "SignatureValidationFailed" in node.pull(third.tagged)  # nothing changed

    pinned = node.trustctl("forget-root", gun, "--pin", third_canonical)
    assert pinned.status == 0, pinned.stderr
    assert f"now trusting its current root, signed by pinned key {third_canonical}" in (
        pinned.stdout
    )
    assert node.pull(third.tagged) == "OK"
    assert node.audit()[-1]["digest"] == third.digest
    assert node.daemon.process.pid == pid and node.daemon.process.poll() is None

    records = [r for r in node.audit() if r["action"] == "forget-root"]
    assert [(r["gun"], r["pinned"]) for r in records] == [(gun, None), (gun, [third_canonical])]
    assert records[0]["old_root_keys"][0]["id"] == old_key  # type: ignore[index]
    assert records[1]["new_root_keys"][0]["canonical_id"] == third_canonical  # type: ignore[index]
    assert records[1]["uid"] == os.getuid()


# --- policy dry run -----------------------------------------------------------------------------


def test_explain_exempt_audited_enforced_and_unmatched_images(
    stack: Stack, push_image: PushImage, notary_server: NotaryServer, tmp_path: Path
) -> None:
    registry = stack.registry.host
    enforced = push_image("lifetime/explain-enforced", "v1")
    stack.sign(enforced)
    audited = push_image("lifetime/explain-audited", "v1")  # never signed
    unmatched = push_image("lifetime/explain-other", "v1")  # never signed
    config = tmp_path / "trustd.toml"
    config.write_text(
        f'exempt = ["{registry}/lifetime/explain-exempt:*"]\n'
        + trustd_config_text(
            state_dir=tmp_path / "state",
            notary=[(registry, notary_server.url, notary_server.ca_file)],
            policy=(
                f'[[policy]]\nmatch = "{registry}/lifetime/explain-audited"\nmode = "audit"\n'
                f'[[policy]]\nmatch = "{registry}/lifetime/explain-enforced"\n'
                'roles = ["targets"]\n'
            ),
        )
    )

    def explain(image: str) -> tuple[int, dict[str, object]]:
        run = trustctl_process("explain", image, "--json", "-c", str(config))
        assert run.stderr == "", run.stderr
        return run.status, run.json()

    status, exempt = explain(f"{registry}/lifetime/explain-exempt:anything")
    assert status == 0
    assert exempt["applies"] == {
        "source": "exempt[0]",
        "pattern": f"{registry}/lifetime/explain-exempt:*",
        "exempt": True,
    }
    assert (exempt["mode"], exempt["verdict"], exempt["outage"]) == ("exempt", "allow", None)
    assert exempt["pull_ref"] == f"{registry}/lifetime/explain-exempt:anything"

    status, audit = explain(audited.tagged)
    assert status == 0  # admitted, as the daemon would
    assert audit["applies"]["source"] == "policy[0]"  # type: ignore[index]
    assert (audit["mode"], audit["verdict"], audit["error"]) == (
        "audit",
        "audit-fail",
        "NoTrustData",
    )
    assert audit["outage"]["offline"] in ("cached", "deny")  # type: ignore[index]
    assert audit["notary"] == {"url": notary_server.url, "source": "notary[0]", "warning": None}

    status, enforce = explain(enforced.tagged)
    assert status == 0
    assert enforce["applies"] == {
        "source": "policy[1]",
        "pattern": f"{registry}/lifetime/explain-enforced",
        "exempt": False,
    }
    assert (enforce["mode"], enforce["verdict"]) == ("enforce", "allow")
    assert enforce["roles"] == ["targets"] and enforce["signers"] == []
    assert enforce["require_signed_digests"] is True
    assert enforce["pull_ref"] == enforced.by_digest
    assert (enforce["digest"], enforce["signed_by"]) == (enforced.digest, "targets")
    assert enforce["trust_pinning"]["trusted_root_cached"] is True  # type: ignore[index]

    status, other = explain(unmatched.tagged)
    assert status == 1
    assert other["applies"] == {"source": "default rule", "pattern": "**", "exempt": False}
    assert (other["mode"], other["verdict"], other["error"]) == ("enforce", "deny", "NoTrustData")
    assert other["roles"] == ["targets/releases", "targets"]

    text = trustctl_process("explain", enforced.tagged, "-c", str(config))
    assert text.status == 0
    rows = dict(re.split(r"\s{3,}", line, maxsplit=1) for line in text.stdout.splitlines())
    assert rows["applies"] == f'policy[1] "{registry}/lifetime/explain-enforced"'
    assert rows["mode"] == "enforce"
    assert rows["roles"] == "targets (first that signs the tag)"
    assert rows["verdict now"] == f"allow: signed by targets as {enforced.digest}"
    assert rows["would pull"] == enforced.by_digest


# --- pinning made easy --------------------------------------------------------------------------


def test_pasted_pinning_line_verifies_with_trust_on_first_use_disabled(
    stack: Stack,
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    tmp_path: Path,
) -> None:
    image = push_image("lifetime/pin-line", "v1")
    stack.sign(image)
    gun = image.repository
    registry = stack.registry.host

    def config(name: str, extra: str) -> Path:
        path = tmp_path / name / "trustd.toml"
        path.parent.mkdir()
        path.write_text(
            trustd_config_text(
                state_dir=path.parent / "state",
                notary=[(registry, notary_server.url, notary_server.ca_file)],
                policy=extra,
            )
        )
        return path

    inspected = trustctl_process("inspect", gun, "--json", "-c", str(config("tofu", "")))
    assert inspected.status == 0, inspected.stderr
    (report,) = inspected.json()
    (key,) = report["RootKeys"]
    assert (key["ID"],) == root_key_ids(notary_server, gun)
    assert key["CanonicalID"] in notary.key_ids(gun, "root")  # the CLI's key file name
    line = report["TrustPinning"]["Line"]
    assert line == f'"{gun}" = ["{key["CanonicalID"]}"]'
    text = trustctl_process("inspect", gun, "-c", str(config("text", "")))
    assert f"  [trust_pinning.certs]\n  {line}\n" in text.stdout
    assert f"canonical ID:     {key['CanonicalID']}" in text.stdout

    no_tofu = "[trust_pinning]\ndisable_tofu = true\n"
    refused = trustctl_process("verify", image.tagged, "-c", str(config("refused", no_tofu)))
    assert refused.status == 1
    assert "trust-on-first-use is disabled" in refused.stderr
    pasted = config("pinned", f"{no_tofu}[trust_pinning.certs]\n{line}\n")
    verified = trustctl_process("verify", image.tagged, "--json", "-c", str(pasted))
    assert verified.status == 0, verified.stderr
    assert verified.json()["digest"] == image.digest
