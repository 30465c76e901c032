"""The one default config file and the one order of choosing it, shared by every program."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from trustd.config.paths import CONFIG_VARIABLE, DEFAULT_CONFIG, config_file
from trustd.programs.options import config_path

REPO_ROOT = Path(__file__).parents[2]


def test_option_beats_variable_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_VARIABLE, raising=False)
    assert config_file(None) == DEFAULT_CONFIG == "/etc/trustd/trustd.toml"
    monkeypatch.setenv(CONFIG_VARIABLE, "/srv/from-variable.toml")
    assert config_file(None) == "/srv/from-variable.toml"
    assert config_file("/srv/from-option.toml") == "/srv/from-option.toml"


def test_empty_option_or_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_VARIABLE, "")
    assert config_file("") == DEFAULT_CONFIG
    monkeypatch.setenv(CONFIG_VARIABLE, "/srv/from-variable.toml")
    assert config_file("") == "/srv/from-variable.toml"


def test_the_full_programs_choose_the_same_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_VARIABLE, "/srv/from-variable.toml")
    assert config_path(None) == Path("/srv/from-variable.toml")
    assert config_path("x.toml") == Path("x.toml")


def test_importing_it_loads_nothing_but_os() -> None:
    # -I -S: nothing from the environment or site, so os is not loaded yet (site loads it at
    # every normal start-up); whatever else appears is what importing the module costs.
    code = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); before = set(sys.modules); "
        "import trustd.config.paths; print(sorted(set(sys.modules) - before))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded = set(ast.literal_eval(result.stdout))
    assert "trustd.config.paths" in loaded
    assert loaded - _OS_AND_ITS_MODULES == {
        "__future__",
        "trustd",
        "trustd.config",
        "trustd.config.paths",
    }


_OS_AND_ITS_MODULES = {
    "os",
    "os.path",
    "stat",
    "_stat",
    "posixpath",
    "genericpath",
    "_collections_abc",
}
