"""trustd as containerd's image verifier, run exactly as containerd's bindir plugin runs it.

The verifier file is the one install.sh puts into containerd's ``bin_dir``; each judgement is
asked with ``-name``, ``-digest``, ``-stdin-media-type`` and the image's OCI descriptor on
stdin, about images in the real registry signed with the real notary CLI on the real
notary-server. Every case runs twice: with ``trustd serve`` running (the verifier asks its
socket) and with the daemon stopped (the verifier judges in its own process), against the same
config, state directory and audit log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.verifier_helpers import (
    HEAVY,
    UNREACHABLE_REGISTRY,
    Node,
    PushImage,
    VerifierRun,
    descriptor_of,
    make_node,
    run_verifier,
    running_daemon,
    signed_image,
    unique_repo,
)
from tests.stack import NotaryServer, Registry, Stack, free_port
from trustd.config.load import load_config
from trustd.formats.notary.engine import TrustEngine
from trustd.formats.notary.resolution import resolve_tag


@pytest.fixture(params=["daemon running", "daemon stopped"])
def node(
    request: pytest.FixtureRequest, tmp_path: Path, registry: Registry, notary_server: NotaryServer
) -> Iterator[Node]:
    node = make_node(tmp_path, registry, notary_server)
    if request.param == "daemon stopped":
        yield node
        return
    with running_daemon(node.config, node.verifier_socket, node.metrics_port) as daemon:
        node.daemon = daemon
        yield node


# -- the cases, with and without the daemon --------------------------------------------------------


def test_signed_tag_resolved_to_its_signed_digest_is_allowed(
    stack: Stack, push_image: PushImage, node: Node
) -> None:
    image = signed_image(stack, push_image, "signed")

    run = node.judge_pull(image)

    assert run.status == 0, run
    assert run.first_line == f"trustd: signed by targets as {image.digest}"
    [record] = node.audited(image.tagged)
    assert (record["verdict"], record["mode"], record["digest"]) == (
        "allow",
        "enforce",
        image.digest,
    )
    if node.daemon is not None:
        sample = (
            'trustd_decisions_total{action="verify",format="notary-v1",mode="enforce",'
            'verdict="allow"}'
        )
        assert node.daemon.metric(sample) == 1.0


def test_tag_swap_is_blocked(stack: Stack, push_image: PushImage, node: Node) -> None:
    """The seed attack: someone with registry credentials re-pushes a signed tag."""
    signed = signed_image(stack, push_image, "swap")
    attacker = push_image(signed.repository.split("/", 1)[1], signed.tag, seed=uuid.uuid4().hex)
    descriptor = descriptor_of(node.registry, signed)  # what the registry serves for the tag now
    assert descriptor["digest"] == attacker.digest != signed.digest

    run = node.judge(signed.tagged, descriptor)

    assert run.status == 1, run
    assert run.first_line == (
        f"SignatureValidationFailed: trustd: tag {signed.tag} of {signed.repository} is signed as "
        f"{signed.digest}, not {attacker.digest}"
    )
    [record] = node.audited(signed.tagged)
    assert (record["verdict"], record["error"]) == ("deny", "DigestNotSigned")
    assert record["reference"] == f"{signed.tagged}@{attacker.digest}"


def test_unsigned_repository_is_blocked(push_image: PushImage, node: Node) -> None:
    image = push_image(unique_repo("unsigned"), "1.0", seed=uuid.uuid4().hex)

    run = node.judge_pull(image)

    assert run.status == 1, run
    assert run.first_line.startswith(
        f"SignatureValidationFailed: trustd: no trust data for {image.repository} on https://"
    )
    assert [r["verdict"] for r in node.audited(image.tagged)] == ["deny"]


def test_unsigned_tag_and_unsigned_digest_are_blocked(
    stack: Stack, push_image: PushImage, node: Node
) -> None:
    signed = signed_image(stack, push_image, "digests")
    unsigned = push_image(signed.repository.split("/", 1)[1], "1.1", seed=uuid.uuid4().hex)

    by_tag = node.judge_pull(unsigned)
    by_digest = node.judge(unsigned.by_digest, descriptor_of(node.registry, unsigned))
    signed_by_digest = node.judge(signed.by_digest, descriptor_of(node.registry, signed))

    assert by_tag.status == 1
    assert by_tag.first_line == (
        f"SignatureValidationFailed: trustd: tag 1.1 is not signed in {signed.repository}"
    )
    assert by_digest.status == 1
    assert by_digest.first_line.startswith(
        f"SignatureValidationFailed: trustd: {unsigned.digest} is not a signed target of "
        f"{signed.repository}"
    )
    # A pull by the signed digest (what the CRI shim asks containerd for) is allowed.
    assert signed_by_digest.status == 0, signed_by_digest
    assert signed_by_digest.first_line == f"trustd: signed by targets as {signed.digest}"


def test_audit_mode_admits_and_records(push_image: PushImage, node: Node) -> None:
    image = push_image(unique_repo("audit"), "1.0", seed=uuid.uuid4().hex)

    run = node.judge_pull(image)

    assert run.status == 0, run
    assert run.first_line.startswith(
        f"trustd: admitted in audit mode (policy[0]): no trust data for {image.repository}"
    )
    [record] = node.audited(image.tagged)
    assert (record["verdict"], record["mode"]) == ("audit-fail", "audit")


def test_exempt_image_is_allowed_without_notary(push_image: PushImage, node: Node) -> None:
    image = push_image(unique_repo("exempt"), "3.9", seed=uuid.uuid4().hex)

    run = node.judge_pull(image)

    assert run.status == 0, run
    assert run.first_line == (
        f"trustd: exempt by pattern '{node.registry.host}/trustd-verifier/exempt-*:*'"
    )
    [record] = node.audited(image.tagged)
    assert (record["verdict"], record["mode"]) == ("allow", "exempt")


def test_unreachable_notary_fails_closed(node: Node) -> None:
    name = f"{UNREACHABLE_REGISTRY}/team/app:1.0"
    descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 500}
    descriptor["digest"] = "sha256:" + "c" * 64

    run = node.judge(name, descriptor)

    assert run.status == 1, run
    assert run.first_line.startswith(
        f"RegistryUnavailable: trustd: cannot reach notary at {node.unreachable_notary}"
    )
    [record] = node.audited(name)
    assert (record["verdict"], record["error"]) == ("deny", "NotaryUnavailable")


def test_unknown_stdin_media_type_is_judged_from_the_arguments(
    stack: Stack, push_image: PushImage, node: Node
) -> None:
    signed = signed_image(stack, push_image, "mediatype")
    attacker = push_image(signed.repository.split("/", 1)[1], "2.0", seed=uuid.uuid4().hex)
    future = "application/vnd.oci.descriptor.v2+cbor"

    good = node.judge(
        signed.tagged, {"digest": signed.digest}, media_type=future, stdin=b"\xa1\x00"
    )
    bad = node.judge(
        f"{signed.repository}:2.0", {"digest": attacker.digest}, media_type=future, stdin=b""
    )

    assert (good.status, bad.status) == (0, 1)
    assert "not understood; judging from -name and -digest" in good.stderr
    assert bad.first_line == (
        f"SignatureValidationFailed: trustd: tag 2.0 is not signed in {signed.repository}"
    )


@pytest.mark.parametrize("daemon_running", [False, True], ids=["daemon stopped", "daemon running"])
def test_notary_outage_is_judged_as_the_rule_says(
    stack: Stack,
    push_image: PushImage,
    tmp_path: Path,
    registry: Registry,
    notary_server: NotaryServer,
    daemon_running: bool,
) -> None:
    """Notary down after this node verified the images: offline = "cached" (the default) judges
    from the verified cache, offline = "deny" fails closed; a tag swap is still refused."""
    online = make_node(tmp_path / "online", registry, notary_server)
    tolerant = signed_image(stack, push_image, "outage")
    strict = signed_image(stack, push_image, "strict-outage")
    for image in (tolerant, strict):
        assert online.judge_pull(image).status == 0
    dead = f"https://127.0.0.1:{free_port()}"
    offline = make_node(
        tmp_path / "offline",
        registry,
        notary_server,
        notary_url=dead,
        state_dir=online.state_dir,
        policy=(
            f'[[policy]]\nmatch = "{registry.host}/trustd-verifier/strict-*"\noffline = "deny"\n'
        ),
    )
    attacker = push_image(tolerant.repository.split("/", 1)[1], "2.0", seed=uuid.uuid4().hex)

    def judge_all() -> list[VerifierRun]:
        return [
            offline.judge(tolerant.tagged, {"digest": tolerant.digest}),
            offline.judge(f"{tolerant.repository}:{tolerant.tag}", {"digest": attacker.digest}),
            offline.judge(strict.tagged, {"digest": strict.digest}),
        ]

    if daemon_running:
        with running_daemon(
            offline.config, offline.verifier_socket, offline.metrics_port
        ) as daemon:
            offline.daemon = daemon
            cached, swapped, refused = judge_all()
    else:
        cached, swapped, refused = judge_all()

    assert cached.status == 0, cached
    assert cached.first_line.startswith(f"trustd: signed by targets as {tolerant.digest} (judged")
    assert "from trust data cached on this node" in cached.first_line
    assert swapped.status == 1
    assert swapped.first_line.startswith(
        f"SignatureValidationFailed: trustd: tag {tolerant.tag} of {tolerant.repository} is "
        f"signed as {tolerant.digest}, not {attacker.digest}"
    )
    assert refused.status == 1
    assert refused.first_line.startswith(
        f"RegistryUnavailable: trustd: cannot reach notary at {dead}"
    )


# -- one cache owner -------------------------------------------------------------------------------


def test_with_the_daemon_the_verifier_builds_no_engine(
    stack: Stack,
    push_image: PushImage,
    tmp_path: Path,
    registry: Registry,
    notary_server: NotaryServer,
) -> None:
    node = make_node(tmp_path, registry, notary_server)
    image = signed_image(stack, push_image, "fast")
    descriptor = descriptor_of(registry, image)
    with running_daemon(node.config, node.verifier_socket, node.metrics_port) as daemon:
        node.daemon = daemon
        assert node.judge_pull(image).status == 0
        # The same installed file, its imports listed: the verifier process loads no trust
        # engine, no HTTP client, no cryptography, no json (the daemon checked the descriptor);
        # the daemon answered from its cache.
        traced = run_verifier(
            node.verifier, image.tagged, descriptor, python_flags=("-X", "importtime")
        )
        assert traced.status == 0, traced
        imported = {
            line.rsplit("|", 1)[1].strip()
            for line in traced.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert {"trustd.programs.image_verifier", "trustd.localapi.wire", "socket"} <= imported
        assert not {
            m for m in imported if m.startswith(("trustd.formats.notary", "trustd.policy.engine"))
        }
        assert not {m for m in imported if m.partition(".")[0] in HEAVY}
        assert "logging" not in imported
        # One download of the trust data for both judgements: the daemon's cache answered.
        assert daemon.metric("trustd_cache_misses_total") == 1.0
        sample = (
            'trustd_decisions_total{action="verify",format="notary-v1",mode="enforce",'
            'verdict="allow"}'
        )
        assert daemon.metric(sample) == 2.0

    # Daemon stopped: the next pull is judged by the verifier itself, into the same audit log.
    node.daemon = None
    assert node.judge_pull(image).status == 0
    assert [r["verdict"] for r in node.audited(image.tagged)] == ["allow"] * 3


@pytest.mark.parametrize("daemon_running", [False, True], ids=["daemon stopped", "daemon running"])
def test_concurrent_invocations_share_the_state_dir(
    stack: Stack,
    push_image: PushImage,
    tmp_path: Path,
    registry: Registry,
    notary_server: NotaryServer,
    daemon_running: bool,
) -> None:
    """Eight pulls at once on a node with an empty state dir: each judged right, and the state
    dir they leave is one a fresh engine verifies from."""
    node = make_node(tmp_path, registry, notary_server)
    signed = [signed_image(stack, push_image, "burst") for _ in range(2)]
    attacker = push_image(signed[0].repository.split("/", 1)[1], "1.0", seed=uuid.uuid4().hex)
    good = [(image.tagged, descriptor_of(registry, image)) for image in signed[1:]] * 6
    bad = [(signed[0].tagged, descriptor_of(registry, attacker))] * 2
    asked = good + bad
    assert not node.state_dir.exists()

    def judge_all() -> list[VerifierRun]:
        with ThreadPoolExecutor(len(asked)) as pool:
            # Eight engines start at once on two cores: the verifier's 8 s budget is for
            # containerd, not this burst, which asserts what is judged, not how fast.
            return list(pool.map(lambda item: node.judge(*item, timeout=120), asked))

    if daemon_running:
        with running_daemon(node.config, node.verifier_socket, node.metrics_port) as daemon:
            node.daemon = daemon
            runs = judge_all()
    else:
        runs = judge_all()

    assert [run.status for run in runs] == [0] * len(good) + [1] * len(bad), [
        run.stdout for run in runs
    ]
    assert all(run.first_line.startswith("trustd: signed by targets as") for run in runs[:6])
    assert all("is signed as" in run.first_line for run in runs[6:])
    assert len([line for line in node.audit.read_text().splitlines() if line]) == len(asked)

    hits: list[bool] = []
    fresh = TrustEngine(load_config(node.config), node.state_dir, on_refresh=hits.append)
    try:
        for image in signed:
            assert resolve_tag(
                fresh.repository(registry.host, image.repository), image.tag
            ).digest == (image.digest)
    finally:
        fresh.close()
    assert hits == [True, True]  # complete and verified: only timestamp.json was fetched again
