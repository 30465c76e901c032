"""ContainerdClient against the real containerd (CRI plugin) and a real registry.

Uses the session fixtures of the test harness: ``registry``, ``containerd`` and ``push_image``.
Every test pushes its own repository, so tests do not depend on each other's images.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cri_shim.containerd import (
    CRI_MANAGED_LABEL,
    CRI_MANAGED_VALUE,
    NAMESPACE_HEADER,
    ContainerdClient,
    forwardable_metadata,
)
from cri_shim.gen.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.e2e.containerd_images import await_cri_tag, get_image

TIMEOUT = 60.0


def unique_repo(prefix: str) -> str:
    return f"trustd-test/{prefix}-{uuid.uuid4().hex[:8]}"


def pull_request(reference: str) -> api_pb2.PullImageRequest:
    return api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=reference))


def status_request(reference: str) -> api_pb2.ImageStatusRequest:
    return api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=reference))


@pytest.fixture
def client(containerd: Any) -> Iterator[ContainerdClient]:
    with ContainerdClient(containerd.endpoint) as containerd_client:
        yield containerd_client


@pytest.fixture
def pulled(client: ContainerdClient, push_image: Any) -> Any:
    """An image pushed to the registry and pulled by digest through containerd's CRI."""
    image = push_image(unique_repo("pulled"), "1.0", seed=uuid.uuid4().hex)
    client.pull_image(pull_request(f"{image.repository}@{image.digest}"), TIMEOUT)
    return image


# -- CRI pull + tag --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_digest_pull_is_named_repository_at_digest(client: ContainerdClient, pulled: Any) -> None:
    digest_ref = f"{pulled.repository}@{pulled.digest}"
    record = get_image(client, digest_ref, TIMEOUT)
    assert record is not None
    assert record.target.digest == pulled.digest
    assert record.target.size == pulled.size
    assert record.labels[CRI_MANAGED_LABEL] == CRI_MANAGED_VALUE
    # The CRI plugin does not invent a tag for a digest pull.
    assert get_image(client, f"{pulled.repository}:{pulled.tag}", TIMEOUT) is None


@pytest.mark.e2e
def test_tag_image_makes_cri_find_the_tag(client: ContainerdClient, pulled: Any) -> None:
    tag_ref = f"{pulled.repository}:{pulled.tag}"
    digest_ref = f"{pulled.repository}@{pulled.digest}"
    before = client.image_status(status_request(tag_ref), TIMEOUT)
    assert not before.HasField("image")

    client.tag_image(tag_ref, digest_ref, TIMEOUT)

    assert await_cri_tag(client, tag_ref, TIMEOUT)
    status = client.image_status(status_request(tag_ref), TIMEOUT)
    assert status.HasField("image")
    assert tag_ref in status.image.repo_tags
    assert digest_ref in status.image.repo_digests
    record = get_image(client, tag_ref, TIMEOUT)
    assert record is not None
    assert record.target.digest == pulled.digest
    assert record.labels[CRI_MANAGED_LABEL] == CRI_MANAGED_VALUE


@pytest.mark.e2e
def test_tag_image_moves_an_existing_tag_and_keeps_its_other_labels(
    client: ContainerdClient, containerd: Any, push_image: Any
) -> None:
    repo = unique_repo("moved")
    first = push_image(repo, "old", seed=uuid.uuid4().hex)
    second = push_image(repo, "new", seed=uuid.uuid4().hex)
    assert first.digest != second.digest
    for image in (first, second):
        client.pull_image(pull_request(f"{image.repository}@{image.digest}"), TIMEOUT)
    tag_ref = f"{first.repository}:stable"

    client.tag_image(tag_ref, f"{first.repository}@{first.digest}", TIMEOUT)
    _add_label(containerd.endpoint, tag_ref, "example.com/owner", "ops")
    client.tag_image(tag_ref, f"{second.repository}@{second.digest}", TIMEOUT)

    record = get_image(client, tag_ref, TIMEOUT)
    assert record is not None
    assert record.target.digest == second.digest
    assert record.labels["example.com/owner"] == "ops"
    assert record.labels[CRI_MANAGED_LABEL] == CRI_MANAGED_VALUE
    # The CRI plugin hears of the move through an event it handles later: until then it still
    # shows the first image under the tag, so wait (with a deadline) for the second one.
    second_ref = f"{second.repository}@{second.digest}"
    assert await_cri_tag(client, tag_ref, TIMEOUT, repo_digest=second_ref)
    status = client.image_status(status_request(tag_ref), TIMEOUT)
    assert second_ref in status.image.repo_digests
    assert f"{first.repository}@{first.digest}" not in status.image.repo_digests


@pytest.mark.e2e
def test_tag_image_of_a_missing_source_raises_not_found(
    client: ContainerdClient, registry: Any
) -> None:
    missing = f"{registry.host}/{unique_repo('absent')}@sha256:{'0' * 64}"
    with pytest.raises(grpc.RpcError) as raised:
        client.tag_image(f"{registry.host}/{unique_repo('absent')}:1", missing, TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.e2e
def test_get_image_of_a_missing_name_is_none(client: ContainerdClient, registry: Any) -> None:
    assert get_image(client, f"{registry.host}/{unique_repo('nothing')}:1", TIMEOUT) is None


# -- raw forwarding --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_forward_list_images_equals_a_direct_call(
    client: ContainerdClient, containerd: Any, pulled: Any
) -> None:
    raw, _trailing = client.forward(
        "/runtime.v1.ImageService/ListImages",
        api_pb2.ListImagesRequest().SerializeToString(),
        [],
        TIMEOUT,
    )
    forwarded = api_pb2.ListImagesResponse.FromString(raw)
    with grpc.insecure_channel(containerd.endpoint) as channel:
        direct = api_pb2_grpc.ImageServiceStub(channel).ListImages(
            api_pb2.ListImagesRequest(), timeout=TIMEOUT
        )
    assert sorted(forwarded.images, key=lambda image: image.id) == sorted(
        direct.images, key=lambda image: image.id
    )
    digest_ref = f"{pulled.repository}@{pulled.digest}"
    assert any(digest_ref in image.repo_digests for image in forwarded.images)


@pytest.mark.e2e
def test_forward_of_an_unknown_method_returns_containerds_unimplemented(
    client: ContainerdClient,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.forward("/runtime.v1.ImageService/NoSuchMethod", b"", [], TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # containerd's own message, not one made up on this side.
    assert "NoSuchMethod" in raised.value.details()


@pytest.mark.e2e
def test_forward_sends_request_metadata_and_drops_hop_headers(
    client: ContainerdClient, registry: Any
) -> None:
    name = f"{registry.host}/{unique_repo('meta')}:1"
    request = images_pb2.GetImageRequest(name=name).SerializeToString()
    metadata = [
        (":authority", "trustd.sock"),
        ("user-agent", "kubelet/v1.31"),
        ("grpc-accept-encoding", "identity"),
        (NAMESPACE_HEADER, "k8s.io"),
    ]
    with pytest.raises(grpc.RpcError) as raised:
        client.forward("/containerd.services.images.v1.Images/Get", request, metadata, TIMEOUT)
    # Without the namespace header containerd answers FAILED_PRECONDITION instead.
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert name in raised.value.details()


def test_forwardable_metadata_keeps_application_headers_only() -> None:
    metadata = [
        (":authority", "localhost"),
        ("user-agent", "grpc-go/1.60"),
        ("grpc-timeout", "1S"),
        ("x-request-id", "42"),
        ("trace-bin", b"\x00\x01"),
    ]
    assert forwardable_metadata(metadata) == [("x-request-id", "42"), ("trace-bin", b"\x00\x01")]


# -- containerd restarts ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_same_client_works_after_containerd_restarts(
    client: ContainerdClient, containerd: Any, pulled: Any
) -> None:
    digest_ref = f"{pulled.repository}@{pulled.digest}"
    assert client.image_status(status_request(digest_ref), TIMEOUT).HasField("image")

    containerd.restart()

    assert client.image_status(status_request(digest_ref), TIMEOUT).HasField("image")
    assert get_image(client, digest_ref, TIMEOUT) is not None


@pytest.mark.e2e
def test_calls_fail_unavailable_while_containerd_is_down(
    client: ContainerdClient, containerd: Any, pulled: Any
) -> None:
    digest_ref = f"{pulled.repository}@{pulled.digest}"
    assert get_image(client, digest_ref, TIMEOUT) is not None
    containerd.stop()
    try:
        with pytest.raises(grpc.RpcError) as raised:
            client.image_status(status_request(digest_ref), TIMEOUT)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        containerd.start_again()
    assert client.image_status(status_request(digest_ref), TIMEOUT).HasField("image")


@pytest.mark.e2e
def test_call_in_flight_during_a_restart_fails_unavailable(
    client: ContainerdClient, containerd: Any
) -> None:
    # A "registry" that accepts connections and never answers holds containerd's pull open, so
    # the call is certainly in flight when containerd goes away.
    connected = threading.Event()
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as black_hole:
        port = black_hole.getsockname()[1]

        def accept() -> None:
            try:
                while True:
                    accepted.append(black_hole.accept()[0])
                    connected.set()
            except OSError:
                return

        threading.Thread(target=accept, daemon=True).start()
        with ThreadPoolExecutor(max_workers=1) as pool:
            pull = pool.submit(
                client.pull_image, pull_request(f"127.0.0.1:{port}/stuck/image:1"), TIMEOUT
            )
            try:
                assert connected.wait(TIMEOUT), "containerd never contacted the registry"
                containerd.restart()
                with pytest.raises(grpc.RpcError) as raised:
                    pull.result(TIMEOUT)
            finally:
                black_hole.close()
                for connection in accepted:
                    connection.close()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not client.image_status(status_request("127.0.0.1:1/absent:1"), TIMEOUT).HasField(
        "image"
    )


def _add_label(endpoint: str, name: str, key: str, value: str) -> None:
    """Give an image a label of someone else's, through containerd's API directly."""
    with grpc.insecure_channel(endpoint) as channel:
        images_pb2_grpc.ImagesStub(channel).Update(
            images_pb2.UpdateImageRequest(
                image=images_pb2.Image(name=name, labels={key: value}),
                update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{key}"]),
            ),
            metadata=((NAMESPACE_HEADER, "k8s.io"),),
            timeout=TIMEOUT,
        )
