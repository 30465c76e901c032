"""docs/architecture.md stays true to the tree: every module or package it names exists, and
every package of trustd and cri_shim has a row in its table of packages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
# A path of ours in backticks: a module (`trustd/policy/engine.py`) or a package (`cri_shim/`).
_NAMED = re.compile(r"`((?:trustd|cri_shim)(?:/[\w.]+)*/?)`")
_PACKAGE_ROW = re.compile(r"^\| `((?:trustd|cri_shim)(?:/\w+)*/)` \|", re.M)


def named_paths(text: str) -> set[str]:
    return set(_NAMED.findall(text))


def packages_in_tree() -> set[str]:
    found = set()
    for top in ("trustd", "cri_shim"):
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT).as_posix() + "/"
            if "/gen/" in relative:
                continue  # generated bindings: one row for cri_shim/gen/
            found.add(relative)
    return found


def test_every_path_the_page_names_exists() -> None:
    missing = sorted(p for p in named_paths(DOC.read_text()) if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names what is not in the tree: {missing}"


def test_every_package_has_a_row() -> None:
    rows = set(_PACKAGE_ROW.findall(DOC.read_text()))
    missing = sorted(packages_in_tree() - rows)
    assert not missing, f"packages without a row in docs/architecture.md: {missing}"


def test_the_reader_finds_names_and_rows() -> None:
    page = "| `trustd/policy/` | x |\ntext `trustd/policy/engine.py` and `cri_shim/` here\n"
    assert named_paths(page) == {"trustd/policy/", "trustd/policy/engine.py", "cri_shim/"}
    assert _PACKAGE_ROW.findall(page) == ["trustd/policy/"]
