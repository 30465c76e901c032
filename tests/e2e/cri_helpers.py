"""An in-process trustd shim in front of the test containerd, and a CRI client to drive it.

The shim is the real thing: ``trustd.config.load.parse_config`` of a TOML text, the real
``TrustEngine`` talking to the session's notary-server, the real ``PolicyEngine`` and
``cri_shim.server.serve`` on a private unix socket. Only the audit log and metrics are left out;
every decision is kept in ``Shim.decisions`` instead, by an ordinary policy observer.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cri_shim.containerd import ContainerdClient
from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from cri_shim.server import RunningServer, serve
from tests.e2e.containerd_images import await_cri_tag, get_image
from trustd.config.load import parse_config
from trustd.config.model import Config
from trustd.formats.notary.engine import TrustEngine
from trustd.net.credentials import Credentials
from trustd.policy.engine import Action, Decision, PolicyEngine
from trustd.service.engine import build_engine

TIMEOUT = 60.0


def unique_repo(prefix: str) -> str:
    """A repository name no other test uses, so tests never see each other's images or tags."""
    return f"trustd-cri/{prefix}-{uuid.uuid4().hex[:8]}"


class RecordingAdmission:
    """The real PolicyEngine, with each request's credentials kept for the test to look at."""

    def __init__(self, policy: PolicyEngine) -> None:
        self.policy = policy
        self.credentials: list[Credentials | None] = []
        self._lock = threading.Lock()

    def decide(
        self,
        image: str,
        credentials: Credentials | None = None,
        action: Action = Action.PULL,
        timeout: float | None = None,
    ) -> Decision:
        with self._lock:
            self.credentials.append(credentials)
        return self.policy.decide(image, credentials, action, timeout)

    def check_local_image(self, decision: Decision, repo_digests: Sequence[str]) -> Decision:
        return self.policy.check_local_image(decision, repo_digests)


@dataclass
class Shim:
    """A running trustd CRI endpoint; ``cri`` talks to trustd, ``direct`` to containerd."""

    socket: Path
    config: Config
    policy: PolicyEngine
    admission: RecordingAdmission
    trust: TrustEngine
    containerd: ContainerdClient
    server: RunningServer
    cri: api_pb2_grpc.ImageServiceStub
    direct: api_pb2_grpc.ImageServiceStub
    channel: grpc.Channel
    direct_channel: grpc.Channel
    decisions: list[Decision] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def decisions_for(self, image: str) -> list[Decision]:
        return [decision for decision in self.decisions if decision.image == image]

    # -- calls through trustd --------------------------------------------------------------------

    def pull(self, image: str, auth: api_pb2.AuthConfig | None = None) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        if auth is not None:
            request.auth.CopyFrom(auth)
        return self.cri.PullImage(request, timeout=TIMEOUT).image_ref

    def status(self, image: str) -> api_pb2.ImageStatusResponse:
        return self.cri.ImageStatus(status_request(image), timeout=TIMEOUT)

    # -- calls straight to containerd ------------------------------------------------------------

    def direct_pull(self, image: str) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        return self.direct.PullImage(request, timeout=TIMEOUT).image_ref

    def direct_status(self, image: str) -> api_pb2.ImageStatusResponse:
        return self.direct.ImageStatus(status_request(image), timeout=TIMEOUT)

    def await_cri_tag(
        self, name: str, timeout: float = 10.0, repo_digest: str | None = None
    ) -> None:
        shown = await_cri_tag(self.containerd, name, timeout, repo_digest=repo_digest)
        assert shown, f"CRI never showed {name}" + (f" as {repo_digest}" if repo_digest else "")

    def manifest_digest_of(self, name: str) -> str | None:
        """The manifest digest containerd's image record ``name`` points at, if there is one,
        once the tags of the pulls the shim has answered are written (they are written behind
        the pull's answer)."""
        self.server.service.tag_writer.drain()
        record = get_image(self.containerd, name, TIMEOUT)
        return None if record is None else record.target.digest


def status_request(image: str) -> api_pb2.ImageStatusRequest:
    return api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image))


def short_socket_dir() -> Path:
    """A directory for a unix socket: pytest's tmp paths can exceed the 107-byte sun_path."""
    return Path(tempfile.mkdtemp(prefix="trustd-cri-"))


@contextmanager
def running_shim(config_text: str, containerd_endpoint: str, state_dir: Path) -> Iterator[Shim]:
    """Start trustd's CRI shim for ``config_text``; everything is stopped and closed on exit."""
    state_dir.mkdir(parents=True, exist_ok=True)
    config = parse_config(config_text, str(state_dir / "trustd.toml"))
    socket = short_socket_dir() / "cri.sock"
    # The engine as the daemon builds it (Notary v1, Notation, cosign), auditing nothing.
    engine = build_engine(config)
    trust, policy = engine.trust, engine.policy
    decisions: list[Decision] = []
    policy.add_observer(decisions.append)
    admission = RecordingAdmission(policy)
    containerd = ContainerdClient(containerd_endpoint, namespace=config.server.containerd_namespace)
    server = serve(socket, admission, containerd, pull_timeout=config.server.pull_timeout)
    channel = grpc.insecure_channel(f"unix://{socket}")
    direct_channel = grpc.insecure_channel(containerd_endpoint)
    try:
        yield Shim(
            socket=socket,
            config=config,
            policy=policy,
            admission=admission,
            trust=trust,
            containerd=containerd,
            server=server,
            cri=api_pb2_grpc.ImageServiceStub(channel),
            direct=api_pb2_grpc.ImageServiceStub(direct_channel),
            channel=channel,
            direct_channel=direct_channel,
            decisions=decisions,
        )
    finally:
        channel.close()
        direct_channel.close()
        server.stop(grace=5.0)
        containerd.close()
        engine.close()
        socket.parent.rmdir()
