"""The shipped systemd unit, kubelet drop-in and kubelet config snippet.

``systemd-analyze verify`` and ``security --offline=true`` work on unit files without a running
systemd; they are skipped where systemd-analyze is not installed.
"""

from __future__ import annotations

import inspect
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trustd.config.model import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "trustd.service"
KUBELET_DROP_IN = SYSTEMD / "kubelet-trustd.conf"
KUBELET_SNIPPET = SYSTEMD / "kubelet-config-trustd.yaml"
INSTALLED_EXEC = "/opt/trustd/venv/bin/trustd"
MAX_EXPOSURE = 2.0  # "OK" in systemd-analyze's scale; the unit scores 1.6 today

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> keys -> every value in order (systemd keys may repeat; an empty one resets)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def single(values: dict[str, list[str]], key: str) -> str:
    assert len(values.get(key, [])) == 1, f"{key} should be set exactly once"
    return values[key][0]


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", text)
    assert match, text
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_service_life_cycle_settings() -> None:
    unit = parse_unit(UNIT)
    service = unit["Service"]
    assert single(service, "Type") == "notify"
    assert single(service, "NotifyAccess") == "main"
    assert (
        single(service, "ExecStart") == f"{INSTALLED_EXEC} serve --config /etc/trustd/trustd.toml"
    )
    assert single(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert single(service, "Restart") == "on-failure"
    assert seconds(single(service, "WatchdogSec")) == 30
    # systemd must not kill trustd before its own graceful drain is over.
    assert seconds(single(service, "TimeoutStopSec")) > ServerConfig().shutdown_grace
    assert single(service, "RuntimeDirectory") == "trustd"
    assert single(service, "RuntimeDirectoryMode") == "0755"
    assert single(service, "StateDirectory") == "trustd"
    assert single(service, "LogsDirectory") == "trustd"
    assert ServerConfig().socket == Path("/run/trustd/cri.sock")
    assert ServerConfig().state_dir == Path("/var/lib/trustd")


def test_ordering_against_containerd_and_kubelet() -> None:
    section = parse_unit(UNIT)["Unit"]
    assert "containerd.service" in " ".join(section["After"])
    assert "containerd.service" in " ".join(section["Wants"])
    # A hard dependency would stop or restart trustd (and so kubelet's image service) with
    # every containerd restart; trustd reconnects by itself instead.
    assert "Requires" not in section
    assert "BindsTo" not in section
    assert "kubelet.service" in " ".join(section["Before"])


def test_sandbox_settings() -> None:
    service = parse_unit(UNIT)["Service"]
    assert service["CapabilityBoundingSet"] == [""]
    assert single(service, "ProtectSystem") == "strict"
    assert single(service, "NoNewPrivileges") == "yes"
    assert single(service, "MemoryDenyWriteExecute") == "yes"
    assert single(service, "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert service["SystemCallFilter"][0] == "@system-service"
    assert "ReadWritePaths" not in service  # only the systemd-managed directories are writable


def test_task_and_file_limits_bound_the_daemon_with_room_for_its_pools() -> None:
    from cri_shim.server import serve
    from trustd.localapi.server import VerifierSocketServer
    from trustd.service.metrics_server import MAX_CONNECTIONS

    service = parse_unit(UNIT)["Service"]
    tasks = int(single(service, "TasksMax"))
    files = single(service, "LimitNOFILE")
    assert files.isdigit(), "one limit, soft = hard: trustd cannot raise it past the unit's"
    # Every thread of trustd's pools busy at once (CRI calls, verifier socket workers), its own
    # few and gRPC's, twice over; and still a bound far below systemd's default (15% of pid_max).
    pools = (
        inspect.signature(serve).parameters["max_workers"].default
        + inspect.signature(VerifierSocketServer).parameters["max_workers"].default
    )
    assert 2 * (pools + 20) <= tasks <= 1024
    # A connection or two per thread, the metrics clients, listeners; under systemd's hard
    # default so the unit really bounds it.
    assert 2 * tasks + MAX_CONNECTIONS <= int(files) <= 65536


def test_kubelet_drop_in_orders_without_a_hard_dependency() -> None:
    section = parse_unit(KUBELET_DROP_IN)["Unit"]
    assert section["Wants"] == ["trustd.service"]
    assert section["After"] == ["trustd.service"]
    assert "Requires" not in section


def test_kubelet_config_snippet_points_at_the_trustd_socket() -> None:
    fields = {}
    for line in KUBELET_SNIPPET.read_text().splitlines():
        if line and not line.startswith(("#", " ")):
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    assert fields == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "imageServiceEndpoint": f"unix://{ServerConfig().socket}",
    }


def _unit_with_placeholder_exec(directory: Path) -> Path:
    """A copy of the unit whose ExecStart exists, since verify checks the binary is there."""
    placeholder = directory / "trustd"
    placeholder.write_text("#!/bin/sh\nexit 0\n")
    placeholder.chmod(0o755)
    unit = directory / "trustd.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_EXEC, str(placeholder)))
    return unit


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    unit = _unit_with_placeholder_exec(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_systemd_analyze
def test_systemd_analyze_verify_loads_the_kubelet_drop_in(tmp_path: Path) -> None:
    kubelet = tmp_path / "kubelet.service"
    kubelet.write_text("[Service]\nExecStart=/bin/true\n")
    drop_ins = tmp_path / "kubelet.service.d"
    drop_ins.mkdir()
    shutil.copy(KUBELET_DROP_IN, drop_ins / "20-trustd.conf")
    _unit_with_placeholder_exec(tmp_path)

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemd-analyze", "verify", str(kubelet)],
            capture_output=True,
            text=True,
            check=False,
            env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
        )

    clean = verify()
    assert clean.returncode == 0, clean.stderr
    assert clean.stderr == ""
    # The same run does see the drop-in: a mistake in it is reported.
    with (drop_ins / "20-trustd.conf").open("a") as drop_in:
        drop_in.write("Wnats=trustd.service\n")
    assert "20-trustd.conf" in verify().stderr


@needs_systemd_analyze
def test_security_exposure_stays_low(tmp_path: Path) -> None:
    unit = _unit_with_placeholder_exec(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for trustd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE


PROBE = textwrap.dedent(
    """
    import ctypes, mmap, sys
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("W+X memory was still allowed")
    except OSError:
        pass
    from concurrent import futures
    import grpc, ssl
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    import trustd.formats.notary.engine, trustd.policy.engine, trustd.service.metrics
    key = ec.generate_private_key(ec.SECP256R1())
    ecdsa = ec.ECDSA(hashes.SHA256())
    key.public_key().verify(key.sign(b"m", ecdsa), b"m", ecdsa)
    edkey = ed25519.Ed25519PrivateKey.generate()
    edkey.public_key().verify(edkey.sign(b"m"), b"m")
    ssl.create_default_context()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_insecure_port("unix:" + sys.argv[1])
    server.start()
    grpc.channel_ready_future(grpc.insecure_channel("unix:" + sys.argv[1])).result(timeout=30)
    server.stop(0)
    print("ok")
    """
)


def test_python_stack_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes: emulated with the kernel's PR_SET_MDWE (Linux 6.3+)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "probe.sock")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


CONNECT_PROBE = textwrap.dedent(
    """
    import socket, sys
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(sys.argv[1] + "/containerd.sock")
    try:
        open(sys.argv[1] + "/new-file", "w")
    except OSError:
        print("connected on a read-only mount")
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_socket_connect_works_on_a_read_only_mount(tmp_path: Path) -> None:
    """ProtectSystem=strict leaves /run/containerd read-only; connecting must still work."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "containerd.sock"))
    (tmp_path / "containerd.sock").chmod(0o660)  # as containerd's: no write bit for others
    server.listen()
    read_only = f"mount --bind {tmp_path} {tmp_path} && mount -o remount,bind,ro {tmp_path}"

    def in_private_mount_namespace(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["unshare", "--mount", "sh", "-c", f'{read_only} && exec "$@"', "sh", *command],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    try:
        setup = in_private_mount_namespace("true")
        if setup.returncode != 0:
            pytest.skip(f"cannot make a private read-only mount here: {setup.stderr.strip()}")
        result = in_private_mount_namespace(sys.executable, "-c", CONNECT_PROBE, str(tmp_path))
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "connected on a read-only mount"
