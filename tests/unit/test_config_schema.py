"""The declaration machinery on a table of its own: what a future key gets by declaring it."""

from enum import StrEnum
from pathlib import Path
from typing import ClassVar

import pytest

from trustd.config.schema import (
    Table,
    Where,
    boolean,
    choice,
    declared_keys,
    derived,
    existing_file,
    file_mode,
    integer,
    mapping,
    path,
    read_table,
    seconds,
    setting,
    string,
    string_list,
    table,
    tables,
    walk_tables,
    within,
)
from trustd.errors import ConfigError

SOURCE = "/etc/trustd/trustd.toml"


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


def _upper_name(text: str) -> str:
    if not text.isupper():
        raise ValueError(f"key {text!r} must be uppercase")
    return text


class Key(Table):
    REFUSED_KEYS: ClassVar[dict[str, str]] = {"secret": "secrets go in secret_file"}

    name: str = setting(string(empty=False))
    file: Path | None = setting(existing_file(), default=None)
    weight: int = setting(integer(check=within(1, 9)), default=5)
    where: str = derived(lambda where: where.path, default="built in")
    position: int | None = derived(lambda where: where.index, default=None)

    def check_keys(self, where: Where) -> None:
        if self.name == "heavy" and self.weight < 5:
            raise where.key("weight").error("must be 5 or more for heavy")


class Inner(Table):
    on: bool = setting(boolean(), default=True)


class Outer(Table):
    colour: Colour = setting(choice(Colour), default=Colour.RED)
    dir: Path = setting(path(), default=Path("/var/lib/x"), key="dir-name")
    wait: float = setting(seconds(zero=True, at_most=60, because="kubelet gives up"), default=1.0)
    mode: int = setting(file_mode(), default=0o600)
    tags: tuple[str, ...] = setting(
        string_list(string(), at_least_one="must name a tag", unique=True), default=("a",)
    )
    inner: Inner = setting(table(Inner), default=Inner())
    keys: tuple[Key, ...] = setting(tables(Key, unique="name"), default=())
    aliases: tuple[tuple[str, int], ...] = setting(mapping(_upper_name, integer()), default=())


def read(data: dict[str, object], base_dir: Path = Path("/etc/trustd")) -> Outer:
    return read_table(Outer, data, Where(SOURCE, base_dir))


def error(data: dict[str, object], base_dir: Path = Path("/etc/trustd")) -> str:
    with pytest.raises(ConfigError) as raised:
        read(data, base_dir)
    return str(raised.value).removeprefix(f"{SOURCE}: ")


def test_absent_keys_are_the_declared_defaults() -> None:
    assert read({}) == Outer()
    assert read({"inner": {}}) == Outer()
    assert Outer().dir == Path("/var/lib/x")


def test_values_are_read_converted_and_placed(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("x")
    outer = read(
        {
            "colour": "blue",
            "dir-name": "data",
            "wait": 0,
            "mode": "0640",
            "tags": ["x", "y"],
            "inner": {"on": False},
            "keys": [{"name": "one"}, {"name": "two", "file": "k", "weight": 9}],
            "aliases": {"A": 1, "B": 2},
        },
        tmp_path,
    )
    assert outer.colour is Colour.BLUE
    assert outer.dir == tmp_path / "data"
    assert (outer.wait, outer.mode, outer.tags) == (0.0, 0o640, ("x", "y"))
    assert outer.inner == Inner(on=False)
    assert outer.keys[1] == Key(
        name="two", file=tmp_path / "k", weight=9, where="keys[1]", position=1
    )
    assert outer.keys[0].where == "keys[0]" and outer.keys[0].position == 0
    assert outer.aliases == (("A", 1), ("B", 2))
    assert Key(name="made in code").where == "built in"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"colr": "red"},
            "colr: unknown key (known: colour, dir-name, wait, mode, tags, inner, "
            'keys, aliases); did you mean "colour"?',
        ),
        ({"dir": "x"}, "dir: unknown key (known: colour, dir-name, "),
        ({"colour": "green"}, 'colour: must be one of "red", "blue" (got "green")'),
        ({"colour": 1}, "colour: must be a string (got 1)"),
        ({"dir-name": ""}, "dir-name: must not be empty"),
        ({"wait": -1}, "wait: must be zero or more seconds (got -1)"),
        ({"wait": 61}, "wait: must be at most 60 seconds: kubelet gives up (got 61)"),
        ({"wait": True}, "wait: must be a number of seconds (got true)"),
        ({"wait": 10**400}, "wait: must be zero or more seconds (got 1"),
        ({"mode": 600}, 'mode: must be a string of octal digits such as "0660" (got 600; '),
        ({"tags": []}, "tags: must name a tag"),
        ({"tags": "a"}, 'tags: must be an array of strings (got "a")'),
        ({"tags": ["a", 1]}, "tags[1]: must be a string (got 1)"),
        ({"tags": ["a", "b", "a"]}, 'tags[2]: "a" is listed twice'),
        ({"inner": []}, "inner: must be a table (got an array)"),
        ({"inner": {"on": "yes"}}, 'inner.on: must be true or false (got "yes")'),
        ({"keys": {}}, "keys: must be an array of tables, written [[keys]]"),
        ({"keys": [{"name": "a"}, 3]}, "keys[1]: must be a table (got 3)"),
        ({"keys": [{}]}, "keys[0].name: is required"),
        ({"keys": [{"name": "a", "secret": "x"}]}, "keys[0].secret: secrets go in secret_file"),
        ({"keys": [{"name": "a", "weight": 0}]}, "keys[0].weight: must be from 1 to 9 (got 0)"),
        ({"keys": [{"name": "a", "file": "none"}]}, "keys[0].file: file /etc/trustd/none does "),
        ({"keys": [{"name": "heavy", "weight": 1}]}, "keys[0].weight: must be 5 or more for heavy"),
        (
            {"keys": [{"name": "a"}, {"name": "b"}, {"name": "a"}]},
            'keys[2].name: "a" is already configured in keys[0]',
        ),
        ({"aliases": {"a.b": 1}}, "aliases.\"a.b\": key 'a.b' must be uppercase"),
        ({"aliases": {"A": "1"}}, 'aliases.A: must be an integer (got "1")'),
    ],
)
def test_every_problem_names_its_key(data: dict[str, object], message: str) -> None:
    assert error(data).startswith(message)


def test_the_declaration_can_be_walked() -> None:
    assert [key for key, _ in declared_keys(Key)] == ["name", "file", "weight"]
    assert [(path, cls) for path, cls in walk_tables(Outer)] == [
        ("", Outer),
        ("inner", Inner),
        ("keys", Key),
    ]


def test_tables_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Outer().colour = Colour.BLUE  # type: ignore[misc]
