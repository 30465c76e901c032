"""The real kubelet in front of trustd: static pods on the test containerd, images through trustd.

One node for the module: a standalone kubelet (no API server) built from the pinned Kubernetes
module (``tests/peers/kubelet``), its runtime endpoint on a containerd of the module's own and its
image service endpoint on ``trustd serve`` running as a process. Workload images are busybox
images in the session registry, signed with the real ``notary`` CLI; the pause image is exempt,
as on real nodes. A second registry with a notary-server of its own serves the test that stops
Notary. What kubelet did is read from kubelet itself: its ``/pods`` (static pods' status
included: kubelet merges the status it keeps into ``/pods`` when it has no API server),
``/containerLogs``, ``/metrics``, ``/stats/summary`` and log; trustd's audit log and containerd,
asked directly, show the other side.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri_shim.crictl import ImageClient
from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.e2e.pod_helpers import RuntimeClient
from tests.stack import (
    Containerd,
    ManagedProcess,
    NotaryPublisher,
    NotaryServer,
    PushedImage,
    Registry,
    Stack,
    require_programs,
)
from tests.stack.images import push_busybox_image, require_static_busybox
from tests.stack.kubelet import (
    GarbageCollection,
    Kubelet,
    KubeletUnavailable,
    container_status,
    kernel_tunables_restored,
    kubelet_program,
    kubelet_version,
    static_pod,
)
from tests.stack.trustd_config import trustd_config_text

REPO_ROOT = Path(__file__).resolve().parents[2]
START = 180.0  # seconds for kubelet to pull, create and start a pod on a busy machine
# Prints the file the image was built with, then stays up.
SERVE = "/bin/busybox cat /etc/trustd-message; exec /bin/busybox sleep 2147483647"
# Prints the file, then waits until the test asks it to exit (the trigger file appears in the
# hostPath volume), removes the trigger and exits 0; kubelet then restarts it.
EXIT_ON_TRIGGER = (
    "/bin/busybox cat /etc/trustd-message; "
    "while [ ! -e /control/exit ]; do /bin/busybox sleep 1; done; "
    "/bin/busybox rm /control/exit; exit 0"
)


@dataclass
class TrustdServe:
    """``trustd serve`` as a process, with its CRI socket and audit log."""

    process: ManagedProcess
    socket: Path
    audit: Path

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.process.start()
        self.process.wait_until(lambda: _cri_answers(self.endpoint), 60, f"trustd on {self.socket}")

    def audit_records(self, image: str) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        records = [json.loads(line) for line in self.audit.read_text().splitlines() if line]
        return [record for record in records if record["image"] == image]


@dataclass
class KubeletNode:
    stack: Stack
    kubelet: Kubelet
    containerd: Containerd
    trustd: TrustdServe
    runtime: RuntimeClient
    images: ImageClient  # containerd's ImageService, asked directly (not through trustd)
    offline_registry: Registry
    offline_notary: NotaryServer
    offline_publisher: NotaryPublisher
    workdir: Path
    version: str


def _cri_answers(endpoint: str) -> bool:
    """The socket serves the CRI ImageService (an empty ListImagesRequest is zero bytes)."""
    with grpc.insecure_channel(endpoint) as channel:
        channel.unary_unary("/runtime.v1.ImageService/ListImages")(b"", timeout=5)
    return True


def start_trustd(
    workdir: Path,
    containerd: Containerd,
    notaries: list[tuple[Registry, NotaryServer]],
    exempt: list[str],
) -> TrustdServe:
    """``python3 -m trustd serve`` enforcing signatures on every registry in ``notaries``."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules = "".join(
        f'[[policy]]\nmatch = "{registry.host}/**"\nmode = "enforce"\n\n'
        for registry, _notary in notaries
    )
    config = workdir / "trustd.toml"
    socket = workdir / "cri.sock"
    audit = workdir / "audit.log"
    config.write_text(
        trustd_config_text(
            state_dir=workdir / "state",
            notary=[(registry.host, notary.url, notary.ca_file) for registry, notary in notaries],
            policy=rules,
            containerd_endpoint=containerd.endpoint,
            socket=socket,
            audit_file=audit,
            exempt=exempt,
            # Every decision asks Notary: kubelet may restart a container within the default
            # 1 s of its first start, and would then reuse that answer without noticing that
            # Notary has stopped.
            server={"freshness_window": 0},
        )
    )
    process = ManagedProcess(
        "trustd",
        [sys.executable, "-m", "trustd", "serve", "--config", str(config)],
        log_path=workdir / "trustd.log",
        cwd=REPO_ROOT,
    )
    served = TrustdServe(process, socket, audit)
    served.start()
    return served


@pytest.fixture(scope="module")
def node(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeletNode]:
    try:
        program = kubelet_program()
    except KubeletUnavailable as error:
        pytest.skip(f"kubelet could not be built: {error}")
    require_programs(
        "docker-registry",
        "skopeo",
        "notary-server",
        "notary",
        "containerd",
        "ctr",
        "runc",
        "containerd-shim-runc-v2",
    )
    require_static_busybox()
    workdir = tmp_path_factory.mktemp("kubelet-node")
    with ExitStack() as cleanup:
        registry = stack.registry
        # The sandbox's only process; containerd pulls it itself when it makes a pod sandbox.
        pause = push_busybox_image(
            registry,
            "trustd-kubelet/pause",
            "3.10",
            {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
            workdir=workdir / "images",
        )
        offline_registry = Registry.start(workdir / "offline-registry")
        cleanup.callback(offline_registry.stop)
        offline_notary = NotaryServer.start(workdir / "offline-notary", stack.pki)
        cleanup.callback(offline_notary.stop)
        offline_publisher = NotaryPublisher(
            offline_notary, workdir / "offline-notary-trust", pki=stack.pki
        )
        containerd = Containerd.launch(
            workdir / "containerd",
            [registry.host, offline_registry.host],
            sandbox_image=pause.tagged,
        )
        cleanup.callback(containerd.stop)
        runtime = RuntimeClient(containerd.endpoint)
        cleanup.callback(runtime.close)
        images = ImageClient(containerd.endpoint, timeout=60)
        cleanup.callback(images.close)
        # Runs after kubelet has stopped: kubelet leaves its pods running, and no sandbox,
        # shim or runc process may outlive this containerd.
        cleanup.callback(runtime.remove_all_pods)
        trustd = start_trustd(
            workdir / "trustd",
            containerd,
            [(registry, stack.notary_server), (offline_registry, offline_notary)],
            exempt=[f"{pause.repository}:*"],
        )
        cleanup.callback(trustd.process.stop, 20.0)
        cleanup.enter_context(kernel_tunables_restored())
        kubelet = Kubelet.launch(program, workdir / "kubelet", containerd.endpoint, trustd.endpoint)
        cleanup.callback(kubelet.clean_up)
        yield KubeletNode(
            stack=stack,
            kubelet=kubelet,
            containerd=containerd,
            trustd=trustd,
            runtime=runtime,
            images=images,
            offline_registry=offline_registry,
            offline_notary=offline_notary,
            offline_publisher=offline_publisher,
            workdir=workdir,
            version=kubelet_version(program),
        )


# -- helpers ------------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def push_workload(
    node: KubeletNode, message: str, registry: Registry | None = None, repo: str | None = None
) -> PushedImage:
    """A busybox image whose /etc/trustd-message is ``message``."""
    return push_busybox_image(
        registry or node.stack.registry,
        repo or f"trustd-kubelet/{unique('app')}",
        "1.0",
        {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        files={"etc/trustd-message": f"{message}\n".encode()},
        workdir=node.workdir / "images",
    )


def sign(publisher: NotaryPublisher, image: PushedImage) -> None:
    publisher.ensure_initialised(image.repository)
    publisher.add(image.repository, image.tag, image.manifest)
    publisher.publish(image.repository)


def running(pod: dict[str, Any]) -> bool:
    status = container_status(pod)
    return status is not None and "running" in status.get("state", {})


def kubelet_containers(node: KubeletNode, pod_name: str) -> list[api_pb2.Container]:
    """Every container containerd holds for kubelet's pod ``pod_name`` (any state)."""
    request = api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(
            label_selector={"io.kubernetes.pod.name": Kubelet.pod_name(pod_name)}
        )
    )
    return list(node.runtime.stub.ListContainers(request, timeout=60).containers)


def in_containerd(node: KubeletNode, image: str) -> bool:
    return node.images.status(image) is not None


def remove_pod(node: KubeletNode, name: str) -> None:
    """Take the static pod away and wait until kubelet no longer lists it."""
    node.kubelet.remove_static_pod(name)
    node.kubelet.wait_for(
        lambda: True if node.kubelet.pod(name) is None else None, START, f"pod {name} removed"
    )


# -- tests --------------------------------------------------------------------------------------


def test_signed_static_pod_runs_and_kubelet_reads_its_output(node: KubeletNode) -> None:
    message = f"signed workload {uuid.uuid4().hex}"
    image = push_workload(node, message)
    sign(node.stack.publisher, image)
    name = unique("signed")

    node.kubelet.write_static_pod(static_pod(name, image.tagged, ["/bin/sh", "-c", SERVE]))
    try:
        pod = node.kubelet.wait_for_pod(name, running, START, f"pod {name} running")
        output = node.kubelet.wait_for(
            lambda: node.kubelet.container_log(name) or None, START, f"output of {name}"
        )
        status = container_status(pod)
        assert status is not None
        # The container runs the signed manifest, pulled by digest through trustd.
        assert status["imageID"].endswith(image.digest), status
        assert output.splitlines() == [message]
        pulls = [r for r in node.trustd.audit_records(image.tagged) if r["action"] == "pull"]
        assert pulls, f"trustd decided no pull of {image.tagged}"
        assert all((r["verdict"], r["pull_ref"]) == ("allow", image.by_digest) for r in pulls)
    finally:
        remove_pod(node, name)


def test_unsigned_image_never_starts_and_kubelet_reports_signature_validation_failed(
    node: KubeletNode,
) -> None:
    image = push_workload(node, "never signed")
    name = unique("unsigned")

    node.kubelet.write_static_pod(static_pod(name, image.tagged, ["/bin/sh", "-c", SERVE]))
    try:

        def waiting(pod: dict[str, Any], reason: str) -> bool:
            status = container_status(pod)
            return status is not None and status["state"].get("waiting", {}).get("reason") == reason

        pod = node.kubelet.wait_for_pod(
            name,
            lambda pod: waiting(pod, "SignatureValidationFailed"),
            START,
            f"pod {name} waiting with SignatureValidationFailed",
        )
        denials = [r for r in node.trustd.audit_records(image.tagged) if r["action"] == "pull"]
        assert denials and all(r["verdict"] == "deny" for r in denials), denials
        trustd_says = f"trustd: {denials[0]['reason']}"
        status = container_status(pod)
        assert status is not None
        assert status["state"]["waiting"]["message"] == (
            f"image pull failed for {image.tagged} because the signature validation failed: "
            f"{trustd_says}"
        )
        # kubelet retries after its back-off, and still carries trustd's message.
        pod = node.kubelet.wait_for_pod(
            name,
            lambda pod: waiting(pod, "ImagePullBackOff"),
            START,
            f"pod {name} in image pull back-off",
        )
        status = container_status(pod)
        assert status is not None
        assert trustd_says in status["state"]["waiting"]["message"], status
        assert status.get("restartCount", 0) == 0
        assert "lastState" not in status or not status["lastState"], status
        # Nothing ran and nothing was pulled: no container, and containerd has not the image.
        assert kubelet_containers(node, name) == []
        assert not in_containerd(node, image.by_digest)
    finally:
        remove_pod(node, name)


def test_container_restart_with_notary_stopped_uses_cached_trust_data(node: KubeletNode) -> None:
    message = f"offline restart {uuid.uuid4().hex}"
    image = push_workload(node, message, registry=node.offline_registry)
    sign(node.offline_publisher, image)
    name = unique("offline")
    control = node.workdir / "control" / name
    control.mkdir(parents=True)
    manifest = static_pod(name, image.tagged, ["/bin/sh", "-c", EXIT_ON_TRIGGER])
    manifest["spec"]["volumes"] = [
        {"name": "control", "hostPath": {"path": str(control), "type": "Directory"}}
    ]
    manifest["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "control", "mountPath": "/control"}
    ]

    node.kubelet.write_static_pod(manifest)
    try:
        node.kubelet.wait_for_pod(name, running, START, f"pod {name} running")
        node.kubelet.wait_for(
            lambda: node.kubelet.container_log(name) or None, START, f"output of {name}"
        )
        decided_before = len(node.trustd.audit_records(image.tagged))

        node.offline_notary.stop()
        # The container exits by itself now; kubelet restarts it after its back-off.
        (control / "exit").touch()

        def restarted(pod: dict[str, Any]) -> bool:
            status = container_status(pod)
            return (
                status is not None
                and status.get("restartCount", 0) >= 1
                and "running" in status["state"]
            )

        pod = node.kubelet.wait_for_pod(name, restarted, START, f"pod {name} restarted")
        status = container_status(pod)
        assert status is not None
        assert status["lastState"]["terminated"]["exitCode"] == 0, status
        assert status["imageID"].endswith(image.digest), status
        output = node.kubelet.wait_for(
            lambda: node.kubelet.container_log(name) or None, START, f"output of {name} again"
        )
        assert output.splitlines() == [message]
        # trustd judged the restart's image from the trust data it had cached, and said so.
        after = node.trustd.audit_records(image.tagged)[decided_before:]
        assert after, "kubelet's restart asked trustd nothing"
        assert all(r["verdict"] == "allow" and r["from_cache"] for r in after), after
    finally:
        remove_pod(node, name)


def test_tag_swapped_after_signing_keeps_the_signed_digest_running(node: KubeletNode) -> None:
    repo = f"trustd-kubelet/{unique('swap')}"
    message = f"signed before the swap {uuid.uuid4().hex}"
    signed = push_workload(node, message, repo=repo)
    sign(node.stack.publisher, signed)
    name = unique("swap")
    # Always: every start asks for the tag again, as a node that trusts its registry would.
    manifest = static_pod(name, signed.tagged, ["/bin/sh", "-c", SERVE], pull_policy="Always")

    node.kubelet.write_static_pod(manifest)
    try:
        first = node.kubelet.wait_for_pod(name, running, START, f"pod {name} running")
        output = node.kubelet.wait_for(
            lambda: node.kubelet.container_log(name) or None, START, f"output of {name}"
        )
        assert output.splitlines() == [message]

        # The attacker pushes other bytes over the signed tag …
        swapped = push_workload(node, "swapped in by an attacker", repo=repo)
        assert swapped.tagged == signed.tagged and swapped.digest != signed.digest
        # … and the manifest changes (an annotation), so kubelet replaces the pod and pulls
        # the tag again. Rewriting identical bytes would not do: the pod's UID is a hash of its
        # manifest, and kubelet sees no change.
        manifest["metadata"]["annotations"]["trustd-test/resync"] = "1"
        node.kubelet.write_static_pod(manifest)

        def replaced(pod: dict[str, Any]) -> bool:
            return pod["metadata"]["uid"] != first["metadata"]["uid"] and running(pod)

        pod = node.kubelet.wait_for_pod(name, replaced, START, f"pod {name} replaced")
        status = container_status(pod)
        assert status is not None
        assert status["imageID"].endswith(signed.digest), status
        assert status["imageID"] != f"{signed.repository}@{swapped.digest}"
        output = node.kubelet.wait_for(
            lambda: node.kubelet.container_log(name) or None, START, f"output of new {name}"
        )
        assert output.splitlines() == [message]
        assert not in_containerd(node, swapped.by_digest)
        pulls = [r for r in node.trustd.audit_records(signed.tagged) if r["action"] == "pull"]
        assert len(pulls) >= 2, pulls
        assert all(r["pull_ref"] == signed.by_digest for r in pulls), pulls
    finally:
        remove_pod(node, name)


def test_image_housekeeping_goes_through_trustd(node: KubeletNode) -> None:
    """kubelet's ImageFsInfo and its image garbage collection's RemoveImage, through trustd."""
    kubelet = node.kubelet
    trustd_images = ImageClient(node.trustd.endpoint, timeout=60)
    # A pod whose image is in use, and a signed image no pod uses.
    kept = push_workload(node, f"in use {uuid.uuid4().hex}")
    sign(node.stack.publisher, kept)
    unused = push_workload(node, f"unused {uuid.uuid4().hex}")
    sign(node.stack.publisher, unused)
    name = unique("keeper")
    kubelet.write_static_pod(static_pod(name, kept.tagged, ["/bin/sh", "-c", SERVE]))
    try:
        kubelet.wait_for_pod(name, running, START, f"pod {name} running")
        trustd_images.pull(unused.tagged)
        unused_status = node.images.status(unused.by_digest)
        assert unused_status is not None
        unused_id = unused_status.id

        # ImageFsInfo. kubelet validated its image endpoint with it as it started …
        assert "Validated CRI v1 image API" in kubelet.log_text()
        # … and its image file system figures are containerd's answer, relayed by trustd (the
        # usage; the capacity is cAdvisor's) …
        direct = api_pb2_grpc.ImageServiceStub(node.runtime.channel)

        def same_usage() -> dict[str, Any] | None:
            image_fs = kubelet.stats_summary()["node"]["runtime"].get("imageFs", {})
            [filesystem] = direct.ImageFsInfo(
                api_pb2.ImageFsInfoRequest(), timeout=60
            ).image_filesystems
            # containerd samples its snapshots' usage now and then; 0 until the first sample.
            used = filesystem.used_bytes.value
            same = used > 0 and image_fs.get("usedBytes") == used
            return image_fs if same and image_fs.get("capacityBytes") else None

        image_fs = kubelet.wait_for(
            same_usage, START, "containerd's imageFs usage in /stats/summary"
        )
        assert image_fs["capacityBytes"] > image_fs["usedBytes"], image_fs
        # … which kubelet cannot have while trustd is down.
        node.trustd.process.stop()
        try:
            # The first errors may only say the connection closed; once kubelet dials again,
            # the error names the socket it dials.
            refused = kubelet.wait_for(
                lambda: _summary_error(kubelet, mentioning=str(node.trustd.socket)),
                START,
                "/stats/summary failing without trustd",
            )
            assert "failed to get imageFs stats" in refused, refused
        finally:
            node.trustd.start()
        kubelet.wait_for(same_usage, START, "imageFs in /stats/summary with trustd back")

        # Garbage collection. kubelet's periodic collection runs as kubelet starts and then
        # every 5 minutes, and the first run fails on a fresh kubelet: cAdvisor has no sample of the
        # image file system yet ("invalid capacity 0 on image filesystem"). The eviction
        # manager, every 10 s, calls the same collector when a disk signal crosses its hard
        # threshold: "imagefs.available < 1Ei" always does, and every image no container uses
        # is removed once kubelet has known it for the minimum age (1 s: 0 means the default,
        # 2 minutes). Static pods are critical: never evicted.
        kubelet.restart(
            GarbageCollection(minimum_age="1s", eviction_hard=(("imagefs.available", "1Ei"),))
        )

        def collected() -> bool | None:
            # kubelet counts a removal just after containerd has done it: wait for both.
            removed = not in_containerd(node, unused_id)
            counted = kubelet.metric("kubelet_image_garbage_collected_total", {"reason": "space"})
            calls = kubelet.metric(
                "kubelet_runtime_operations_total", {"operation_type": "remove_image"}
            )
            return True if removed and counted >= 1 and calls >= 1 else None

        kubelet.wait_for(
            collected, START, f"image {unused_id} removed by kubelet's image garbage collection"
        )
        assert f'"Removing image to free bytes" imageID="{unused_id}"' in kubelet.log_text()
        # The image in use stays, and so does its pod.
        assert in_containerd(node, kept.by_digest)
        assert running(kubelet.wait_for_pod(name, running, START, f"pod {name} still running"))
    finally:
        trustd_images.close()
        kubelet.restart(GarbageCollection())
        remove_pod(node, name)


def _summary_error(kubelet: Kubelet, mentioning: str) -> str | None:
    """kubelet's answer to ``/stats/summary`` if it is an error mentioning ``mentioning``."""
    try:
        kubelet.stats_summary()
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        return text if mentioning in text else None
    return None


def test_kubelet_version_is_the_pinned_release(node: KubeletNode) -> None:
    """The build stamps the release it was built from (docs/cri.md names it)."""
    if os.environ.get("TRUSTD_KUBELET"):
        pytest.skip("TRUSTD_KUBELET names the kubelet under test, not the pinned build")
    go_mod = (REPO_ROOT / "tests" / "peers" / "kubelet" / "go.mod").read_text()
    assert f"\tk8s.io/kubernetes {node.version} " in go_mod
