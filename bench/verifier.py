"""What trustd's containerd image verifier adds to a pull: the installed file, run as containerd
runs it.

containerd 2.x runs every file of its verifiers' ``bin_dir`` once per pull, between resolving the
name and fetching anything, and waits for it: the verifier's whole run (exec, interpreter start,
judgement, exit) is added to the pull. Measured here per judgement of a signed tag:

- with ``trustd serve`` running: the verifier asks the daemon's verifier socket (the target:
  at most 50 ms);
- with no daemon: the verifier builds a trust engine on the same state directory and judges in
  its own process (for contrast);
- the floor: the same interpreter started the same way (``-IS``) doing nothing.

The file is installed as on a node: install.sh names ``/etc/trustd/trustd.toml``, whose daemon
listens on ``/run/trustd/verify.sock``, and the verifier of such a default install asks there
without reading its config (``trustd.localapi.client.ask``). The bench's node lives in its work
dir, not at those paths (they are the machine's), so its file makes the bench's config and socket
the client's defaults before the program starts: the code that runs is a node's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from bench.shim import REPO_ROOT
from bench.stats import Summary, interleaved_calls, timed
from tests.stack import PushedImage
from trustd.config.load import load_config
from trustd.programs.image_verifier import DESCRIPTOR_MEDIA_TYPE, entry_script

TARGET_MS = 50.0
_DAEMON_ANSWERED = b"judged by the trustd daemon on "


@dataclass(frozen=True)
class VerifierTimes:
    daemon: Summary
    no_daemon: Summary
    floor: Summary


def _install(directory: Path, config: Path, name: str) -> Path:
    """The file install.sh puts into containerd's bin_dir, importing trustd from this tree, with
    ``config`` and its verifier socket in place of the default paths (see above)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = sysconfig.get_paths()
    import_paths = [str(REPO_ROOT), *dict.fromkeys((paths["purelib"], paths["platlib"]))]
    script = entry_script(sys.executable, str(config), import_paths)
    socket = load_config(config).server.verifier_socket
    defaults = (
        "from trustd.localapi import client\n"
        f"client.DEFAULT_CONFIG = {str(config)!r}\n"
        f"client.DEFAULT_VERIFIER_SOCKET = {str(socket)!r}\n"
    )
    start = "from trustd.programs.image_verifier import run\n"
    if socket is None or start not in script:
        raise RuntimeError(f"cannot install the bench's verifier for {config}: {script!r}")
    executable = directory / name
    executable.write_text(script.replace(start, defaults + start))
    executable.chmod(0o755)
    return executable


def _run(executable: Path, image: PushedImage, expect_daemon: bool | None) -> None:
    """One judgement, exactly as containerd asks it; checks that it allowed."""
    descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": image.digest,
        "size": image.size,
    }
    stdin = json.dumps(descriptor, separators=(",", ":")).encode() + b"\n"
    command = [str(executable), "-name", image.tagged, "-digest", image.digest]
    command += ["-stdin-media-type", DESCRIPTOR_MEDIA_TYPE]
    result = subprocess.run(command, input=stdin, capture_output=True, check=False, timeout=60)
    if expect_daemon is not None:
        if result.returncode != 0 or not result.stdout.startswith(b"trustd: signed by "):
            raise RuntimeError(f"the verifier did not allow {image.tagged}: {result}")
        if (_DAEMON_ANSWERED in result.stderr) != expect_daemon:
            raise RuntimeError(f"the verifier was not judged as expected: {result.stderr!r}")


def measure_verifier(
    workdir: Path,
    daemon_config: Path,
    no_daemon_config: Path,
    image: PushedImage,
    daemon_samples: int,
    no_daemon_samples: int,
) -> VerifierTimes:
    """``daemon_config`` names the running daemon's verifier socket; ``no_daemon_config`` is the
    same node with a socket nothing listens on (the daemon stopped). ``image.tagged`` must be
    signed as ``image.digest``."""
    bin_dir = workdir / "verifier-bin"
    with_daemon = _install(bin_dir, daemon_config, "trustd")
    without_daemon = _install(bin_dir / "no-daemon", no_daemon_config, "trustd")
    floor = bin_dir / "floor"
    floor.write_text(f"#!{sys.executable} -IS\n")
    floor.chmod(0o755)

    for executable, daemon in ((with_daemon, True), (without_daemon, False)):
        _run(executable, image, daemon)  # untimed: bytecode written, the daemon's cache warm
    # Interleaved, so drift on the machine hits both alike.
    judgements = {
        "daemon": lambda: _run(with_daemon, image, True),
        "floor": lambda: _run(floor, image, None),
    }
    times_of = interleaved_calls(judgements, daemon_samples, warm=0)
    no_daemon_times = [
        timed(lambda: _run(without_daemon, image, False)) for _ in range(no_daemon_samples)
    ]
    return VerifierTimes(
        daemon=Summary.of(times_of["daemon"]),
        no_daemon=Summary.of(no_daemon_times),
        floor=Summary.of(times_of["floor"]),
    )
