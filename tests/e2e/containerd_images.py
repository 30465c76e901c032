"""Reading containerd's image records and the CRI plugin's view of them, for assertions.

The shim writes tags; these read them back the way a node tool would: containerd's images API
for the record, CRI ImageStatus for what kubelet is shown.
"""

from __future__ import annotations

import time

import grpc

from cri_shim.containerd import NAMESPACE_HEADER, ContainerdClient
from cri_shim.gen.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from cri_shim.gen.cri.runtime.v1 import api_pb2


def get_image(client: ContainerdClient, name: str, timeout: float) -> images_pb2.Image | None:
    """The containerd image record called ``name``, or None if there is none."""
    with grpc.insecure_channel(client.endpoint) as channel:
        images = images_pb2_grpc.ImagesStub(channel)
        try:
            response = images.Get(
                images_pb2.GetImageRequest(name=name),
                timeout=timeout,
                metadata=((NAMESPACE_HEADER, client.namespace),),
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
    return response.image


def await_cri_tag(
    client: ContainerdClient, tag: str, timeout: float, repo_digest: str | None = None
) -> bool:
    """Wait until containerd's CRI plugin shows ``tag``; False if it did not within ``timeout``.

    With ``repo_digest`` (``repository@sha256:…``), wait until the image the CRI plugin shows
    for ``tag`` is that one. The CRI plugin learns of images made through the images API from
    events it handles asynchronously: ImageStatus right after tagging may not show a new tag
    yet, and after a tag moved it still shows the old image under the tag for a moment.
    """
    deadline = time.monotonic() + timeout
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=tag))
    delay = 0.002
    while True:
        left = max(deadline - time.monotonic(), 0.1)
        image = client.image_status(request, left, ()).image
        if tag in image.repo_tags and (repo_digest is None or repo_digest in image.repo_digests):
            return True
        if time.monotonic() + delay > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
