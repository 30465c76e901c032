"""install.sh into a temporary prefix: install, install again, uninstall, purge.

Each install creates a virtual environment and pip-installs trustd from the source tree (about
ten seconds with the local package cache).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "install.sh"
EXAMPLE_CONFIG = ROOT / "examples" / "trustd.toml"
COMMANDS = ("trustd", "trustctl")


def run_installer(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(INSTALLER), *map(str, arguments)],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
        timeout=600,
    )


@dataclass
class Tree:
    prefix: Path

    @property
    def venv(self) -> Path:
        return self.prefix / "opt/trustd/venv"

    @property
    def config(self) -> Path:
        return self.prefix / "etc/trustd/trustd.toml"

    @property
    def unit(self) -> Path:
        return self.prefix / "etc/systemd/system/trustd.service"

    @property
    def kubelet_drop_in(self) -> Path:
        return self.prefix / "etc/systemd/system/kubelet.service.d/20-trustd.conf"

    @property
    def share(self) -> Path:
        return self.prefix / "usr/share/trustd"

    @property
    def state(self) -> Path:
        return self.prefix / "var/lib/trustd"

    @property
    def logs(self) -> Path:
        return self.prefix / "var/log/trustd"

    def link(self, command: str) -> Path:
        return self.prefix / "usr/local/bin" / command

    def install(self) -> subprocess.CompletedProcess[str]:
        result = run_installer("--prefix", self.prefix)
        assert result.returncode == 0, result.stdout + result.stderr
        return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tree, str, str]:
    """A tree installed twice, the config edited in between; both runs' output."""
    build_leftovers = [ROOT / "build", ROOT / "trustd.egg-info"]
    existed_before = [path.exists() for path in build_leftovers]
    tree = Tree(tmp_path_factory.mktemp("root"))
    first = tree.install().stdout
    with tree.config.open("a") as config:
        config.write("# edited by the operator\n")
    second = tree.install().stdout
    for path, existed in zip(build_leftovers, existed_before, strict=True):
        assert path.exists() == existed, f"the installer left {path} in the source tree"
    return tree, first, second


def test_installs_every_piece(installed: tuple[Tree, str, str]) -> None:
    tree, first, _ = installed
    assert f"installed: {tree.unit}" in first
    assert tree.kubelet_drop_in.read_text() == (ROOT / "systemd/kubelet-trustd.conf").read_text()
    snippet = tree.share / "kubelet-config-trustd.yaml"
    assert "imageServiceEndpoint: unix:///run/trustd/cri.sock" in snippet.read_text()
    assert mode(tree.state) == 0o700
    assert mode(tree.logs) == 0o750
    assert mode(tree.config) == 0o640
    assert mode(tree.unit) == 0o644


def test_unit_runs_the_virtual_environment(installed: tuple[Tree, str, str]) -> None:
    tree, _, _ = installed
    shipped = (ROOT / "systemd/trustd.service").read_text()
    unit = tree.unit.read_text()
    executable = tree.venv / "bin/trustd"
    assert f"ExecStart={executable} serve --config /etc/trustd/trustd.toml" in unit
    assert unit == shipped.replace("/opt/trustd/venv", str(tree.venv))
    if shutil.which("systemd-analyze"):
        result = subprocess.run(
            ["systemd-analyze", "verify", str(tree.unit)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""


def test_commands_are_linked_and_run(installed: tuple[Tree, str, str]) -> None:
    tree, _, _ = installed
    for command in COMMANDS:
        link = tree.link(command)
        assert link.is_symlink()
        assert Path(os.readlink(link)) == tree.venv / "bin" / command
        result = subprocess.run([str(link), "--help"], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    # The environment is trustd's own, not the interpreter the tests run in.
    probe = subprocess.run(
        [str(tree.venv / "bin/python"), "-c", "import trustd, sys; print(trustd.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree.prefix,  # not the source tree, which "python -c" would put first on sys.path
        # Nor a PYTHONPATH the tests run with (a worktree's checkout), which would come first too.
        env={name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
    )
    assert probe.stdout.startswith(str(tree.venv))


def test_second_run_keeps_the_edited_config(installed: tuple[Tree, str, str]) -> None:
    tree, _, second = installed
    assert tree.config.read_text().endswith("# edited by the operator\n")
    new = tree.config.with_name("trustd.toml.new")
    if EXAMPLE_CONFIG.exists():
        assert new.read_text() == EXAMPLE_CONFIG.read_text()
    assert "version = 1" in new.read_text()
    assert f"kept your {tree.config}" in second


def test_second_run_changes_nothing_else(installed: tuple[Tree, str, str]) -> None:
    tree, _, second = installed
    for path in (tree.unit, tree.kubelet_drop_in, tree.share / "kubelet-config-trustd.yaml"):
        assert f"unchanged: {path}" in second
    for command in COMMANDS:
        assert f"unchanged: {tree.link(command)}" in second
    assert "reusing the virtual environment" in second


def test_uninstall_keeps_config_and_state_then_purge_removes_them(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "root")
    tree.install()
    (tree.state / "cached-trust-data").write_text("{}")
    (tree.logs / "audit.log").write_text("{}\n")
    foreign = tree.prefix / "usr/local/bin/other-tool"
    foreign.write_text("#!/bin/sh\n")

    result = run_installer("--prefix", tree.prefix, "--uninstall")
    assert result.returncode == 0, result.stderr
    for gone in (tree.unit, tree.kubelet_drop_in, tree.share, tree.venv, *map(tree.link, COMMANDS)):
        assert not gone.exists() and not gone.is_symlink(), gone
    assert tree.config.exists()
    assert (tree.state / "cached-trust-data").exists()
    assert (tree.logs / "audit.log").exists()
    assert foreign.exists()

    again = run_installer("--prefix", tree.prefix, "--uninstall")
    assert again.returncode == 0, again.stderr

    purged = run_installer("--prefix", tree.prefix, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    for gone in (tree.config.parent, tree.state, tree.logs):
        assert not gone.exists(), gone
    assert foreign.exists()


def test_refuses_to_replace_a_command_it_did_not_install(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "root")
    tree.link("trustd").parent.mkdir(parents=True)
    tree.link("trustd").write_text("#!/bin/sh\necho someone else's trustd\n")
    result = run_installer("--prefix", tree.prefix)
    assert result.returncode != 0
    assert "is not a link" in result.stderr
    assert "someone else's" in tree.link("trustd").read_text()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--purge"], "--purge only goes with --uninstall"),
        (["--frobnicate"], "unknown argument: --frobnicate"),
        (["--prefix"], "--prefix needs a directory"),
    ],
)
def test_bad_usage_fails(arguments: list[str], message: str) -> None:
    result = run_installer(*arguments)
    assert result.returncode != 0
    assert message in result.stderr


def test_help() -> None:
    result = run_installer("-h")
    assert result.returncode == 0
    assert "--uninstall" in result.stdout


VERIFIER_BIN_DIR = "opt/containerd/image-verifier/bin"


def test_containerd_verifier_is_installed_runs_and_is_uninstalled(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "root")
    verifier = tree.prefix / VERIFIER_BIN_DIR / "trustd"
    neighbour = verifier.with_name("another-verifier")  # someone else's, in the same bin_dir
    neighbour.parent.mkdir(parents=True)
    neighbour.write_text("#!/bin/sh\nexit 0\n")

    result = run_installer("--prefix", tree.prefix, "--containerd-verifier")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"installed: {verifier}" in result.stdout
    assert "[plugins.'io.containerd.image-verifier.v1.bindir']" in result.stdout
    assert f'bin_dir = "{verifier.parent}"' in result.stdout
    assert mode(verifier) == 0o755
    script = verifier.read_text()
    assert script.startswith(f"#!{tree.venv}/bin/python -IS\n")
    assert "'--config', '/etc/trustd/trustd.toml'" in script

    # Run as containerd runs it (a later --config stands in for the node's): the verifier
    # imports trustd from the virtual environment and judges, here with Notary unreachable.
    config = tmp_path / "trustd.toml"
    config.write_text(
        f'[server]\nverifier_socket = ""\nstate_dir = "{tmp_path / "state"}"\n'
        '[audit]\nfile = ""\n[[notary]]\nregistry = "a.test"\nurl = "https://127.0.0.1:1"\n'
    )
    digest = "sha256:" + "e" * 64
    arguments = ["-name", "a.test/app:1", "-digest", digest]
    arguments += ["-stdin-media-type", "application/vnd.oci.descriptor.v1+json"]
    judged = subprocess.run(
        [str(verifier), *arguments, "--config", str(config)],
        input=f'{{"digest":"{digest}"}}\n'.encode(),
        capture_output=True,
        check=False,
        timeout=120,
        cwd=tmp_path,
    )
    assert judged.returncode == 1, judged.stderr
    assert judged.stdout.startswith(b"RegistryUnavailable: trustd: cannot reach notary at ")

    again = run_installer("--prefix", tree.prefix, "--containerd-verifier")
    assert again.returncode == 0, again.stderr
    assert f"unchanged: {verifier}" in again.stdout

    removed = run_installer("--prefix", tree.prefix, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not verifier.exists()
    assert neighbour.exists()


def test_containerd_verifier_never_replaces_someone_elses_file(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "root")
    foreign = tree.prefix / "srv/verifiers/trustd"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("#!/bin/sh\nexit 0\n")
    result = run_installer("--prefix", tree.prefix, "--containerd-verifier", "/srv/verifiers")
    assert result.returncode != 0
    assert "was not installed by trustd" in result.stderr
    assert foreign.read_text() == "#!/bin/sh\nexit 0\n"
    relative = run_installer("--prefix", tree.prefix, "--containerd-verifier", "verifiers")
    assert "--containerd-verifier needs an absolute directory" in relative.stderr
