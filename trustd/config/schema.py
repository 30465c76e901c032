"""Declaring the config's tables once, and the one reader that walks the declarations.

A table of the config file is a subclass of ``Table`` (which makes it a frozen dataclass); each of
its keys is a field declared with ``setting``::

    class AuditConfig(Table):
        file: Path | None = setting(path_or_none(), default=Path("/var/log/trustd/audit.log"))
        stdout: bool = setting(boolean(), default=True)

That line is all there is of the key: its TOML name (the field's, or ``key=``), its kind (the type
the value must have, how it is checked and converted), and its default (a setting without one is
required). ``read_table`` refuses keys that are not declared, naming the close one, reads every
declared key with its kind, leaves absent keys at their defaults, fills ``derived`` fields from
where the table is (its key path, its place in an array, the file) and then runs the table's
``check_keys`` for rules between keys. Every problem is one ``ConfigError``::

    /etc/trustd/trustd.toml: notary[0].timeout: must be more than zero seconds (got 0)

A kind is any callable ``(value, where) -> field value`` that raises ``where.error(problem)`` for
a value it refuses; the functions below make the ones the config uses, and a kind of its own is
a function of that shape.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar, dataclass_transform, overload

from trustd.errors import ConfigError

T = TypeVar("T")
K = TypeVar("K")
D = TypeVar("D")
TableT = TypeVar("TableT", bound="Table")
EnumT = TypeVar("EnumT", bound=Enum)


# --- where a value is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """A value's place: the file (as messages name it), its key path (``notary[0].url``; "" for
    the document) and its index when it is an element of an array."""

    source: str
    base_dir: Path  # relative paths in the file are relative to this
    path: str = ""
    index: int | None = None

    def key(self, key: str) -> Where:
        path = f"{self.path}.{toml_key(key)}" if self.path else toml_key(key)
        return Where(self.source, self.base_dir, path)

    def item(self, index: int) -> Where:
        return Where(self.source, self.base_dir, f"{self.path}[{index}]", index)

    def error(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.path}: {problem}")

    def resolve(self, text: str) -> Path:
        """``text`` as a path: kept when absolute, else relative to the config's directory."""
        path = Path(text)
        return path if path.is_absolute() else Path(os.path.normpath(self.base_dir / path))


Kind: TypeAlias = Callable[[object, Where], T]
"""How one key's TOML value becomes its field's value; raises ``where.error(...)`` to refuse."""

Check: TypeAlias = Callable[[T], str | None]
"""A rule on an already typed value: the problem (what follows the key path), or None."""


# --- declaring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    kind: Kind[Any]
    key: str | None  # the TOML key when it is not the field's name


@dataclass(frozen=True)
class _Derived:
    value: Callable[[Where], Any]


_DECLARATION = "trustd.config.schema"  # the key of a field's metadata this module reads
_MISSING: Any = dataclasses.MISSING


# The default has a type of its own so that a key read as "Path | None" can default to a Path;
# the field's annotation still checks both.
@overload
def setting(kind: Kind[T], *, default: D, key: str | None = None) -> T | D: ...
@overload
def setting(kind: Kind[T], *, key: str | None = None) -> T: ...
def setting(kind: Kind[T], *, default: object = _MISSING, key: str | None = None) -> object:
    """A key of the table: read with ``kind``; ``default`` when absent (required without one);
    written ``key`` in the file when that differs from the field's name."""
    return field(default=default, metadata={_DECLARATION: _Setting(kind, key)})


def derived(value: Callable[[Where], T], *, default: T) -> T:
    """A field that is no key: ``value`` of where the table was read (its key path, its index in
    an array, the file); ``default`` for an object made in code."""
    declared: T = field(default=default, metadata={_DECLARATION: _Derived(value)})
    return declared


@dataclass_transform(frozen_default=True, field_specifiers=(setting, derived, field))
class Table:
    """A table of the config file; every subclass is a frozen dataclass."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    # Keys that are refused with a message of their own (before the unknown-key check), such as
    # a secret that must never be written into the file.
    REFUSED_KEYS: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(frozen=True)(cls)

    def check_keys(self, where: Where) -> None:
        """Rules between keys, run once every key is read (``where`` is this table's place):
        raise ``where.key(name).error(problem)`` at the key to change."""


def declared_keys(table: type[Table]) -> list[tuple[str, Kind[Any]]]:
    """The table's keys as written in the file, in declaration order, with their kinds."""
    keys = []
    for declared in dataclasses.fields(table):
        setting_ = declared.metadata.get(_DECLARATION)
        if isinstance(setting_, _Setting):
            keys.append((setting_.key or declared.name, setting_.kind))
    return keys


def read_table(table: type[TableT], data: Mapping[str, object], where: Where) -> TableT:
    """``table`` from the TOML table ``data`` at ``where``."""
    for key, problem in table.REFUSED_KEYS.items():
        if key in data:
            raise where.key(key).error(problem)
    known = [key for key, _ in declared_keys(table)]
    for key in data:
        if key not in known:
            import difflib  # only for this message; `trustctl` starts quicker without it

            close = difflib.get_close_matches(key, known, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise where.key(key).error(f"unknown key (known: {', '.join(known)}){hint}")
    values: dict[str, Any] = {}
    for declared in dataclasses.fields(table):
        declaration = declared.metadata.get(_DECLARATION)
        if isinstance(declaration, _Setting):
            key = declaration.key or declared.name
            if key in data:
                values[declared.name] = declaration.kind(data[key], where.key(key))
            elif declared.default is _MISSING and declared.default_factory is _MISSING:
                raise where.key(key).error("is required")
        elif isinstance(declaration, _Derived):
            values[declared.name] = declaration.value(where)
    make: Callable[..., TableT] = table
    result = make(**values)
    result.check_keys(where)
    return result


# --- kinds: tables --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableKind(Generic[TableT]):
    """A nested table (``[server]``); see ``table``."""

    table: type[TableT]

    def __call__(self, value: object, where: Where) -> TableT:
        if not isinstance(value, dict):
            raise where.error(f"must be a table (got {show(value)})")
        return read_table(self.table, value, where)


@dataclass(frozen=True)
class TablesKind(Generic[TableT]):
    """An array of tables (``[[notary]]``); see ``tables``."""

    table: type[TableT]
    unique: str | None = None

    def __call__(self, value: object, where: Where) -> tuple[TableT, ...]:
        if not isinstance(value, list):
            header = re.sub(r"\[\d+\]", "", where.path)
            raise where.error(f"must be an array of tables, written [[{header}]]")
        entries: list[TableT] = []
        first: dict[object, int] = {}
        for position, item in enumerate(value):
            if not isinstance(item, dict):
                raise where.item(position).error(f"must be a table (got {show(item)})")
            entry = read_table(self.table, item, where.item(position))
            if self.unique is not None:
                key_value = _key_value(entry, self.unique)
                if key_value in first:
                    raise (
                        where.item(position)
                        .key(self.unique)
                        .error(
                            f"{show(key_value)} is already configured in "
                            f"{where.item(first[key_value]).path}"
                        )
                    )
                first[key_value] = position
            entries.append(entry)
        return tuple(entries)


def table(table_: type[TableT]) -> TableKind[TableT]:
    """A table (``[name]``), read as declared by ``table_``."""
    return TableKind(table_)


def tables(table_: type[TableT], *, unique: str | None = None) -> TablesKind[TableT]:
    """An array of tables (``[[name]]``), each read as declared by ``table_``; with ``unique``,
    no two entries may have the same value of that key."""
    return TablesKind(table_, unique)


def _key_value(entry: Table, key: str) -> object:
    for declared in dataclasses.fields(entry):
        declaration = declared.metadata.get(_DECLARATION)
        if isinstance(declaration, _Setting) and (declaration.key or declared.name) == key:
            return getattr(entry, declared.name)
    raise AssertionError(f"{type(entry).__name__} declares no key {key!r}")


def mapping(key: Callable[[str], K], value: Kind[T]) -> Kind[tuple[tuple[K, T], ...]]:
    """A table whose keys are the operator's (``[trust_pinning.ca]``: GUN prefix -> file), as
    (key, value) pairs in file order; ``key`` turns each key into its value, raising
    ``ValueError`` whose message is the problem."""

    def read(data: object, where: Where) -> tuple[tuple[K, T], ...]:
        if not isinstance(data, dict):
            raise where.error(f"must be a table (got {show(data)})")
        pairs: list[tuple[K, T]] = []
        for name, item in data.items():
            try:
                parsed = key(name)
            except ValueError as error:
                raise where.key(name).error(str(error)) from None
            pairs.append((parsed, value(item, where.key(name))))
        return tuple(pairs)

    return read


def walk_tables(table_: type[Table], path: str = "") -> Iterator[tuple[str, type[Table]]]:
    """``(key path, table)`` of ``table_`` and of every table declared below it; arrays of tables
    are named without an index (``notary``)."""
    yield path, table_
    for key, kind in declared_keys(table_):
        if isinstance(kind, TableKind | TablesKind):
            yield from walk_tables(kind.table, f"{path}.{key}" if path else key)


# --- kinds: scalars -------------------------------------------------------------------------------


def _typed(value: object, where: Where, expected: type | tuple[type, ...], what: str) -> Any:
    """``value`` when it is of the ``expected`` TOML type (``what``, for the message)."""
    wanted = expected if isinstance(expected, tuple) else (expected,)
    if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
        raise where.error(f"must be {what} (got {show(value)})")
    return value


def _checked(check: Check[T] | None, value: T, where: Where) -> T:
    problem = check(value) if check is not None else None
    if problem is not None:
        raise where.error(problem)
    return value


def string(*, empty: bool = True, check: Check[str] | None = None) -> Kind[str]:
    """A string; ``empty=False`` refuses ""."""

    def read(value: object, where: Where) -> str:
        text: str = _typed(value, where, str, "a string")
        if not empty and not text:
            raise where.error("must not be empty")
        return _checked(check, text, where)

    return read


def parsed(parse: Callable[[str], T]) -> Kind[T]:
    """A string made into a value by ``parse``, whose ``ValueError`` message is the problem."""

    def read(value: object, where: Where) -> T:
        text: str = _typed(value, where, str, "a string")
        try:
            return parse(text)
        except ValueError as error:
            raise where.error(str(error)) from None

    return read


def accepted_by(parse: Callable[[str], object]) -> Check[str]:
    """A check that ``parse`` takes the string: the message of its ``ValueError`` otherwise."""

    def check(text: str) -> str | None:
        try:
            parse(text)
        except ValueError as error:
            return str(error)
        return None

    return check


def choice(enum: type[EnumT]) -> Kind[EnumT]:
    """One of the string values of ``enum``."""

    def read(value: object, where: Where) -> EnumT:
        text: str = _typed(value, where, str, "a string")
        for member in enum:
            if member.value == text:
                return member
        choices = ", ".join(json.dumps(member.value) for member in enum)
        raise where.error(f"must be one of {choices} (got {show(text)})")

    return read


def boolean() -> Kind[bool]:
    def read(value: object, where: Where) -> bool:
        result: bool = _typed(value, where, bool, "true or false")
        return result

    return read


def integer(*, check: Check[int] | None = None) -> Kind[int]:
    def read(value: object, where: Where) -> int:
        number: int = _typed(value, where, int, "an integer")
        return _checked(check, number, where)

    return read


def within(low: int, high: int) -> Check[int]:
    """A check for ``integer``: from ``low`` to ``high``, both included."""

    def check(number: int) -> str | None:
        return None if low <= number <= high else f"must be from {low} to {high} (got {number})"

    return check


def seconds(
    *, zero: bool = False, at_most: float | None = None, because: str | None = None
) -> Kind[float]:
    """A duration in seconds, integer or float: more than zero (``zero=True``: or zero), finite,
    and at most ``at_most`` when given (``because`` says why, after the limit)."""

    def read(value: object, where: Where) -> float:
        given: float = _typed(value, where, (int, float), "a number of seconds")
        try:
            number = float(given)
        except OverflowError:  # an integer of hundreds of digits: as good as infinite
            number = math.inf
        if not (number >= 0 if zero else number > 0) or number == math.inf:
            bound = "zero or more" if zero else "more than zero"
            raise where.error(f"must be {bound} seconds (got {show(value)})")
        if at_most is not None and number > at_most:
            reason = f": {because}" if because else ""
            raise where.error(f"must be at most {at_most:g} seconds{reason} (got {show(value)})")
        return number

    return read


def byte_count() -> Kind[int]:
    """A size in bytes: an integer, more than zero."""

    def read(value: object, where: Where) -> int:
        number: int = _typed(value, where, int, "a number of bytes")
        if number <= 0:
            raise where.error(f"must be more than zero bytes (got {number})")
        return number

    return read


def file_mode() -> Kind[int]:
    """Permission bits written as a string of octal digits (``"0660"``): a TOML number would be
    read as decimal."""

    def read(value: object, where: Where) -> int:
        if not isinstance(value, str):
            raise where.error(
                f'must be a string of octal digits such as "0660" (got {show(value)}; a TOML '
                "number would be read as decimal)"
            )
        if not re.fullmatch(r"0?[0-7]{3}", value):
            raise where.error(f'must be octal permission bits such as "0660" (got {show(value)})')
        return int(value, 8)

    return read


# --- kinds: paths ---------------------------------------------------------------------------------


def path() -> Kind[Path]:
    """A path, relative to the config's directory unless absolute; not empty."""

    def read(value: object, where: Where) -> Path:
        text: str = _typed(value, where, str, "a path")
        if not text:
            raise where.error("must not be empty")
        return where.resolve(text)

    return read


def path_or_none() -> Kind[Path | None]:
    """A path as ``path`` reads it, or "" for none (the thing it names is turned off)."""

    def read(value: object, where: Where) -> Path | None:
        text: str = _typed(value, where, str, "a string")
        return where.resolve(text) if text else None

    return read


def existing_file() -> Kind[Path]:
    """A path (as ``path``) of a file that exists when the config is loaded."""

    def read(value: object, where: Where) -> Path:
        text: str = _typed(value, where, str, "a path")
        if not text:
            raise where.error("must not be empty (leave the key out instead)")
        resolved = where.resolve(text)
        if not resolved.is_file():
            relative = "" if Path(text).is_absolute() else f" (relative to {where.base_dir})"
            raise where.error(f"file {resolved} does not exist{relative}")
        return resolved

    return read


# --- kinds: arrays --------------------------------------------------------------------------------


def string_list(
    item: Kind[T], *, at_least_one: str | None = None, unique: bool = False
) -> Kind[tuple[T, ...]]:
    """An array of strings, each read with ``item`` (``string()`` for any string) at its index;
    ``at_least_one`` is the problem of an empty array (allowed without it); ``unique`` refuses
    a string listed twice."""

    def read(value: object, where: Where) -> tuple[T, ...]:
        values: list[object] = _typed(value, where, list, "an array of strings")
        if not values and at_least_one is not None:
            raise where.error(at_least_one)
        items: list[T] = []
        seen: set[object] = set()
        for position, element in enumerate(values):
            items.append(item(element, where.item(position)))
            if unique:
                if element in seen:
                    raise where.item(position).error(f"{show(element)} is listed twice")
                seen.add(element)
        return tuple(items)

    return read


# --- how keys and values are shown in messages ----------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    """A key as written in a TOML key path: bare when it can be, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def show(value: object) -> str:
    """A value as TOML would write it, for "(got ...)"; tables and arrays by kind only."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value[:200] + ("..." if len(value) > 200 else ""))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"  # dates and times
