"""JSON read strictly: UTF-8 only, no duplicate object keys (two readers could pick different
values), no NaN or Infinity, and nesting that cannot exhaust the interpreter's stack."""

from __future__ import annotations

import json
from typing import Any


class JsonError(ValueError):
    """Bytes that are not strict JSON; the message says what was wrong."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise JsonError(f"{name} is not JSON")


def loads(data: bytes) -> Any:
    """The JSON value ``data`` holds; JsonError if it is not strict UTF-8 JSON."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonError("not UTF-8") from None
    if text.startswith("\ufeff"):
        raise JsonError("starts with a byte order mark")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except JsonError:
        raise
    except RecursionError:
        raise JsonError("nested too deeply") from None
    except ValueError as error:
        raise JsonError(str(error)) from None
