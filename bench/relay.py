"""``python3 -m bench.relay SOCKET UPSTREAM``: the floor of a Python gRPC hop, for the bench.

A bare relay of every unary ImageService method, bytes in, bytes out, to ``UPSTREAM``
(containerd's ``unix://`` endpoint), on the same grpc server and client APIs the shim uses, and
nothing else: no policy, no metadata filtering, no deadlines. What it adds to a call over
calling containerd directly is what any Python gRPC relay costs on this machine, so the bench
can show how much of trustd's passthrough overhead is trustd's own.
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc

SERVICE_PREFIX = "/runtime.v1.ImageService/"


class _Relay(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(SERVICE_PREFIX):
            return None
        handler = self._handlers.get(method)
        if handler is None:
            upstream = self._channel.unary_unary(method)
            handler = grpc.unary_unary_rpc_method_handler(
                lambda request, _context: upstream(request)
            )
            self._handlers[method] = handler
        return handler


def main(argv: list[str]) -> int:
    socket, upstream = argv
    channel = grpc.insecure_channel(
        upstream, options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        handlers=[_Relay(channel)],
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
