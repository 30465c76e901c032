"""``trustctl verify`` as a whole process, run as a node runs it.

install.sh puts trustd into a virtual environment, where pip writes the ``trustctl`` console
script; the venv's interpreter processes the ``.pth`` files of its own site-packages only. The
base interpreter of a development machine may have ``.pth`` hooks no node has (this one imports
certifi at every start, ~35 ms, and finds trustd in another checkout through an editable
install), so timing ``python3 -c …`` here would measure them too. The bench therefore makes a
venv of its own (``python3 -m venv --without-pip``) with one ``.pth`` naming this tree and the
base interpreter's site-packages (path lines only put directories on ``sys.path``; site does not
process the ``.pth`` files inside them, which ``_check_venv`` confirms), and runs the text of the
console script pip writes for ``[project.scripts] trustctl`` with the venv's python (``-c``).

Three series, interleaved, each process's bytecode compiled by an untimed first run:

- ``trustctl verify IMAGE``: the program asks the running daemon (checked on every run:
  ``TRUSTCTL_DEBUG`` makes it say who answered);
- ``trustctl verify --local IMAGE``: judged in the program's own process, on the daemon's state
  directory (the same node, the same question);
- ``python -c pass`` in the same venv: the floor of any Python program.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.shim import REPO_ROOT
from bench.stats import Summary, interleaved_calls

TARGET_MS = 100.0
_DAEMON_ANSWERED = b"trustctl: debug: answered by the trustd daemon on "


@dataclass(frozen=True)
class TrustctlTimes:
    daemon: Summary
    local: Summary
    floor: Summary


@dataclass(frozen=True)
class _Venv:
    python: Path
    console_script: str  # the text of bin/trustctl without its #! line
    environment: dict[str, str]


def _console_script(bin_dir: Path, python: Path) -> str:
    """What pip writes as bin/trustctl for this tree's entry point, without the #! line."""
    # pip's own script writer (distlib, vendored), so the text is pip's and not a copy of it.
    from pip._vendor.distlib.scripts import ScriptMaker

    with (REPO_ROOT / "pyproject.toml").open("rb") as handle:
        entry = tomllib.load(handle)["project"]["scripts"]["trustctl"]
    maker = ScriptMaker(None, str(bin_dir))
    maker.executable = str(python)
    maker.variants = {""}
    [written] = maker.make(f"trustctl = {entry}")
    return Path(written).read_text().split("\n", 1)[1]


def make_venv(directory: Path, pycache: Path) -> _Venv:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    base = sysconfig.get_paths()
    lines = [str(REPO_ROOT), *dict.fromkeys((base["purelib"], base["platlib"]))]
    (Path(site_packages) / "trustd-bench.pth").write_text("\n".join(lines) + "\n")
    # A node's environment: none of the PYTHON* settings of this one (PYTHONPATH would put the
    # tree first by another road, PYTHONDONTWRITEBYTECODE would compile on every run). pip
    # writes bytecode at install; here the first, untimed run writes it into a cache of its own.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    environment.pop("TRUSTD_CONFIG", None)
    environment["PYTHONPYCACHEPREFIX"] = str(pycache)
    venv = _Venv(python, _console_script(directory / "bin", python), environment)
    _check_venv(venv)
    return venv


def _check_venv(venv: _Venv) -> None:
    """trustd from this tree, and none of the base interpreter's .pth hooks run."""
    probe = (
        "import sys, trustd; print(trustd.__file__); "
        "print(sorted(m for m in sys.modules if 'certifi' in m or 'editable' in m))"
    )
    lines = subprocess.run(
        [str(venv.python), "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env=venv.environment,
        cwd="/",
    ).stdout.splitlines()
    if lines != [str(REPO_ROOT / "trustd" / "__init__.py"), "[]"]:
        raise RuntimeError(f"the bench's venv is not as a node's: {lines}")


def _run(venv: _Venv, arguments: list[str], daemon: bool | None) -> bytes:
    """The stdout of one whole process; ``daemon`` True checks that the daemon answered, False
    that it was judged here, None runs ``python -c pass``."""
    if daemon is None:
        command = [str(venv.python), "-c", "pass"]
    else:
        command = [str(venv.python), "-c", venv.console_script, *arguments]
    environment = dict(venv.environment)
    if daemon:
        environment["TRUSTCTL_DEBUG"] = "1"
    result = subprocess.run(
        command, capture_output=True, env=environment, cwd="/", check=False, timeout=120
    )
    if daemon is not None:
        if result.returncode != 0:
            raise RuntimeError(f"trustctl {' '.join(arguments)} failed: {result}")
        if daemon and not result.stderr.startswith(_DAEMON_ANSWERED):
            raise RuntimeError(f"the daemon did not answer trustctl: {result.stderr!r}")
    return result.stdout


def measure_trustctl(workdir: Path, config: Path, image: str, samples: int) -> TrustctlTimes:
    """``config`` is the running daemon's, with its verifier socket; ``image`` must be signed."""
    venv = make_venv(workdir / "trustctl-venv", workdir / "trustctl-pycache")
    verify = ["verify", image, "--config", str(config)]
    runs: dict[str, Callable[[], bytes]] = {
        "daemon": lambda: _run(venv, verify, True),
        "local": lambda: _run(venv, [*verify, "--local"], False),
        "floor": lambda: _run(venv, [], None),
    }
    # Untimed: bytecode written, the daemon's cache warm; both paths print the same.
    asked, local, _ = (run() for run in runs.values())
    if asked != local:
        raise RuntimeError(f"the daemon's answer {asked!r} is not --local's {local!r}")
    times_of = interleaved_calls(runs, samples, warm=0)
    return TrustctlTimes(
        daemon=Summary.of(times_of["daemon"]),
        local=Summary.of(times_of["local"]),
        floor=Summary.of(times_of["floor"]),
    )
