"""``trustctl verify`` as installed (the ``trustctl`` console script,
``trustd.programs.trustctl:main``) on a
node where ``trustd serve`` runs, against the real registry and notary-server.

The program asks the daemon over its verifier socket; ``--local`` judges in the program's own
process. Both must print the same bytes and exit alike; which of the two answered is shown by a
state only the daemon is in: it keeps the config it loaded until it is reloaded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.verifier_helpers import (
    HEAVY,
    UNREACHABLE_REGISTRY,
    Node,
    PushImage,
    make_node,
    running_daemon,
    signed_image,
    unique_repo,
)
from tests.stack import NotaryServer, Registry, Stack, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DAEMON_ANSWERED = b"trustctl: debug: answered by the trustd daemon on "


@dataclass(frozen=True)
class Run:
    status: int
    stdout: bytes
    stderr: bytes


def trustctl(*arguments: str, debug: bool = False, python_flags: tuple[str, ...] = ()) -> Run:
    """The console script as a node's venv runs it: trustd from this tree, its dependencies from
    this interpreter's site-packages, and no .pth hooks of the interpreter here (``-S``: they
    would put the editable install of another checkout first)."""
    paths = sysconfig.get_paths()
    import_paths = [str(REPO_ROOT), *dict.fromkeys((paths["purelib"], paths["platlib"]))]
    code = (
        f"import sys; sys.path[:0] = {import_paths!r}; from trustd.programs.trustctl import main; "
        "sys.exit(main())"
    )
    environment = {key: value for key, value in os.environ.items() if key != "TRUSTCTL_DEBUG"}
    if debug:
        environment["TRUSTCTL_DEBUG"] = "1"
    result = subprocess.run(
        [sys.executable, "-I", "-S", *python_flags, "-c", code, *arguments],
        capture_output=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def both_ways(node: Node, *arguments: str) -> tuple[Run, Run]:
    """``trustctl verify ARGUMENTS -c CONFIG``: (as the program runs it, with ``--local``)."""
    config = ("-c", str(node.config))
    return trustctl("verify", *arguments, *config), trustctl(
        "verify", *arguments, *config, "--local"
    )


def test_the_daemons_answers_are_the_in_process_answers(
    stack: Stack,
    push_image: PushImage,
    tmp_path: Path,
    registry: Registry,
    notary_server: NotaryServer,
) -> None:
    node = make_node(tmp_path, registry, notary_server)
    signed = signed_image(stack, push_image, "ctl")
    unsigned = push_image(signed.repository.split("/", 1)[1], "1.1", seed=uuid.uuid4().hex)
    with running_daemon(node.config, node.verifier_socket, node.metrics_port) as daemon:
        node.daemon = daemon
        cases = {
            "signed": both_ways(node, signed.tagged),
            "signed, --json": both_ways(node, "--json", signed.tagged),
            "signed digest": both_ways(node, signed.by_digest),
            "unsigned tag": both_ways(node, unsigned.tagged),
            "malformed": both_ways(node, "Not//A Reference:"),
            "unreachable notary": both_ways(node, f"{UNREACHABLE_REGISTRY}/team/app:1.0"),
        }
        # containerd's image verifier on the same socket, as before.
        judged = node.judge_pull(signed)

    for case, (daemon_run, local_run) in cases.items():
        assert daemon_run == local_run, case
        assert b"Traceback" not in daemon_run.stderr, case
    statuses = {case: runs[0].status for case, runs in cases.items()}
    assert statuses == {
        "signed": 0,
        "signed, --json": 0,
        "signed digest": 0,
        "unsigned tag": 1,
        "malformed": 2,
        "unreachable notary": 3,
    }
    text, _ = cases["signed"]
    assert text.stdout == f"{signed.by_digest}\tsize {signed.size}\tsigned by targets\n".encode()
    assert cases["signed, --json"][0].stdout.startswith(b'{\n  "reference": ')
    assert cases["unsigned tag"][0].stderr == (
        f"trustctl: tag 1.1 is not signed in {signed.repository}\n".encode()
    )
    assert cases["malformed"][0].stderr.startswith(b"trustctl: invalid image reference")
    assert cases["unreachable notary"][0].stderr.startswith(b"trustctl: cannot reach notary at ")
    assert judged.status == 0 and judged.judged_by_daemon
    # trustctl's questions are not decisions: the audit log has the verifier's pull only.
    assert [r["action"] for r in node.audited(signed.tagged)] == ["verify"]


def test_the_daemon_answers_under_the_config_it_loaded(
    stack: Stack,
    push_image: PushImage,
    tmp_path: Path,
    registry: Registry,
    notary_server: NotaryServer,
) -> None:
    """Which process answered: the config file changes under the running daemon (its Notary
    server moves to an address where nothing listens, and outages are not answered from the
    cache), so a trustctl that read the file itself could only say "cannot reach notary"."""
    node = make_node(tmp_path, registry, notary_server)
    image = signed_image(stack, push_image, "loaded")
    dead = f"https://127.0.0.1:{free_port()}"
    with running_daemon(node.config, node.verifier_socket, node.metrics_port) as daemon:
        before = trustctl("verify", image.tagged, "-c", str(node.config), debug=True)
        original = node.config.read_text()
        node.config.write_text(
            original.replace(notary_server.url, dead)
            + f'[[policy]]\nmatch = "{image.repository}"\noffline = "deny"\n'
        )
        # -X importtime: what the program loaded to get the daemon's answer.
        asked = trustctl(
            "verify", image.tagged, "-c", str(node.config), python_flags=("-X", "importtime")
        )
        local = trustctl("verify", image.tagged, "-c", str(node.config), "--local")

        daemon.process.send_signal(signal.SIGHUP)
        _wait_for_line(daemon.log, "config reloaded from")
        reloaded = trustctl("verify", image.tagged, "-c", str(node.config), debug=True)

    assert before.status == 0, before
    assert before.stderr.startswith(DAEMON_ANSWERED), before.stderr
    assert (asked.status, asked.stdout) == (before.status, before.stdout)
    assert local.status == 3, local
    assert local.stderr.startswith(f"trustctl: cannot reach notary at {dead}".encode())
    # After the reload the daemon judges as the file says, with the same words as --local.
    assert reloaded.stderr.startswith(DAEMON_ANSWERED), reloaded.stderr
    assert reloaded.status == 3
    assert reloaded.stdout == local.stdout == b""
    assert reloaded.stderr.split(b"\n", 1)[1] == local.stderr

    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in asked.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert {
        "trustd.programs.trustctl",
        "trustd.localapi.client",
        "trustd.localapi.wire",
        "socket",
    } <= imported
    assert not {m for m in imported if m.partition(".")[0] in HEAVY}
    assert not imported & {"argparse", "logging"}
    assert not {
        m for m in imported if m.startswith(("trustd.config.model", "trustd.formats.notary"))
    }


def test_with_no_daemon_trustctl_judges_in_its_own_process(
    stack: Stack,
    push_image: PushImage,
    tmp_path: Path,
    registry: Registry,
    notary_server: NotaryServer,
) -> None:
    node = make_node(tmp_path, registry, notary_server)
    signed = signed_image(stack, push_image, "nodaemon")
    unsigned = push_image(unique_repo("nodaemon-unsigned"), "1.0", seed=uuid.uuid4().hex)
    assert not node.verifier_socket.exists()

    for arguments in ((signed.tagged,), ("--json", signed.tagged), (unsigned.tagged,)):
        fallback, local = both_ways(node, *arguments)
        assert fallback == local, arguments
    assert both_ways(node, signed.tagged)[0].status == 0
    assert both_ways(node, unsigned.tagged)[0].status == 1

    noted = trustctl("verify", signed.tagged, "-c", str(node.config), debug=True)
    assert noted.status == 0
    assert (
        noted.stderr
        == (
            f"trustctl: debug: no daemon on {node.verifier_socket} (No such file or directory); "
            "judging in this process\n"
        ).encode()
    )


def _wait_for_line(log: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {log} within {timeout}s")
        time.sleep(0.05)
