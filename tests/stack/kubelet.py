"""A real kubelet, standalone (no API server), running static pods on the test containerd.

The binary is the ``kubelet`` test peer, built from the pinned Kubernetes module
(``tests/peers/kubelet``) into the peer cache. The kubelet here:

- reads static pods from a manifest directory of its own (``write_static_pod``);
- runs containers on ``runtime_endpoint`` (the test containerd) and asks ``image_endpoint``
  (``trustd serve``) for every image call;
- keeps everything under its work dir (root dir, certificates, pod logs, volume plugins), except
  the ``/var/log/containers`` symlinks, whose directory is fixed in kubelet (``remove_log_links``
  removes ours);
- serves its API on 127.0.0.1 only, over TLS with the certificate it makes itself, to anonymous
  callers (``/pods``, ``/containerLogs``, ``/metrics``, ``/stats/summary``).

kubelet leaves its pods running when it stops: whoever starts one removes the pod sandboxes
from containerd afterwards.

kubelet sets six kernel parameters on start (``setupKernelTunables`` in its container manager:
``vm.overcommit_memory=1``, ``kernel.panic=10``, ``kernel.panic_on_oops=1`` …); its only other
choice, ``protectKernelDefaults``, refuses to start on a machine that has other values.
``kernel_tunables_restored`` puts this machine's values back afterwards.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.peers import peer_path, peer_unavailable_reason
from tests.stack.ports import StackError, free_port
from tests.stack.process import ManagedProcess

NODE_NAME = "trustd-e2e-node"
# kubelet links every container's log here whatever its config says (kuberuntime's
# ContainerLogsDir).
CONTAINER_LOG_LINKS = Path("/var/log/containers")
# The kernel parameters kubelet's container manager sets (pkg/kubelet/cm, setupKernelTunables).
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
_API_TIMEOUT = 10.0

Json = dict[str, Any]
T = TypeVar("T")


class KubeletUnavailable(StackError):
    """No kubelet binary: the build failed (``reason`` says why) or was never run."""


def kubelet_program() -> Path:
    """The kubelet to test: ``$TRUSTD_KUBELET`` if set (another release, a distribution's
    build), else the ``kubelet`` test peer (``python3 -m tests.peers.build kubelet``)."""
    chosen = os.environ.get("TRUSTD_KUBELET")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise KubeletUnavailable(f"TRUSTD_KUBELET={chosen} is not an executable file")
        return Path(chosen)
    from tests.peers import build

    peer = build.peer_named("kubelet")
    if peer_path("kubelet") is None and not build.reason_path(peer).exists():
        build.ensure_locked(peer)  # not built yet (pytest run by hand): build it now
    binary = peer_path("kubelet")
    if binary is None:
        raise KubeletUnavailable(peer_unavailable_reason("kubelet"))
    return binary


def kubelet_version(program: Path) -> str:
    """``Kubernetes v1.34.4`` -> ``v1.34.4``."""
    output = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, check=False, timeout=60
    ).stdout.split()
    if len(output) != 2 or output[0] != "Kubernetes":
        raise StackError(f"{program} --version says {' '.join(output)!r}")
    return output[1]


@contextmanager
def kernel_tunables_restored() -> Iterator[dict[str, str]]:
    """Record the kernel parameters kubelet changes, and write them back on the way out."""
    saved = {name: (Path("/proc/sys") / name).read_text().strip() for name in KERNEL_TUNABLES}
    try:
        yield saved
    finally:
        for name, value in saved.items():
            path = Path("/proc/sys") / name
            if path.read_text().strip() != value:
                path.write_text(value + "\n")


@dataclass(frozen=True)
class GarbageCollection:
    """kubelet's image garbage collection settings; the defaults are kubelet's.

    ``eviction_hard`` pairs (signal, threshold) replace kubelet's default hard eviction
    thresholds; a disk signal under its threshold makes the eviction manager (every 10 s) call
    the image garbage collector's ``DeleteUnusedImages``.
    """

    high_threshold_percent: int = 85
    low_threshold_percent: int = 80
    minimum_age: str = "2m"
    eviction_hard: tuple[tuple[str, str], ...] = ()


def kubelet_configuration(
    *,
    workdir: Path,
    runtime_endpoint: str,
    image_endpoint: str,
    port: int,
    healthz_port: int,
    gc: GarbageCollection,
) -> Json:
    """The KubeletConfiguration (kubelet.config.k8s.io/v1beta1) of a standalone test kubelet."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Static pods only, re-read every second (and on inotify events).
        "staticPodPath": str(workdir / "manifests"),
        "fileCheckFrequency": "1s",
        "syncFrequency": "10s",
        "containerRuntimeEndpoint": runtime_endpoint,
        "imageServiceEndpoint": image_endpoint,
        # The API on loopback only, open to anonymous callers there (no API server to ask).
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
            "x509": {},
        },
        "authorization": {"mode": "AlwaysAllow"},
        # This machine: cgroup v1 with cgroupfs, no swap accounting wanted, and the node-wide
        # cgroup hierarchy (QoS classes, node allocatable) left alone: the tests share it.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "makeIPTablesUtilChains": False,
        "podLogsDir": str(workdir / "pod-logs"),
        "volumePluginDir": str(workdir / "volume-plugins"),
        "imageGCHighThresholdPercent": gc.high_threshold_percent,
        "imageGCLowThresholdPercent": gc.low_threshold_percent,
        "imageMinimumGCAge": gc.minimum_age,
        **({"evictionHard": dict(gc.eviction_hard)} if gc.eviction_hard else {}),
        "serializeImagePulls": True,
    }


def static_pod(
    name: str,
    image: str,
    command: Sequence[str],
    *,
    restart_policy: str = "Always",
    pull_policy: str = "IfNotPresent",
    annotations: Mapping[str, str] | None = None,
) -> Json:
    """A host-network static pod of one container ``app`` (no CNI here)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "trustd-e2e",
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "hostNetwork": True,
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    "imagePullPolicy": pull_policy,
                    "command": list(command),
                }
            ],
        },
    }


class Kubelet:
    """One standalone kubelet process under ``workdir``."""

    def __init__(
        self,
        program: Path,
        workdir: Path,
        runtime_endpoint: str,
        image_endpoint: str,
        gc: GarbageCollection,
    ) -> None:
        self.program = program
        self.workdir = workdir
        self.manifests = workdir / "manifests"
        self.pod_logs = workdir / "pod-logs"
        self.cert_dir = workdir / "pki"
        self.config_path = workdir / "kubelet-config.json"
        self.runtime_endpoint = runtime_endpoint
        self.image_endpoint = image_endpoint
        self.port = free_port()
        self.healthz_port = free_port()
        self.gc = gc
        self.process = ManagedProcess(
            "kubelet",
            [
                str(program),
                f"--config={self.config_path}",
                f"--root-dir={workdir / 'root'}",
                f"--cert-dir={self.cert_dir}",
                f"--hostname-override={NODE_NAME}",
                "--v=2",
            ],
            log_path=workdir / "kubelet.log",
            cwd=workdir,
        )

    @classmethod
    def launch(
        cls,
        program: Path,
        workdir: Path,
        runtime_endpoint: str,
        image_endpoint: str,
        gc: GarbageCollection | None = None,
        timeout: float = 120.0,
    ) -> Kubelet:
        workdir = Path(workdir).resolve()
        for directory in ("manifests", "pod-logs", "volume-plugins", "root", "pki"):
            (workdir / directory).mkdir(parents=True, exist_ok=True)
        kubelet = cls(program, workdir, runtime_endpoint, image_endpoint, gc or GarbageCollection())
        try:
            kubelet.start(timeout)
        except BaseException:
            kubelet.clean_up()
            raise
        return kubelet

    def configuration(self) -> Json:
        return kubelet_configuration(
            workdir=self.workdir,
            runtime_endpoint=self.runtime_endpoint,
            image_endpoint=self.image_endpoint,
            port=self.port,
            healthz_port=self.healthz_port,
            gc=self.gc,
        )

    def start(self, timeout: float = 120.0) -> None:
        """Write the config and start; ready once healthz and the pod API answer."""
        self.config_path.write_text(json.dumps(self.configuration(), indent=2) + "\n")
        self.process.start()
        self.process.wait_until(self._ready, timeout, f"kubelet on 127.0.0.1:{self.port}")

    def restart(self, gc: GarbageCollection | None = None, timeout: float = 120.0) -> None:
        """Stop and start again (same root dir, manifests and ports), with new GC settings."""
        self.stop()
        if gc is not None:
            self.gc = gc
        self.start(timeout)

    def stop(self) -> None:
        self.process.stop(timeout=20.0)

    def running(self) -> bool:
        return self.process.running()

    def log_text(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def _ready(self) -> bool:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=_API_TIMEOUT
        ) as response:
            if response.read() != b"ok":
                return False
        self.pods()
        return True

    # -- static pods ----------------------------------------------------------------------------

    def write_static_pod(self, manifest: Json) -> Path:
        """Put a static pod manifest in place in one step (a dot file is not read by kubelet)."""
        name = manifest["metadata"]["name"]
        path = self.manifests / f"{name}.json"
        scratch = self.manifests / f".{name}.json.tmp"
        scratch.write_text(json.dumps(manifest, indent=2) + "\n")
        scratch.replace(path)
        return path

    def remove_static_pod(self, name: str) -> None:
        (self.manifests / f"{name}.json").unlink(missing_ok=True)

    @staticmethod
    def pod_name(name: str) -> str:
        """The name kubelet gives a static pod: the manifest's name, a dash, the node name."""
        return f"{name}-{NODE_NAME}"

    # -- kubelet's API --------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        # kubelet's self-signed certificate (with its CA) names the node, not 127.0.0.1: trust
        # exactly that certificate, without a host name check.
        context = ssl.create_default_context(cafile=str(self.cert_dir / "kubelet.crt"))
        context.check_hostname = False
        return context

    def get(self, path: str) -> bytes:
        """GET ``path`` from kubelet's API; raises ``urllib.error.HTTPError`` on an error."""
        url = f"https://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=_API_TIMEOUT, context=self._tls()) as response:
            data: bytes = response.read()
            return data

    def pods(self) -> list[Json]:
        """kubelet's ``/pods``: every pod it runs, static ones with the status it keeps."""
        items: list[Json] = json.loads(self.get("/pods"))["items"] or []
        return items

    def pod(self, name: str) -> Json | None:
        """The static pod made from manifest ``name``, as ``/pods`` shows it."""
        full_name = self.pod_name(name)
        for pod in self.pods():
            if pod["metadata"]["name"] == full_name:
                return pod
        return None

    def container_log(self, name: str, container: str = "app", previous: bool = False) -> str:
        """kubelet's ``/containerLogs`` for a container of static pod ``name``."""
        query = "?previous=true" if previous else ""
        path = f"/containerLogs/trustd-e2e/{urllib.parse.quote(self.pod_name(name))}/{container}"
        return self.get(path + query).decode(errors="replace")

    def metrics(self) -> str:
        return self.get("/metrics").decode()

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
        return sum(
            value
            for sample_labels, value in parse_metric(self.metrics(), name)
            if all(sample_labels.get(key) == wanted for key, wanted in (labels or {}).items())
        )

    def stats_summary(self) -> Json:
        summary: Json = json.loads(self.get("/stats/summary"))
        return summary

    # -- waiting --------------------------------------------------------------------------------

    def wait_for_pod(
        self, name: str, predicate: Callable[[Json], bool], timeout: float, what: str
    ) -> Json:
        """Poll ``/pods`` until static pod ``name`` satisfies ``predicate``; fail with its last
        status and kubelet's log tail otherwise (or at once if kubelet exits)."""
        return self.wait_for(lambda: _matching(self.pod(name), predicate), timeout, what)

    def wait_for(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``probe`` until it returns something other than None; that is the result."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            if not self.running():
                raise StackError(
                    f"kubelet exited while waiting for {what}\n{self.process.log_tail()}"
                )
            try:
                result = probe()
            except (OSError, urllib.error.URLError, ValueError) as error:
                result, last = None, error
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"kubelet: no {what} within {timeout:g}s (last: {last})\n"
                    f"pods: {json.dumps(self._pod_summaries(), indent=1)}\n"
                    f"--- kubelet log ---\n{self.process.log_tail(40)}"
                )
            time.sleep(0.2)

    def _pod_summaries(self) -> list[Json]:
        try:
            return [
                {"name": pod["metadata"]["name"], "status": pod.get("status", {})}
                for pod in self.pods()
            ]
        except (OSError, urllib.error.URLError, ValueError) as error:
            return [{"error": str(error)}]

    def clean_up(self) -> None:
        """Stop, then undo what kubelet leaves behind outside containerd: the bind mount of its
        root dir onto itself (kubelet makes it a shared mount) and any volume mounts under it,
        and its ``/var/log/containers`` links. The pods are the caller's to remove."""
        self.stop()
        for mount_point in sorted(mounts_under(self.workdir), key=len, reverse=True):
            subprocess.run(["umount", mount_point], capture_output=True, check=False)
        self.remove_log_links()

    def remove_log_links(self) -> None:
        """Remove the ``/var/log/containers`` links kubelet made to this kubelet's pod logs."""
        if not CONTAINER_LOG_LINKS.is_dir():
            return
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and str(os.readlink(link)).startswith(f"{self.pod_logs}/"):
                link.unlink(missing_ok=True)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, from /proc/self/mountinfo."""
    prefix = str(directory.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        # The mount point is the fifth field, with space, tab, newline and backslash escaped in
        # octal.
        mount_point = fields[4].encode().decode("unicode_escape") if len(fields) > 4 else ""
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            found.append(mount_point)
    return found


def _matching(pod: Json | None, predicate: Callable[[Json], bool]) -> Json | None:
    return pod if pod is not None and predicate(pod) else None


def container_status(pod: Json, container: str = "app") -> Json | None:
    """The named container's status in a pod from ``/pods``, if kubelet has reported one."""
    for status in pod.get("status", {}).get("containerStatuses", []) or []:
        if status.get("name") == container:
            found: Json = status
            return found
    return None


def parse_metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of each sample of ``name`` in Prometheus text format."""
    samples: list[tuple[dict[str, str], float]] = []
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        rest = line[len(name) :]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            label_text, _, rest = rest[1:].partition("}")
            labels = _parse_labels(label_text)
        elif not rest.startswith(" "):
            continue  # a longer metric name that starts with this one
        samples.append((labels, float(rest.split()[0])))
    return samples


def _parse_labels(text: str) -> dict[str, str]:
    """``a="x",b="y"`` -> ``{"a": "x", "b": "y"}`` (label values here have no escapes)."""
    labels: dict[str, str] = {}
    for part in text.split('",'):
        key, _, value = part.partition("=")
        if key:
            labels[key.strip(",")] = value.strip('"')
    return labels
