"""The CRI ImageService that kubelet talks to, in front of containerd.

PullImage and ImageStatus ask the admission policy first and act on its decision; every other
ImageService method (ListImages, RemoveImage, ImageFsInfo, and whatever later CRI versions add) is
forwarded to containerd as raw bytes, with metadata, deadlines and status codes preserved. Methods
of other services (the CRI RuntimeService, containerd's own API) are not served: trustd's socket
must not become a second way into containerd. No trust decision is made here: the policy
answers, this module enforces the answer.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from cri_shim.containerd import ContainerdClient, forwardable_metadata
from cri_shim.gen.cri.runtime.v1 import api_pb2
from trustd.errors import InvalidReference
from trustd.names.reference import parse_reference
from trustd.net.credentials import Credentials
from trustd.policy.engine import Action, Decision
from trustd.service.unix_socket import prepare_socket_path

log = logging.getLogger(__name__)

SERVICE = "runtime.v1.ImageService"
# Every method served starts with this; anything else is answered UNIMPLEMENTED by grpc.
SERVED_PREFIX = f"/{SERVICE}/"
PULL_IMAGE = f"/{SERVICE}/PullImage"
IMAGE_STATUS = f"/{SERVICE}/ImageStatus"

# Server-streaming methods of the ImageService; everything else in the CRI is unary.
STREAMING_METHODS = frozenset({f"/{SERVICE}/StreamImages"})

# How long (seconds) the shim remembers a tag it just created: containerd's CRI plugin learns
# of the tag from an event, a moment after the pull has returned.
RECENT_TAG_SECONDS = 5.0
# A tag write runs after its pull has returned, so no caller's deadline bounds it.
TAG_TIMEOUT = 30.0
# How long after its pull a tag is written: after kubelet's ImageStatus that follows the pull.
TAG_DELAY = 0.05
_TAG_FIRST_BACKOFF = 0.1  # seconds between tries while containerd is unreachable, doubling
_TAG_MAX_BACKOFF = 2.0


class Admission(Protocol):
    def decide(
        self,
        image: str,
        credentials: Credentials | None = None,
        action: Action = Action.PULL,
        timeout: float | None = None,
    ) -> Decision: ...

    def check_local_image(self, decision: Decision, repo_digests: Sequence[str]) -> Decision: ...


def denial_status(decision: Decision) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a denied pull is reported with (see docs/cri.md).

    kubelet strips the code of an ``Unknown`` error and matches the message's prefix to name the
    pod's waiting reason, so trust denials are ``Unknown`` with ``SignatureValidationFailed: …``
    or ``RegistryUnavailable: …``; a reference that cannot be parsed is the caller's mistake.
    """
    if isinstance(decision.error, InvalidReference):
        return grpc.StatusCode.INVALID_ARGUMENT, f"trustd: {decision.reason}"
    return grpc.StatusCode.UNKNOWN, decision.message


def credentials_from(auth: api_pb2.AuthConfig) -> Credentials | None:
    """The pull's registry credentials, which also unlock the Notary token service."""
    username, password = auth.username, auth.password
    if not username and auth.auth:
        try:
            decoded = base64.b64decode(auth.auth).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        username, _, password = decoded.partition(":")
    credentials = Credentials(
        username=username,
        password=password,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )
    return credentials or None


def _timeout(context: grpc.ServicerContext, default: float | None = None) -> float | None:
    """Seconds left before the caller's deadline; ``default`` when the caller set none."""
    remaining = context.time_remaining()
    # grpc reports "no deadline" as a very large number
    return default if remaining is None or remaining > 10**8 else max(remaining, 0.001)


class _CallDeadline:
    """One deadline for everything a call waits for: the caller's, or ``limit`` from its start
    if that is sooner (kubelet sends PullImage without one)."""

    def __init__(self, context: grpc.ServicerContext, limit: float | None) -> None:
        timeout = _timeout(context, limit)
        if timeout is not None and limit is not None:
            timeout = min(timeout, limit)
        self._at = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        return None if self._at is None else max(self._at - time.monotonic(), 0.001)


def _abort_with_upstream(context: grpc.ServicerContext, error: grpc.RpcError) -> None:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    context.abort(code, details or "")


class RecentTags:
    """Tags this shim pointed at a pinned pull in the last few seconds, with the pinned name.

    The pull returns as soon as containerd has the pinned image; the tag is written behind it
    (``TagWriter``), and containerd's CRI plugin learns of the tag from an event a moment later
    still. An ImageStatus for such a tag asks for the pinned name the pull itself created: the
    same image, whatever containerd shows under the tag yet (nothing, or the image a moved tag
    pointed at before).
    """

    def __init__(self, seconds: float = RECENT_TAG_SECONDS) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._tags: dict[str, tuple[str, float]] = {}  # tag -> (pinned name, expiry)

    def add(self, tag: str, pinned: str) -> None:
        now = time.monotonic()
        with self._lock:
            for name in [name for name, (_, expiry) in self._tags.items() if expiry <= now]:
                del self._tags[name]
            self._tags[tag] = (pinned, now + self.seconds)

    def pinned(self, tag: str) -> str | None:
        with self._lock:
            entry = self._tags.get(tag)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]


class TagWriter:
    """Writes tags for finished pulls on one thread of its own, in the order the pulls finished.

    containerd's images Get and Create for the tag are two more round trips; kubelet does not
    need them before the pull returns (its next ImageStatus is answered through RecentTags),
    so the pull does not wait. Each write waits ``delay`` after its pull returned, so that it
    does not compete for the CPU with the ImageStatus kubelet sends right after the pull. One
    thread keeps the order: a tag re-pointed by a later pull never ends on the earlier digest.
    While containerd is unreachable (restarting), a write is retried for up to ``timeout``;
    any other failure, or one that outlasts that, is logged, and the tag is then written by the
    next pull of it (kubelet pulls again when the tag is not found).
    """

    def __init__(
        self,
        containerd: ContainerdClient,
        timeout: float = TAG_TIMEOUT,
        delay: float = TAG_DELAY,
    ) -> None:
        self._containerd = containerd
        self._timeout = timeout
        self._delay = delay
        self._closing = threading.Event()
        self._executor = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tag")

    def submit(self, tag: str, pinned: str) -> None:
        due = time.monotonic() + self._delay
        self._executor.submit(self._write, tag, pinned, due)

    def _write(self, tag: str, pinned: str, due: float) -> None:
        wait = due - time.monotonic()
        if wait > 0:
            self._closing.wait(wait)
        deadline = time.monotonic() + self._timeout
        backoff = _TAG_FIRST_BACKOFF
        while True:
            try:
                self._containerd.tag_image(tag, pinned, max(deadline - time.monotonic(), 0.001))
                return
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                retry = (
                    code == grpc.StatusCode.UNAVAILABLE
                    and time.monotonic() + backoff < deadline
                    and not self._closing.wait(backoff)
                )
                if not retry:
                    log.warning("could not point %s at %s in containerd: %s", tag, pinned, error)
                    return
            backoff = min(backoff * 2, _TAG_MAX_BACKOFF)

    def drain(self) -> None:
        """Return once the tags of every pull answered so far are written (or failed)."""
        self._executor.submit(lambda: None).result()

    def close(self) -> None:
        """Write what is queued, then stop (no more waiting for an unreachable containerd)."""
        self._closing.set()
        self._executor.shutdown(wait=True)


class Lookahead:
    """Verified lookups started behind an answer, for the pull that is about to ask.

    kubelet follows an absent ImageStatus with a PullImage of the same image at once; the
    lookup made here (the decision is audited as any ImageStatus decision) is the one that pull
    joins or finds fresh. Bounded: when ``limit`` lookups are pending, more are skipped (each
    pull still makes its own), so a flood of ImageStatus calls cannot queue without end.
    """

    def __init__(self, admission: Admission, *, limit: int = 64, timeout: float = 10.0) -> None:
        self._admission = admission
        self._timeout = timeout
        self._limit = limit
        self._lock = threading.Lock()
        self._pending: set[futures.Future[None]] = set()
        self._executor = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="lookahead")

    def submit(self, image: str) -> None:
        with self._lock:
            if len(self._pending) >= self._limit:
                return
            try:
                future = self._executor.submit(self._look_up, image)
            except RuntimeError:  # shutting down
                return
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _look_up(self, image: str) -> None:
        try:
            self._admission.decide(image, None, Action.STATUS, self._timeout)
        except Exception:  # the policy never raises for bad input; this is a bug
            log.exception("looking %s up ahead of its pull failed", image)

    def drain(self) -> None:
        """Return once every lookup submitted so far has finished."""
        with self._lock:
            pending = list(self._pending)
        futures.wait(pending)

    def close(self) -> None:
        """Stop; lookups not yet started are dropped (each pull makes its own)."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class ImageService:
    """Handlers for the two methods trustd decides; everything else is forwarded."""

    def __init__(
        self, admission: Admission, containerd: ContainerdClient, pull_timeout: float | None = None
    ) -> None:
        self.admission = admission
        self.containerd = containerd
        self.pull_timeout = pull_timeout
        self.recent_tags = RecentTags()
        self.tag_writer = TagWriter(containerd)
        self.lookahead = Lookahead(admission)

    def pull_image(
        self, request: api_pb2.PullImageRequest, context: grpc.ServicerContext
    ) -> api_pb2.PullImageResponse:
        # pull_timeout bounds the whole pull, verification included, whatever the caller sent.
        deadline = _CallDeadline(context, self.pull_timeout)
        decision = self.admission.decide(
            request.image.image, credentials_from(request.auth), Action.PULL, deadline.left()
        )
        pull_ref = decision.pull_ref
        if not decision.allowed or pull_ref is None:
            context.abort(*denial_status(decision))
        assert pull_ref is not None  # abort raised otherwise
        upstream = api_pb2.PullImageRequest()
        upstream.CopyFrom(request)
        upstream.image.image = pull_ref
        metadata = forwardable_metadata(context.invocation_metadata())
        try:
            response = self.containerd.pull_image(upstream, deadline.left(), metadata)
            tag = _tag_to_apply(decision)
            if tag is not None:
                self.recent_tags.add(tag, pull_ref)
                self.tag_writer.submit(tag, pull_ref)
            elif decision.mode == "audit" and decision.signed is not None:
                # Audit mode pulled what was asked; tell the policy what arrived.
                status = self.containerd.image_status(
                    api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=decision.pull_ref)),
                    deadline.left(),
                    metadata,
                )
                self.admission.check_local_image(decision, list(status.image.repo_digests))
        except grpc.RpcError as error:
            log.warning("containerd failed to pull %s: %s", decision.pull_ref, error)
            _abort_with_upstream(context, error)
        return response

    def image_status(
        self, request: api_pb2.ImageStatusRequest, context: grpc.ServicerContext
    ) -> api_pb2.ImageStatusResponse:
        metadata = forwardable_metadata(context.invocation_metadata())
        deadline = _CallDeadline(context, self.pull_timeout)
        name = _normalised(request.image.image)
        if name is not None and self.recent_tags.pinned(name) is None:
            # containerd first: an image it does not hold is absent whatever Notary says, and
            # kubelet's pull follows at once. That pull's verified lookup starts now, behind
            # the answer, and the pull joins it (single flight, freshness window).
            try:
                response = self.containerd.image_status(
                    _status_request(request, name), deadline.left(), metadata
                )
            except grpc.RpcError as error:
                _abort_with_upstream(context, error)
            if not response.HasField("image"):
                # Once the answer is on its way: the lookup must not hold up the answer.
                image = request.image.image
                if not context.add_callback(lambda: self.lookahead.submit(image)):
                    self.lookahead.submit(image)
                return response
            decision = self.admission.decide(
                request.image.image, None, Action.STATUS, deadline.left()
            )
            if not decision.allowed:
                # A present-but-unverified image never runs: reported absent, kubelet pulls,
                # and that pull is verified (and denied, with a reason, if it still fails).
                return api_pb2.ImageStatusResponse()
            if decision.reference is not None and str(decision.reference) == name:
                return self._checked(decision, response)
        else:
            decision = self.admission.decide(
                request.image.image, None, Action.STATUS, deadline.left()
            )
            if not decision.allowed:
                return api_pb2.ImageStatusResponse()
        upstream = request
        if decision.reference is not None:
            # Ask for the name trustd verified (kubelet may send "nginx:1.25"), which is the
            # normalised name containerd stores and trustd tags; for a tag this shim pointed at
            # that very pull moments ago, the pull's own pinned name (see RecentTags).
            upstream = _status_request(
                request, self._recently_pinned(decision) or str(decision.reference)
            )
        try:
            response = self.containerd.image_status(upstream, deadline.left(), metadata)
        except grpc.RpcError as error:
            _abort_with_upstream(context, error)
        return self._checked(decision, response)

    def _checked(
        self, decision: Decision, response: api_pb2.ImageStatusResponse
    ) -> api_pb2.ImageStatusResponse:
        """containerd's answer if the image it holds is the signed one, else absent."""
        if not response.HasField("image"):
            return response
        checked = self.admission.check_local_image(decision, list(response.image.repo_digests))
        if not checked.allowed:
            # Reported absent: kubelet pulls, and that pull is pinned to the signed digest.
            log.info("%s; reporting it absent", checked.reason)
            return api_pb2.ImageStatusResponse()
        return response

    def _recently_pinned(self, decision: Decision) -> str | None:
        """The pinned name behind the decision's tag, if this shim tagged that pull lately."""
        tag = _tag_to_apply(decision)
        if tag is None or decision.pull_ref is None:
            return None
        if self.recent_tags.pinned(tag) != decision.pull_ref:
            return None  # not tagged here lately, or re-signed since: ask for the tag
        return decision.pull_ref


def _normalised(image: str) -> str | None:
    """The name containerd stores ``image`` under (``nginx:1.25`` is
    ``docker.io/library/nginx:1.25``); None for a reference the policy must word the error of."""
    try:
        return str(parse_reference(image))
    except InvalidReference:
        return None


def _status_request(request: api_pb2.ImageStatusRequest, name: str) -> api_pb2.ImageStatusRequest:
    upstream = api_pb2.ImageStatusRequest()
    upstream.CopyFrom(request)
    upstream.image.image = name
    return upstream


def _tag_to_apply(decision: Decision) -> str | None:
    """The tag to point at the pinned pull, so node tools show what kubelet asked for."""
    reference = decision.reference
    if reference is None or decision.signed is None or reference.tag is None:
        return None
    if decision.pull_ref != reference.pinned(decision.signed.digest):
        return None
    return reference.tagged_name


class _Handlers(grpc.GenericRpcHandler):
    """Routes the decided methods to ImageService, other ImageService methods to containerd."""

    def __init__(self, service: ImageService) -> None:
        self._service = service
        self._decided = {
            PULL_IMAGE: grpc.unary_unary_rpc_method_handler(
                service.pull_image,
                request_deserializer=api_pb2.PullImageRequest.FromString,
                response_serializer=api_pb2.PullImageResponse.SerializeToString,
            ),
            IMAGE_STATUS: grpc.unary_unary_rpc_method_handler(
                service.image_status,
                request_deserializer=api_pb2.ImageStatusRequest.FromString,
                response_serializer=api_pb2.ImageStatusResponse.SerializeToString,
            ),
        }

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._decided.get(method)
        if handler is not None:
            return handler
        if not method.startswith(SERVED_PREFIX):
            # Not the ImageService: relaying it would hand whoever may use trustd's socket
            # containerd's RuntimeService and native API (run a privileged container, delete
            # images behind the policy's back).
            return None
        containerd = self._service.containerd
        pull_timeout = self._service.pull_timeout

        def forward_timeout(context: grpc.ServicerContext) -> float | None:
            return _timeout(context, pull_timeout)  # a call without a deadline gets this one

        if method in STREAMING_METHODS:

            def forward_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                # A stream lasts as long as its caller wants; it is cancelled when the caller goes.
                call = containerd.forward_stream(
                    method, request, context.invocation_metadata(), _timeout(context)
                )
                context.add_callback(call.cancel)
                try:
                    yield from call
                except grpc.RpcError as error:
                    _abort_with_upstream(context, error)

            return grpc.unary_stream_rpc_method_handler(forward_stream)

        # A method trustd does not know (ListImages, RemoveImage, ImageFsInfo, later additions)
        # is relayed byte for byte; every such CRI method is unary.
        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                response, trailing = containerd.forward(
                    method, request, context.invocation_metadata(), forward_timeout(context)
                )
            except grpc.RpcError as error:
                trailing_metadata = getattr(error, "trailing_metadata", lambda: None)()
                if trailing_metadata:
                    context.set_trailing_metadata(forwardable_metadata(trailing_metadata))
                _abort_with_upstream(context, error)
            if trailing:
                context.set_trailing_metadata(forwardable_metadata(trailing))
            return response

        return grpc.unary_unary_rpc_method_handler(forward)


@dataclass
class RunningServer:
    server: grpc.Server
    socket: Path
    executor: futures.ThreadPoolExecutor
    service: ImageService

    def stop(self, grace: float | None) -> None:
        self.server.stop(grace).wait()
        self.service.tag_writer.close()  # the tags of pulls already answered
        self.service.lookahead.close()
        # grpc never shuts down the pool it was given: without this every stopped server
        # would keep its handler threads for the life of the process.
        self.executor.shutdown(wait=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


def serve(
    socket: Path,
    admission: Admission,
    containerd: ContainerdClient,
    *,
    socket_mode: int = 0o660,
    pull_timeout: float | None = None,
    max_workers: int = 64,
) -> RunningServer:
    """Start serving the ImageService on the unix socket ``socket``."""
    prepare_socket_path(socket)
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cri")
    service = ImageService(admission, containerd, pull_timeout)
    server = grpc.server(
        executor,
        handlers=[_Handlers(service)],
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )
    running = RunningServer(server, socket, executor, service)
    try:
        server.add_insecure_port(f"unix://{socket}")
        server.start()
        os.chmod(socket, socket_mode)
    except BaseException:
        running.stop(None)
        raise
    return running
