"""``python3 -m bench.host CONFIG``: the CRI shim and the policy in a process of their own.

Only what a decision needs: config, trust engine, policy, containerd client and
``cri_shim.server.serve``. No audit log, no metrics, no systemd. Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from cri_shim.containerd import ContainerdClient
from cri_shim.server import serve
from trustd.config.load import load_config
from trustd.formats.notary.engine import TrustEngine
from trustd.policy.engine import PolicyEngine


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(Path(argv[0]))
    trust = TrustEngine(config, config.server.state_dir)
    policy = PolicyEngine(config, trust)
    containerd = ContainerdClient(
        config.server.containerd, namespace=config.server.containerd_namespace
    )
    server = serve(
        config.server.socket,
        policy,
        containerd,
        socket_mode=config.server.socket_mode,
        pull_timeout=config.server.pull_timeout,
    )
    stop = threading.Event()

    def on_signal(_number: int, _frame: FrameType | None) -> None:
        stop.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, on_signal)
    while not stop.wait(1.0):
        pass
    server.stop(config.server.shutdown_grace)
    containerd.close()
    trust.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
