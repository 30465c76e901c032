"""``python3 -m demo``: trustd in front of real containerd, with a signed and an unsigned image.

Starts Debian's docker-registry, notary-server and containerd on 127.0.0.1 under ``.demo/``,
pushes images with skopeo, signs one with the real notary CLI, runs ``trustd serve`` as a real
daemon in front of containerd, and shows what kubelet would see: a signed pull allowed (pinned to
the signed digest), unsigned and tampered pulls denied, and the audit lines for each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from cri_shim.crictl import ImageClient
from cri_shim.gen.cri.runtime.v1 import api_pb2
from tests.stack.ports import free_port
from tests.stack.stack import Stack
from tests.stack.trustd_config import trustd_config_text

ROOT = Path(__file__).resolve().parent.parent


def say(text: str = "") -> None:
    print(text, flush=True)


def step(number: int, title: str) -> None:
    say()
    say(f"{number}. {title}")


def shown_with_tag(client: ImageClient, tagged: str, timeout: float = 10.0) -> api_pb2.Image | None:
    """The image's status once containerd lists the tag (trustd writes it just after the pull,
    and containerd's CRI plugin learns of it from an event)."""
    deadline = time.monotonic() + timeout
    status = client.status(tagged)
    while status is not None and tagged not in status.repo_tags and time.monotonic() < deadline:
        time.sleep(0.05)
        status = client.status(tagged)
    return status


def write_config(workdir: Path, stack: Stack) -> Path:
    config = workdir / "trustd.toml"
    notary = [(stack.registry.host, stack.notary_server.url, stack.notary_server.ca_file)]
    policy = f'[[policy]]\nmatch = "{stack.registry.host}/demo/**"\nmode = "enforce"\n'
    config.write_text(
        "# written by the demo; see examples/trustd.toml for a production config\n"
        + trustd_config_text(
            state_dir=workdir / "state",
            notary=notary,
            policy=policy,
            containerd_endpoint=stack.containerd.endpoint,
            socket=workdir / "run" / "cri.sock",
            audit_file=workdir / "audit.log",
            metrics_listen=f"127.0.0.1:{free_port()}",
        )
    )
    return config


def start_trustd(config: Path, workdir: Path) -> subprocess.Popen[bytes]:
    log = (workdir / "trustd.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "trustd", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    socket = workdir / "run" / "cri.sock"
    deadline = time.monotonic() + 30
    while not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(
                f"trustd did not start; its log:\n{(workdir / 'trustd.log').read_text()}"
            )
        time.sleep(0.05)
    return process


def try_pull(client: ImageClient, image: str) -> str | None:
    try:
        image_ref = client.pull(image)
    except grpc.RpcError as error:
        say(f"   DENIED  rpc error: code = {error.code().name} desc = {error.details()}")
        return None
    say(f"   ALLOWED image {image_ref}")
    return image_ref


def run(workdir: Path, keep_running: bool) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    say("== trustd demo: content trust for containerd, on this machine")
    say(f"   starting docker-registry, notary-server and containerd under {workdir}")
    stack = Stack.start(workdir / "stack")
    trustd: subprocess.Popen[bytes] | None = None
    try:
        registry = stack.registry.host
        signed = stack.push_image("demo/hello", "1.0", seed="good")
        stack.sign(signed)
        stack.push_image("demo/hello", "2.0", seed="unsigned-tag")
        stack.push_image("demo/unsigned", "1.0", seed="nobody-signed-this")
        say(
            f"   pushed {signed.repository}:1.0 and signed it with the notary CLI ({signed.digest})"
        )
        say(f"   pushed {registry}/demo/hello:2.0 and {registry}/demo/unsigned:1.0 (never signed)")

        config = write_config(workdir, stack)
        trustd = start_trustd(config, workdir)
        socket = workdir / "run" / "cri.sock"
        say(f"   trustd serve --config {config}  (CRI ImageService on unix://{socket})")
        client = ImageClient(f"unix://{socket}")

        step(1, f"kubelet pulls the signed tag {signed.repository}:1.0")
        try_pull(client, f"{signed.repository}:1.0")
        status = shown_with_tag(client, f"{signed.repository}:1.0")
        if status is not None:
            say(f"   containerd now has it as {', '.join(status.repo_digests)}")
            say(f"   and tagged {', '.join(status.repo_tags)} (the signed digest was pulled)")

        step(2, "kubelet pulls an image nobody signed")
        try_pull(client, f"{registry}/demo/unsigned:1.0")

        step(3, "the repository is signed, but this tag is not")
        try_pull(client, f"{registry}/demo/hello:2.0")

        step(4, "an attacker with registry credentials pushes another image over the signed tag")
        evil = stack.push_image("demo/hello", "1.0", seed="attacker")
        say(f"   the registry now serves {evil.digest} for demo/hello:1.0")
        client.remove(f"{signed.repository}:1.0")
        try_pull(client, f"{signed.repository}:1.0")
        status = client.status(f"{signed.repository}:1.0")
        pinned = (
            status is not None and f"{signed.repository}@{signed.digest}" in status.repo_digests
        )
        say(f"   trustd pulled the signed {signed.digest}: {'yes' if pinned else 'NO'}")
        say("   and the attacker's manifest by digest:")
        try_pull(client, f"{evil.repository}@{evil.digest}")

        say()
        say(f"== audit log ({workdir / 'audit.log'}), one JSON line per decision:")
        for line in (workdir / "audit.log").read_text().splitlines():
            say(f"   {line}")
        client.close()
        if keep_running:
            say()
            say(f"trustd keeps running in front of containerd ({stack.containerd.endpoint}).")
            say("Try it from another shell, for example:")
            say(f"   python3 -m cri_shim.crictl --image-endpoint unix://{socket} pull IMAGE")
            say(
                f"   TRUSTD_CONFIG={config} python3 -m trustd.programs.trustctl verify "
                f"{signed.repository}:1.0"
            )
            say("Ctrl-C stops everything.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                say("stopping")
        return 0
    finally:
        if trustd is not None:
            trustd.send_signal(signal.SIGTERM)
            try:
                trustd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                trustd.kill()
        stack.stop()


def _interrupt(_number: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    parser.add_argument(
        "--exit", action="store_true", help="stop after the walk-through instead of serving on"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the demo runs containerd, which needs root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    return run(args.workdir.resolve(), keep_running=not args.exit)


if __name__ == "__main__":
    sys.exit(main())
