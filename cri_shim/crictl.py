"""A minimal CRI image client for nodes without crictl: ``python3 -m cri_shim.crictl``.

Speaks the same ImageService API kubelet uses, so what it shows is what kubelet would get.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc

DEFAULT_ENDPOINT = "unix:///run/trustd/cri.sock"


class ImageClient:
    """A thin wrapper over the generated ImageService stub."""

    def __init__(self, endpoint: str, timeout: float = 120.0) -> None:
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = api_pb2_grpc.ImageServiceStub(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def pull(self, image: str, username: str = "", password: str = "") -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        if username:
            request.auth.username = username
            request.auth.password = password
        return self._stub.PullImage(request, timeout=self.timeout).image_ref

    def status(self, image: str) -> api_pb2.Image | None:
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image))
        response = self._stub.ImageStatus(request, timeout=self.timeout)
        return response.image if response.HasField("image") else None

    def list(self) -> list[api_pb2.Image]:
        return list(self._stub.ListImages(api_pb2.ListImagesRequest(), timeout=self.timeout).images)

    def remove(self, image: str) -> None:
        request = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image))
        self._stub.RemoveImage(request, timeout=self.timeout)


def _describe(image: api_pb2.Image) -> str:
    tags = ", ".join(image.repo_tags) or "<none>"
    digests = ", ".join(image.repo_digests) or "<none>"
    return f"{image.id}\n  tags:    {tags}\n  digests: {digests}\n  size:    {image.size} bytes"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m cri_shim.crictl", description=__doc__)
    parser.add_argument("--image-endpoint", default=DEFAULT_ENDPOINT)
    commands = parser.add_subparsers(dest="command", required=True)
    pull = commands.add_parser("pull", help="pull an image (as kubelet would)")
    pull.add_argument("image")
    pull.add_argument("--creds", help="USER:PASSWORD for the registry and its Notary")
    commands.add_parser("images", help="list images")
    inspect = commands.add_parser("inspecti", help="show one image's status")
    inspect.add_argument("image")
    remove = commands.add_parser("rmi", help="remove an image")
    remove.add_argument("image")
    args = parser.parse_args(argv)

    client = ImageClient(args.image_endpoint)
    try:
        if args.command == "pull":
            username, _, password = (args.creds or "").partition(":")
            print(f"Image is up to date for {client.pull(args.image, username, password)}")
        elif args.command == "images":
            for image in client.list():
                print(_describe(image))
        elif args.command == "inspecti":
            found = client.status(args.image)
            if found is None:
                print(f"{args.image}: not present", file=sys.stderr)
                return 1
            print(_describe(found))
        else:
            client.remove(args.image)
            print(f"Deleted: {args.image}")
    except grpc.RpcError as error:
        print(f"rpc error: code = {error.code().name} desc = {error.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
