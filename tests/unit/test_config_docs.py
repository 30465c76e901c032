"""docs/config.md documents exactly the keys trustd.config.model declares."""

import re
from pathlib import Path

from trustd.config.model import Config
from trustd.config.schema import declared_keys, walk_tables

DOCS = Path(__file__).parents[2] / "docs" / "config.md"

_TABLE_HEADING = re.compile(r"^#+ `\[\[?(?P<path>[a-z_.]+)\]\]?`$")
_ROW = re.compile(r"^\| (?P<keys>`[^|]+`) \|")


def documented_keys(text: str) -> dict[str, set[str]]:
    """Table key path ("" for the top level) -> the keys the page documents in it: the first
    column of its tables' rows, and the tables under it that have a section of their own."""
    found: dict[str, set[str]] = {}
    section: str | None = None
    for line in text.splitlines():
        heading = _TABLE_HEADING.match(line)
        if heading is not None:
            section = heading["path"]
            parent, _, name = section.rpartition(".")
            found.setdefault(parent, set()).add(name)
            found.setdefault(section, set())
        elif line == "## Top level":
            section = ""
            found.setdefault(section, set())
        elif line.startswith("## "):
            section = None  # prose about names, patterns, references
        elif section is not None and (row := _ROW.match(line)) is not None:
            found[section].update(re.findall(r"`([a-z_]+)`", row["keys"]))
    return found


def test_every_declared_key_is_documented_and_every_documented_key_declared() -> None:
    declared = {
        path: {key for key, _ in declared_keys(table)} for path, table in walk_tables(Config)
    }
    documented = documented_keys(DOCS.read_text())
    assert set(documented) == set(declared)
    for path, keys in declared.items():
        where = f"[{path}]" if path else "the top level"
        assert documented[path] == keys, f"docs/config.md, {where}"


def test_the_reader_of_the_page_finds_what_it_should() -> None:
    page = (
        "## Top level\n| key | type |\n|---|---|\n| `version` | integer |\n"
        "### `version`\nprose | `not_a_key` |\n"
        "## `[server]`\n| `a`, `b` | path |\n"
        "## `[[notary]]`\n| `c` | string |\n"
        "## Names\n| `d` | e |\n"
    )
    assert documented_keys(page) == {
        "": {"version", "server", "notary"},
        "server": {"a", "b"},
        "notary": {"c"},
    }
