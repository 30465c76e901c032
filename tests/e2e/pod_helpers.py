"""What kubelet does to start a container, as CRI calls against the real containerd and runc.

``RuntimeClient`` speaks containerd's RuntimeService directly (sandboxes, containers, status),
as kubelet's runtime endpoint does. ``Kubelet`` replays kubelet's container start
(``kuberuntime``'s ``startContainer``): the image calls go to trustd's ImageService, the runtime
calls to containerd, and every call is recorded so a test can assert the sequence.

The sequence, with ``imagePullPolicy: IfNotPresent``:

1. ``ImageStatus(name)``: present -> its ``id`` is the image ref, no pull;
2. absent -> ``PullImage(name, auth)`` once per matching credential, in order, until one succeeds;
   its ``image_ref`` is the image ref;
3. ``ImageStatus(name)`` again, for the image's user (``uid``), which becomes ``run_as_user``;
4. ``CreateContainer`` with the image ref (not the name) and ``StartContainer``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc

TIMEOUT = 60.0
# Namespaces of a host-network pod whose containers each have their own PID namespace, as
# kubelet sets them for ``hostNetwork: true`` (no CNI needed).
HOST_NETWORK = api_pb2.NamespaceOption(network=api_pb2.NODE, pid=api_pb2.CONTAINER, ipc=api_pb2.POD)


def host_network_pod(name: str, log_directory: Path) -> api_pb2.PodSandboxConfig:
    """A pod sandbox config as kubelet makes it for a ``hostNetwork: true`` pod."""
    uid = str(uuid.uuid4())
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace="trustd-e2e", attempt=0),
        log_directory=str(log_directory),
        labels={
            "io.kubernetes.pod.name": name,
            "io.kubernetes.pod.namespace": "trustd-e2e",
            "io.kubernetes.pod.uid": uid,
        },
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=HOST_NETWORK)
        ),
    )


def cri_log_lines(path: Path) -> list[tuple[str, str]]:
    """``(stream, line)`` for each line of a CRI container log file.

    Each entry is ``<RFC 3339 time> <stdout|stderr> <P|F> <text>``; ``P`` marks a partial line
    that the next entry of the same stream continues.
    """
    lines: list[tuple[str, str]] = []
    partial: dict[str, str] = {}
    for entry in path.read_text().splitlines():
        _time, stream, tag, text = [*entry.split(" ", 3), ""][:4]
        if tag == "P":
            partial[stream] = partial.get(stream, "") + text
            continue
        lines.append((stream, partial.pop(stream, "") + text))
    return lines


class RuntimeClient:
    """containerd's CRI RuntimeService on ``endpoint``."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.stub = api_pb2_grpc.RuntimeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def run_pod_sandbox(self, config: api_pb2.PodSandboxConfig) -> str:
        request = api_pb2.RunPodSandboxRequest(config=config)
        return self.stub.RunPodSandbox(request, timeout=TIMEOUT).pod_sandbox_id

    def pod_sandbox_status(self, sandbox_id: str) -> api_pb2.PodSandboxStatus:
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        return self.stub.PodSandboxStatus(request, timeout=TIMEOUT).status

    def create_container(
        self,
        sandbox_id: str,
        config: api_pb2.ContainerConfig,
        sandbox_config: api_pb2.PodSandboxConfig,
    ) -> str:
        request = api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        return self.stub.CreateContainer(request, timeout=TIMEOUT).container_id

    def start_container(self, container_id: str) -> None:
        request = api_pb2.StartContainerRequest(container_id=container_id)
        self.stub.StartContainer(request, timeout=TIMEOUT)

    def container_status(self, container_id: str) -> api_pb2.ContainerStatus:
        request = api_pb2.ContainerStatusRequest(container_id=container_id)
        return self.stub.ContainerStatus(request, timeout=TIMEOUT).status

    def containers(self, sandbox_id: str) -> list[api_pb2.Container]:
        request = api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(pod_sandbox_id=sandbox_id)
        )
        return list(self.stub.ListContainers(request, timeout=TIMEOUT).containers)

    def wait_until_exited(
        self, container_id: str, timeout: float = TIMEOUT
    ) -> api_pb2.ContainerStatus:
        """Poll ContainerStatus until the container has exited; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.container_status(container_id)
            if status.state == api_pb2.CONTAINER_EXITED:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"container {container_id} still {api_pb2.ContainerState.Name(status.state)} "
                    f"after {timeout:g}s: {status.reason} {status.message}"
                )
            time.sleep(0.05)

    def output(
        self, status: api_pb2.ContainerStatus, expected_lines: int, timeout: float = TIMEOUT
    ) -> list[str]:
        """The lines the container wrote, read back from its CRI log file.

        The shim copies the container's output into the log on its own schedule, so poll until
        ``expected_lines`` are there (or the deadline passes, and return what there is).
        """
        path = Path(status.log_path)
        deadline = time.monotonic() + timeout
        while True:
            lines = [text for _stream, text in cri_log_lines(path)] if path.exists() else []
            if len(lines) >= expected_lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def remove_pod(self, sandbox_id: str) -> None:
        """kubelet's pod clean-up: StopPodSandbox (kills its containers), then RemovePodSandbox."""
        self.stub.StopPodSandbox(
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=TIMEOUT
        )
        self.stub.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=TIMEOUT
        )

    def remove_all_pods(self) -> None:
        """Remove every sandbox, so no shim or runc process outlives the test's containerd."""
        listed = self.stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=TIMEOUT)
        for sandbox in listed.items:
            self.remove_pod(sandbox.id)


@dataclass(frozen=True)
class Call:
    """One CRI call kubelet made, and what came of it."""

    method: str  # "ImageStatus", "PullImage", "CreateContainer", "StartContainer"
    image: str  # what the call named: the pod's image, or the image ref for CreateContainer
    outcome: str  # "present", "absent", "OK", or "<gRPC code>: <details>"
    username: str = ""  # the credential a PullImage carried


class ImagePullFailed(Exception):
    """Every credential's PullImage failed (kubelet: ErrImagePull); ``errors`` in order."""

    def __init__(self, image: str, errors: Sequence[grpc.RpcError]) -> None:
        super().__init__(f"pull of {image} failed: {[str(e.details()) for e in errors]}")
        self.errors = list(errors)


class Kubelet:
    """kubelet's container start, with the ImageService on trustd and the runtime on containerd."""

    def __init__(
        self,
        images: api_pb2_grpc.ImageServiceStub,
        runtime: RuntimeClient,
        credentials: Sequence[api_pb2.AuthConfig] = (),
    ) -> None:
        self.images = images
        self.runtime = runtime
        # The pod's pull secrets that match the registry, in kubelet's order.
        self.credentials = list(credentials)
        self.calls: list[Call] = []

    def image_status(self, image: str) -> api_pb2.Image | None:
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image))
        response = self.images.ImageStatus(request, timeout=TIMEOUT)
        present = response.HasField("image")
        self.calls.append(Call("ImageStatus", image, "present" if present else "absent"))
        return response.image if present else None

    def ensure_image(self, image: str, sandbox_config: api_pb2.PodSandboxConfig) -> str:
        """kubelet's EnsureImageExists (IfNotPresent): the image ref the container runs."""
        present = self.image_status(image)
        if present is not None:
            return present.id
        errors: list[grpc.RpcError] = []
        for auth in self.credentials or [None]:
            request = api_pb2.PullImageRequest(
                image=api_pb2.ImageSpec(image=image), sandbox_config=sandbox_config
            )
            if auth is not None:
                request.auth.CopyFrom(auth)
            username = auth.username if auth is not None else ""
            try:
                image_ref = self.images.PullImage(request, timeout=TIMEOUT).image_ref
            except grpc.RpcError as error:
                outcome = f"{error.code().name}: {error.details()}"
                self.calls.append(Call("PullImage", image, outcome, username))
                errors.append(error)
                continue
            self.calls.append(Call("PullImage", image, "OK", username))
            return image_ref
        raise ImagePullFailed(image, errors)

    def image_uid(self, image: str) -> int | None:
        """kubelet's getImageUser: the image's numeric user from ImageStatus of the name."""
        status = self.image_status(image)
        if status is None or not status.HasField("uid"):
            return None  # kubelet then runs the container as root
        return status.uid.value

    def start_container(
        self,
        sandbox_id: str,
        sandbox_config: api_pb2.PodSandboxConfig,
        name: str,
        image: str,
        attempt: int = 0,
    ) -> str:
        """Pull if needed, create and start container ``name`` (restart ``attempt``); its ID."""
        image_ref = self.ensure_image(image, sandbox_config)
        security = api_pb2.LinuxContainerSecurityContext(namespace_options=HOST_NETWORK)
        uid = self.image_uid(image)
        if uid is not None:
            security.run_as_user.value = uid
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name, attempt=attempt),
            image=api_pb2.ImageSpec(image=image_ref, user_specified_image=image),
            log_path=f"{name}/{attempt}.log",
            labels={"io.kubernetes.container.name": name},
            linux=api_pb2.LinuxContainerConfig(security_context=security),
        )
        container_id = self.runtime.create_container(sandbox_id, config, sandbox_config)
        self.calls.append(Call("CreateContainer", image_ref, "OK"))
        self.runtime.start_container(container_id)
        self.calls.append(Call("StartContainer", image_ref, "OK"))
        return container_id
