"""Strict JSON reading shared by the cosign parsers.

Signature material is attacker-controlled, so parsing refuses everything a lenient parser would
quietly resolve: duplicate keys (two parsers could pick different values), NaN and Infinity,
non-UTF-8 text, and nesting deep enough to exhaust the interpreter's stack.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any, NoReturn

from trustd.errors import TrustError

# Larger than any cosign payload or bundle (they are a few KiB); a cap, not an expectation.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024

_STD_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_URL_B64 = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes, what: str, error: type[TrustError]) -> Any:
    """``data`` parsed as strict JSON; ``error(...)`` naming ``what`` if it is not."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise error(f"{what} is {len(data)} bytes, more than the {MAX_DOCUMENT_BYTES} allowed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise error(f"{what} has the key {exc.args[0]!r} more than once") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None


def expect_object(value: Any, what: str, error: type[TrustError]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object, not {_kind(value)}")
    return value


def expect_keys(
    value: dict[str, Any],
    what: str,
    error: type[TrustError],
    *,
    required: Iterable[str] = (),
    optional: Iterable[str] = (),
) -> None:
    """Every ``required`` key present and no key outside ``required`` and ``optional``."""
    required = tuple(required)
    allowed = set(required) | set(optional)
    missing = [key for key in required if key not in value]
    if missing:
        raise error(f"{what} has no {', '.join(repr(k) for k in missing)}")
    unknown = sorted(key for key in value if key not in allowed)
    if unknown:
        raise error(f"{what} has unknown field(s) {', '.join(repr(k) for k in unknown)}")


def expect_string(value: Any, what: str, error: type[TrustError]) -> str:
    if not isinstance(value, str):
        raise error(f"{what} must be a string, not {_kind(value)}")
    return value


def expect_list(value: Any, what: str, error: type[TrustError]) -> list[Any]:
    if not isinstance(value, list):
        raise error(f"{what} must be a JSON array, not {_kind(value)}")
    return value


def std_b64decode(value: str, what: str, error: type[TrustError]) -> bytes:
    """Standard base64 with padding, as cosign writes its signature annotation."""
    if not _STD_B64.match(value) or len(value) % 4:
        raise error(f"{what} is not standard padded base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not standard padded base64") from None


def any_b64decode(value: str, what: str, error: type[TrustError]) -> bytes:
    """Standard or URL-safe base64, padding optional: what DSSE and protobuf JSON allow."""
    if _STD_B64.match(value):
        alphabet = b"+/"
    elif _URL_B64.match(value):
        alphabet = b"-_"
    else:
        raise error(f"{what} is not base64")
    stripped = value.rstrip("=")
    if len(stripped) % 4 == 1 or (value != stripped and len(value) % 4):
        raise error(f"{what} is not base64 (bad length or padding)")
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not base64") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
