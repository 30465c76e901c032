"""Pods really start: kubelet's container start through trustd, on the real containerd and runc.

The image calls go to an in-process trustd shim, the runtime calls straight to containerd, as on
a node whose kubelet has ``imageServiceEndpoint`` on trustd (``tests/e2e/pod_helpers.py`` plays
kubelet). The node here is a containerd of the module's own, whose ``sandbox_image`` is a pause
image built from Debian's busybox-static, and a registry that wants a password, so a wrong pull
secret really fails. Workload images are busybox images signed with the real ``notary`` CLI; the
pause image is an ``exempt`` entry, as on real nodes. Pods use host networking (no CNI).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri_shim.gen.cri.runtime.v1 import api_pb2
from tests.e2e.cri_helpers import Shim, running_shim, unique_repo
from tests.e2e.pod_helpers import (
    Call,
    ImagePullFailed,
    Kubelet,
    RuntimeClient,
    host_network_pod,
)
from tests.stack import (
    Containerd,
    NotaryPublisher,
    NotaryServer,
    PushedImage,
    Registry,
    Stack,
    require_programs,
)
from tests.stack.images import push_busybox_image, require_static_busybox
from tests.stack.trustd_config import toml_value, trustd_config_text
from trustd.policy.engine import Verdict

# The registry's one account, and a pull secret kubelet tries first that no longer works.
RIGHT = ("pod-puller", "right-password-for-the-test")
WRONG = ("stale-robot", "revoked-password")
# The workload prints the file it was built with and the user it runs as (the image's, which
# kubelet only learns from ImageStatus).
IMAGE_USER = 1234
WORKLOAD_SCRIPT = "/bin/busybox cat /etc/trustd-message; echo uid=$(/bin/busybox id -u)"


def auth(credentials: tuple[str, str]) -> api_pb2.AuthConfig:
    username, password = credentials
    return api_pb2.AuthConfig(username=username, password=password)


@dataclass
class PodNode:
    """The module's node: password-protected registry, containerd, pause image, runtime client."""

    registry: Registry
    containerd: Containerd
    runtime: RuntimeClient
    pause: PushedImage
    workdir: Path


@pytest.fixture(scope="module")
def pod_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodNode]:
    require_programs(
        "docker-registry", "skopeo", "containerd", "ctr", "runc", "containerd-shim-runc-v2"
    )
    require_static_busybox()
    workdir = tmp_path_factory.mktemp("pod-node")
    with ExitStack() as cleanup:
        registry = Registry.start(workdir / "registry", credentials=RIGHT)
        cleanup.callback(registry.stop)
        # The sandbox's only process; containerd kills it with SIGKILL on StopPodSandbox.
        pause = push_busybox_image(
            registry,
            "trustd-pod/pause",
            "3.9",
            {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
            workdir=workdir / "images",
        )
        containerd = Containerd.launch(
            workdir / "containerd", [registry.host], sandbox_image=pause.tagged
        )
        cleanup.callback(containerd.stop)
        runtime = RuntimeClient(containerd.endpoint)
        cleanup.callback(runtime.close)
        # Runs first: no sandbox, shim or runc process may outlive this containerd.
        cleanup.callback(runtime.remove_all_pods)
        yield PodNode(registry, containerd, runtime, pause, workdir)


def push_workload(node: PodNode, message: str) -> PushedImage:
    return push_busybox_image(
        node.registry,
        unique_repo("pod"),
        "1.0",
        {
            "User": str(IMAGE_USER),
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh", "-c", WORKLOAD_SCRIPT],
        },
        files={"etc/trustd-message": f"{message}\n".encode()},
        workdir=node.workdir / "images",
    )


def sign(publisher: NotaryPublisher, image: PushedImage) -> None:
    publisher.ensure_initialised(image.repository)
    publisher.add(image.repository, image.tag, image.manifest)
    publisher.publish(image.repository)


def config_text(
    node: PodNode, notary: NotaryServer, state_dir: Path, offline: str | None = None
) -> str:
    """trustd enforcing signatures on the node's registry; the pause image is exempt.

    With ``offline`` (the rule's Notary-outage behaviour), every lookup asks Notary
    (``freshness_window = 0``): kubelet restarts a container 10 s or more after it exited, long
    after the default 1 s window, but here the restart comes at once and would otherwise reuse
    the first start's answer without noticing the outage.
    """
    rule = f'[[policy]]\nmatch = "{node.registry.host}/**"\nmode = "enforce"\n'
    server: dict[str, str | int | float] = {}
    if offline is not None:
        rule += f"offline = {toml_value(offline)}\n"
        server["freshness_window"] = 0
    return trustd_config_text(
        state_dir=state_dir,
        notary=[(node.registry.host, notary.url, notary.ca_file)],
        exempt=[f"{node.pause.repository}:*"],
        policy=rule,
        server=server,
    )


def pull_sandbox_image(shim: Shim, node: PodNode) -> None:
    """Put the pause image into containerd through trustd, as an exempt image.

    containerd 1.6 looks its ``sandbox_image`` up locally first; pulling it itself would need
    the registry password, which only the pull carries.
    """
    shim.pull(node.pause.tagged, auth(RIGHT))
    [decision] = [d for d in shim.decisions_for(node.pause.tagged) if d.action == "pull"]
    assert (decision.verdict, decision.mode) == (Verdict.ALLOW, "exempt")
    assert decision.pull_ref == node.pause.tagged  # pulled as asked, not pinned


@dataclass
class StartedPod:
    sandbox_id: str
    config: api_pb2.PodSandboxConfig
    kubelet: Kubelet


StartPod = Callable[[Shim, list[tuple[str, str]]], StartedPod]


@pytest.fixture
def start_pod(pod_node: PodNode, tmp_path: Path) -> Iterator[StartPod]:
    """``start_pod(shim, credentials) -> StartedPod``: a running host-network sandbox."""
    started: list[str] = []

    def start(shim: Shim, credentials: list[tuple[str, str]]) -> StartedPod:
        pull_sandbox_image(shim, pod_node)
        config = host_network_pod(f"app-{uuid.uuid4().hex[:8]}", tmp_path / "pod-logs")
        sandbox_id = pod_node.runtime.run_pod_sandbox(config)
        started.append(sandbox_id)
        status = pod_node.runtime.pod_sandbox_status(sandbox_id)
        assert status.state == api_pb2.SANDBOX_READY
        kubelet = Kubelet(shim.cri, pod_node.runtime, [auth(c) for c in credentials])
        return StartedPod(sandbox_id, config, kubelet)

    yield start
    for sandbox_id in started:
        pod_node.runtime.remove_pod(sandbox_id)


def run_to_completion(
    node: PodNode, pod: StartedPod, image: PushedImage, attempt: int = 0
) -> tuple[api_pb2.ContainerStatus, list[str]]:
    """kubelet starts container ``app`` (restart ``attempt``); its final status and output."""
    container_id = pod.kubelet.start_container(
        pod.sandbox_id, pod.config, "app", image.tagged, attempt=attempt
    )
    status = node.runtime.wait_until_exited(container_id)
    return status, node.runtime.output(status, expected_lines=2)


def test_kubelet_starts_a_pod_of_a_signed_image_through_trustd(
    pod_node: PodNode,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    start_pod: StartPod,
    tmp_path: Path,
) -> None:
    message = f"signed workload {uuid.uuid4().hex}"
    image = push_workload(pod_node, message)
    sign(notary, image)
    text = config_text(pod_node, notary_server, tmp_path / "trustd")

    with running_shim(text, pod_node.containerd.endpoint, tmp_path / "trustd") as shim:
        pod = start_pod(shim, [WRONG, RIGHT])
        status, output = run_to_completion(pod_node, pod, image)
        image_id = shim.status(image.tagged).image.id

    # kubelet's sequence, as trustd answered it.
    calls = pod.kubelet.calls
    assert [(call.method, call.outcome) for call in calls[:1]] == [("ImageStatus", "absent")]
    wrong, right = calls[1:3]
    assert (wrong.method, wrong.username) == ("PullImage", WRONG[0])
    # trustd admitted the pull (Notary needs no password here); the registry refused it, and
    # trustd passed containerd's error on unchanged.
    assert wrong.outcome.startswith("UNKNOWN: "), wrong.outcome
    assert "401 Unauthorized" in wrong.outcome, wrong.outcome
    assert right == Call("PullImage", image.tagged, "OK", RIGHT[0])
    assert calls[3] == Call("ImageStatus", image.tagged, "present")  # for the image's user
    assert calls[4:] == [
        Call("CreateContainer", image_id, "OK"),
        Call("StartContainer", image_id, "OK"),
    ]
    # Both credentials reached the policy, in kubelet's order (a Notary token service gets them).
    offered = [c.username for c in shim.admission.credentials if c is not None]
    assert offered[-2:] == [WRONG[0], RIGHT[0]]
    pulls = [d for d in shim.decisions_for(image.tagged) if d.action == "pull"]
    assert [(d.verdict, d.pull_ref) for d in pulls] == [(Verdict.ALLOW, image.by_digest)] * 2

    # The container ran the signed bytes, as the image's user, and said so.
    assert status.exit_code == 0, (status.reason, status.message)
    assert status.image_ref == image.by_digest
    assert output == [message, f"uid={IMAGE_USER}"]


# -- Notary goes away after the first start ----------------------------------------------------


@pytest.fixture
def private_notary(stack: Stack, tmp_path: Path) -> Iterator[tuple[NotaryServer, NotaryPublisher]]:
    """A notary-server of this test's own, which it may stop (others use the session's)."""
    require_programs("notary-server", "notary")
    server = NotaryServer.start(tmp_path / "notary-server", stack.pki)
    try:
        yield server, NotaryPublisher(server, tmp_path / "notary-trust", pki=stack.pki)
    finally:
        server.stop()


@dataclass
class FirstRun:
    """A pod whose container ran once while Notary was up; Notary is stopped now."""

    shim: Shim
    pod: StartedPod
    image: PushedImage
    message: str  # what the image's container prints first


@contextmanager
def first_start_then_notary_stops(
    pod_node: PodNode,
    private_notary: tuple[NotaryServer, NotaryPublisher],
    start_pod: StartPod,
    state_dir: Path,
    offline: str,
) -> Iterator[FirstRun]:
    """Start the pod once with Notary up, then stop Notary; kubelet's restart is the caller's."""
    server, publisher = private_notary
    message = f"offline {offline} {uuid.uuid4().hex}"
    image = push_workload(pod_node, message)
    sign(publisher, image)
    text = config_text(pod_node, server, state_dir, offline=offline)
    with running_shim(text, pod_node.containerd.endpoint, state_dir) as shim:
        pod = start_pod(shim, [RIGHT])
        status, output = run_to_completion(pod_node, pod, image)
        assert status.exit_code == 0, (status.reason, status.message)
        assert output == [message, f"uid={IMAGE_USER}"]
        server.stop()
        pod.kubelet.calls.clear()
        yield FirstRun(shim, pod, image, message)


def test_container_restart_with_notary_down_uses_cached_trust_data(
    pod_node: PodNode,
    private_notary: tuple[NotaryServer, NotaryPublisher],
    start_pod: StartPod,
    tmp_path: Path,
) -> None:
    with first_start_then_notary_stops(
        pod_node, private_notary, start_pod, tmp_path / "trustd", offline="cached"
    ) as first:
        status, output = run_to_completion(pod_node, first.pod, first.image, attempt=1)

        # kubelet found the image present (verified from the cache) and pulled nothing.
        assert [(call.method, call.outcome) for call in first.pod.kubelet.calls] == [
            ("ImageStatus", "present"),
            ("ImageStatus", "present"),
            ("CreateContainer", "OK"),
            ("StartContainer", "OK"),
        ]
        assert status.exit_code == 0, (status.reason, status.message)
        assert status.image_ref == first.image.by_digest
        assert Path(status.log_path).name == "1.log"  # the restarted container's own log
        assert output == [first.message, f"uid={IMAGE_USER}"]
        # Both ImageStatus answers were judged from the cache, and say so.
        restart = first.shim.decisions_for(first.image.tagged)[-2:]
        assert [(d.action, d.verdict) for d in restart] == [("status", Verdict.ALLOW)] * 2
        assert all(d.cached_age is not None for d in restart), restart
        assert all("cached on this node" in d.reason for d in restart), restart


def test_container_restart_with_notary_down_is_refused_under_offline_deny(
    pod_node: PodNode,
    private_notary: tuple[NotaryServer, NotaryPublisher],
    start_pod: StartPod,
    tmp_path: Path,
) -> None:
    with first_start_then_notary_stops(
        pod_node, private_notary, start_pod, tmp_path / "trustd", offline="deny"
    ) as first:
        with pytest.raises(ImagePullFailed) as failed:
            run_to_completion(pod_node, first.pod, first.image, attempt=1)

        # Reported absent, so kubelet pulled, and the pull was refused with a reason kubelet
        # shows as the pod's waiting reason (RegistryUnavailable).
        [absent, refused] = first.pod.kubelet.calls
        assert absent == Call("ImageStatus", first.image.tagged, "absent")
        assert refused.method == "PullImage"
        [error] = failed.value.errors
        assert error.code() == grpc.StatusCode.UNKNOWN, error
        assert (error.details() or "").startswith("RegistryUnavailable: trustd: "), error
        # No new container: only the first run's is in the sandbox.
        containers = pod_node.runtime.containers(first.pod.sandbox_id)
        assert [container.metadata.attempt for container in containers] == [0]
