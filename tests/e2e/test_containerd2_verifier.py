"""containerd 2.x running trustd as its image verifier: CRI pulls straight to containerd.

The real containerd 2.x (``../shared/bin/containerd2`` from the project root; skipped where it is
absent, e.g. a Debian bookworm machine, which ships containerd 1.6) with the
``io.containerd.image-verifier.v1.bindir`` plugin, whose ``bin_dir`` holds trustd's verifier as
install.sh installs it. Images are in the real registry, signed with the real notary CLI.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.e2e.cri_helpers import running_shim
from tests.e2e.verifier_helpers import (
    REPO_ROOT,
    Node,
    PushImage,
    make_node,
    running_daemon,
    signed_image,
    unique_repo,
)
from tests.stack import Containerd, NotaryServer, Registry, Stack, StackError
from tests.stack.containerd import major_version
from tests.stack.trustd_config import trustd_config_text
from trustd.policy.engine import Action, Verdict

CONTAINERD2 = REPO_ROOT.parent / "shared" / "bin" / "containerd2"
CTR2 = REPO_ROOT.parent / "shared" / "bin" / "ctr2"
TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(
    not CONTAINERD2.is_file(),
    reason=f"no containerd 2.x binary at {CONTAINERD2} (Debian bookworm ships containerd 1.6, "
    "which has no image-verifier plugin)",
)


class Containerd2:
    """containerd 2.x with trustd in its image verifiers' bin_dir, and a CRI client to it."""

    def __init__(self, daemon: Containerd, node: Node) -> None:
        self.daemon = daemon
        self.node = node
        self.channel = grpc.insecure_channel(daemon.endpoint)
        self.cri = api_pb2_grpc.ImageServiceStub(self.channel)

    def pull(self, image: str) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        return self.cri.PullImage(request, timeout=TIMEOUT).image_ref

    def refused(self, image: str) -> str:
        """The error message of a pull that must fail."""
        with pytest.raises(grpc.RpcError) as raised:
            self.pull(image)
        return raised.value.details() or ""

    def present(self, image: str) -> bool:
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image))
        return self.cri.ImageStatus(request, timeout=TIMEOUT).HasField("image")

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def containerd2(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, notary_server: NotaryServer
) -> Iterator[Containerd2]:
    node = make_node(tmp_path_factory.mktemp("node"), registry, notary_server)
    try:
        daemon = Containerd.launch(
            tmp_path_factory.mktemp("containerd2"),
            [registry.host],
            program=str(CONTAINERD2),
            verifier_bin_dir=node.verifier.parent,
        )
    except StackError as error:
        pytest.fail(f"containerd 2.x did not start: {error}", pytrace=False)
    client = Containerd2(daemon, node)
    try:
        yield client
    finally:
        client.close()
        daemon.stop()


def blocked_reason(name: str, digest: str) -> str:
    """How containerd 2.x reports a pull trustd's verifier blocked (before trustd's line)."""
    return (
        f"image verifier bindir blocked pull of {name} with digest {digest} for reason: "
        "verifier trustd rejected image (exit code 1): "
    )


@pytest.fixture(params=["daemon running", "daemon stopped"])
def node(request: pytest.FixtureRequest, containerd2: Containerd2) -> Iterator[Node]:
    node = containerd2.node
    if request.param == "daemon stopped":
        yield node
        return
    with running_daemon(node.config, node.verifier_socket, node.metrics_port) as daemon:
        node.daemon = daemon
        try:
            yield node
        finally:
            node.daemon = None


def test_signed_tag_is_pulled(
    stack: Stack, push_image: PushImage, containerd2: Containerd2, node: Node
) -> None:
    image = signed_image(stack, push_image, "c2-signed")

    containerd2.pull(image.tagged)

    assert containerd2.present(image.tagged)
    [record] = node.audited(image.tagged)
    assert (record["verdict"], record["digest"]) == ("allow", image.digest)
    if node.daemon is not None:
        sample = (
            'trustd_decisions_total{action="verify",format="notary-v1",mode="enforce",'
            'verdict="allow"}'
        )
        assert node.daemon.metric(sample) == 1.0


def test_unsigned_and_tag_swapped_images_are_blocked(
    stack: Stack, push_image: PushImage, containerd2: Containerd2, node: Node
) -> None:
    unsigned = push_image(unique_repo("c2-unsigned"), "1.0", seed=uuid.uuid4().hex)
    signed = signed_image(stack, push_image, "c2-swap")
    attacker = push_image(signed.repository.split("/", 1)[1], signed.tag, seed=uuid.uuid4().hex)

    unsigned_error = containerd2.refused(unsigned.tagged)
    swapped_error = containerd2.refused(signed.tagged)

    assert (
        blocked_reason(unsigned.tagged, unsigned.digest)
        + f"SignatureValidationFailed: trustd: no trust data for {unsigned.repository} on https://"
    ) in unsigned_error
    assert (
        blocked_reason(signed.tagged, attacker.digest)
        + f"SignatureValidationFailed: trustd: tag {signed.tag} of {signed.repository} is signed "
        f"as {signed.digest}, not {attacker.digest}"
    ) in swapped_error
    for image in (unsigned, attacker):
        assert not containerd2.present(image.tagged)
        assert not containerd2.present(image.by_digest)
    assert [r["verdict"] for r in node.audited(unsigned.tagged)] == ["deny"]


def test_shim_and_verifier_together_judge_a_kubelet_pull_twice(
    stack: Stack,
    push_image: PushImage,
    containerd2: Containerd2,
    registry: Registry,
    notary_server: NotaryServer,
    tmp_path: Path,
) -> None:
    """kubelet -> trustd's shim (decides, pulls the signed digest) -> containerd 2.x, whose
    verifier judges that digest pull again."""
    node = containerd2.node
    text = trustd_config_text(
        state_dir=node.state_dir,  # the node's one state dir, shared by both
        notary=[(registry.host, notary_server.url, notary_server.ca_file)],
    )
    signed = signed_image(stack, push_image, "c2-both")
    attacker = push_image(signed.repository.split("/", 1)[1], signed.tag, seed=uuid.uuid4().hex)
    with running_shim(text, containerd2.daemon.endpoint, tmp_path / "shim") as shim:
        shim.pull(signed.tagged)  # the registry serves the attacker's bytes for the tag
        assert shim.manifest_digest_of(signed.tagged) == signed.digest
    [shim_decision] = [d for d in shim.decisions if d.action is Action.PULL]
    assert (shim_decision.verdict, shim_decision.pull_ref) == (Verdict.ALLOW, signed.by_digest)
    # containerd asked the verifier about the pinned digest pull, not the tag.
    [verified] = node.audited(signed.by_digest)
    assert (verified["verdict"], verified["digest"]) == ("allow", signed.digest)
    assert node.audited(signed.tagged) == []
    assert attacker.digest != signed.digest


def test_ctr_transfer_pull_is_judged(
    stack: Stack, push_image: PushImage, containerd2: Containerd2
) -> None:
    # ctr 2.x pulls through containerd's transfer service, so the verifiers judge its pulls;
    # Debian's ctr 1.6 pulls client-side and would prove nothing.
    ctr = str(CTR2) if CTR2.is_file() else shutil.which("ctr")
    if ctr is None or major_version(ctr) < 2:
        pytest.skip(f"no ctr 2.x at {CTR2} or on PATH (Debian's ctr 1.6 pulls client-side)")
    unsigned = push_image(unique_repo("c2-ctr"), "1.0", seed=uuid.uuid4().hex)
    signed = signed_image(stack, push_image, "c2-ctr")
    command = [ctr, "--address", str(containerd2.daemon.socket), "-n", "default", "image", "pull"]
    command += ["--hosts-dir", str(containerd2.daemon.hosts_dir)]
    allowed = subprocess.run([*command, signed.tagged], capture_output=True, text=True, check=False)
    blocked = subprocess.run(
        [*command, unsigned.tagged], capture_output=True, text=True, check=False
    )
    assert allowed.returncode == 0, allowed.stderr
    assert blocked.returncode != 0
    assert "SignatureValidationFailed: trustd: no trust data" in blocked.stderr
