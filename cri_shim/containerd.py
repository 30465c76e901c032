"""A client for containerd: its CRI ImageService and its own images API, over one gRPC channel.

No trust logic lives here. The channel is built to outlive containerd restarts: RPCs in flight
when containerd goes away fail with UNAVAILABLE, and later RPCs on the same client succeed as soon
as containerd is back (reconnect backoff is capped at about a second, and a call made while the
channel is reconnecting waits a short grace period for it instead of failing at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Final

import grpc
from google.protobuf import field_mask_pb2

from cri_shim.gen.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc

Metadata = Sequence[tuple[str, str | bytes]]

NAMESPACE_HEADER: Final = "containerd-namespace"
# The CRI plugin only lists and garbage-collects images that carry this label.
CRI_MANAGED_LABEL: Final = "io.cri-containerd.image"
CRI_MANAGED_VALUE: Final = "managed"

# Same limit kubelet and containerd use: ListImages on a busy node exceeds grpc's 4 MiB default.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    # A containerd restart takes ~1 s; default backoff (1 s growing to 120 s) would keep the
    # channel failing long after containerd is back.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Go gRPC servers (containerd) answer pings more often than every 5 minutes with GOAWAY
    # "too_many_pings", and refuse pings without active calls.
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

# Headers that describe one hop of a connection; grpc sets its own and rejects or duplicates these.
_HOP_HEADERS: Final = frozenset(
    {"user-agent", "te", "content-type", "host", "connection", "grpc-timeout"}
)


def forwardable_metadata(metadata: Metadata) -> list[tuple[str, str | bytes]]:
    """Request metadata minus pseudo-headers, hop headers and grpc's own ``grpc-*`` headers."""
    return [
        (key, value)
        for key, value in metadata
        if not key.startswith(":") and not key.startswith("grpc-") and key not in _HOP_HEADERS
    ]


class ContainerdClient:
    """containerd's CRI ImageService and images API on ``endpoint`` (``unix:///path``)."""

    def __init__(
        self, endpoint: str, namespace: str = "k8s.io", *, connect_grace: float = 2.0
    ) -> None:
        """``connect_grace``: seconds a call waits for a reconnecting channel before failing."""
        self.endpoint = endpoint
        self.namespace = namespace
        self.connect_grace = connect_grace
        self._channel = grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        self._cri = api_pb2_grpc.ImageServiceStub(self._channel)
        self._images = images_pb2_grpc.ImagesStub(self._channel)
        self._raw_methods: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._raw_streams: dict[str, grpc.UnaryStreamMultiCallable] = {}
        self._state = grpc.ChannelConnectivity.IDLE
        self._state_lock = threading.Lock()
        self._channel.subscribe(self._on_state_change, try_to_connect=False)

    # -- CRI ImageService on containerd ----------------------------------------------------------

    def pull_image(
        self,
        request: api_pb2.PullImageRequest,
        timeout: float | None,
        metadata: Metadata = (),
    ) -> api_pb2.PullImageResponse:
        deadline = _deadline(timeout)
        self._await_connection(deadline)
        return self._cri.PullImage(request, timeout=_remaining(deadline), metadata=metadata)

    def image_status(
        self,
        request: api_pb2.ImageStatusRequest,
        timeout: float | None,
        metadata: Metadata = (),
    ) -> api_pb2.ImageStatusResponse:
        deadline = _deadline(timeout)
        self._await_connection(deadline)
        return self._cri.ImageStatus(request, timeout=_remaining(deadline), metadata=metadata)

    def forward(
        self,
        method: str,
        request: bytes,
        metadata: Metadata,
        timeout: float | None,
    ) -> tuple[bytes, tuple[tuple[str, str | bytes], ...]]:
        """Relay one unary call byte for byte; returns the response and its trailing metadata.

        containerd's error status reaches the caller unchanged as the raised ``grpc.RpcError``
        (whose ``trailing_metadata()`` holds containerd's trailers).
        """
        call = self._raw_methods.get(method)
        if call is None:
            # No (de)serializers: the request and response stay raw bytes.
            call = self._channel.unary_unary(method)
            self._raw_methods[method] = call
        deadline = _deadline(timeout)
        self._await_connection(deadline)
        response, rpc = call.with_call(
            request, timeout=_remaining(deadline), metadata=forwardable_metadata(metadata)
        )
        return response, tuple(rpc.trailing_metadata() or ())

    def forward_stream(
        self,
        method: str,
        request: bytes,
        metadata: Metadata,
        timeout: float | None,
    ) -> grpc.Call:
        """Relay one server-streaming call (such as StreamImages); iterate the result for bytes.

        The returned call is also a ``grpc.Call``: cancel it if the downstream caller goes away.
        """
        call = self._raw_streams.get(method)
        if call is None:
            call = self._channel.unary_stream(method)
            self._raw_streams[method] = call
        deadline = _deadline(timeout)
        self._await_connection(deadline)
        return call(request, timeout=_remaining(deadline), metadata=forwardable_metadata(metadata))

    # -- containerd images API -------------------------------------------------------------------

    def tag_image(self, tag_ref: str, source_ref: str, timeout: float | None) -> None:
        """Point image ``tag_ref`` at the target of image ``source_ref``, managed by the CRI plugin.

        ``source_ref`` is the name containerd's CRI plugin gives a digest pull,
        ``registry/repository@sha256:…``. A missing source raises containerd's NOT_FOUND. An
        existing ``tag_ref`` keeps its other labels; only its target and the managed label change.
        """
        deadline = _deadline(timeout)
        self._await_connection(deadline)
        source = self._images.Get(
            images_pb2.GetImageRequest(name=source_ref),
            timeout=_remaining(deadline),
            metadata=self._namespace_metadata(),
        ).image
        tagged = images_pb2.Image(name=tag_ref, labels={CRI_MANAGED_LABEL: CRI_MANAGED_VALUE})
        tagged.target.CopyFrom(source.target)
        try:
            self._images.Create(
                images_pb2.CreateImageRequest(image=tagged),
                timeout=_remaining(deadline),
                metadata=self._namespace_metadata(),
            )
            return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        self._images.Update(
            images_pb2.UpdateImageRequest(
                image=tagged,
                update_mask=field_mask_pb2.FieldMask(
                    paths=["target", f"labels.{CRI_MANAGED_LABEL}"]
                ),
            ),
            timeout=_remaining(deadline),
            metadata=self._namespace_metadata(),
        )

    # -- life ------------------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.unsubscribe(self._on_state_change)
        self._channel.close()

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _namespace_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((NAMESPACE_HEADER, self.namespace),)

    def _on_state_change(self, state: grpc.ChannelConnectivity) -> None:
        with self._state_lock:
            self._state = state

    def _await_connection(self, deadline: float | None) -> None:
        """Give a channel that is (re)connecting a moment to get there.

        Without this, a call made in the backoff window right after containerd came back would
        fail with UNAVAILABLE although containerd is up. If the channel does not become ready in
        time, the call goes ahead and fails with grpc's own UNAVAILABLE status.
        """
        with self._state_lock:
            if self._state == grpc.ChannelConnectivity.READY:
                return
        wait = self.connect_grace
        remaining = _remaining(deadline)
        if remaining is not None:
            wait = min(wait, remaining)
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=wait)
        except grpc.FutureTimeoutError:
            pass
        finally:
            ready.cancel()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    # A tiny positive timeout lets grpc report DEADLINE_EXCEEDED itself once time is up.
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)
