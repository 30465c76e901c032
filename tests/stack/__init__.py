"""The real-stack test harness: Debian's docker-registry, notary-server, notary CLI and
containerd started on 127.0.0.1 for tests, the demo and the benchmarks (no pytest in here)."""

from tests.stack.containerd import Containerd
from tests.stack.images import PushedImage, push_image
from tests.stack.notary_server import NotaryServer
from tests.stack.pki import TestPKI
from tests.stack.ports import StackError, free_port, wait_for
from tests.stack.process import ManagedProcess
from tests.stack.publisher import NotaryCLIError, NotaryPublisher, SignedTarget, metadata_key_id
from tests.stack.registry import Registry
from tests.stack.stack import MissingProgram, Stack, require_programs

__all__ = [
    "Containerd",
    "ManagedProcess",
    "MissingProgram",
    "NotaryCLIError",
    "NotaryPublisher",
    "NotaryServer",
    "PushedImage",
    "Registry",
    "SignedTarget",
    "Stack",
    "StackError",
    "TestPKI",
    "free_port",
    "metadata_key_id",
    "push_image",
    "require_programs",
    "wait_for",
]
