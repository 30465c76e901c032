"""Canonical JSON exactly as notary signs and verifies it.

Notary (Go, ``github.com/docker/go/canonical/json``) verifies a signature over
``MarshalCanonical(decoded signed object)``. That encoder sorts object keys by their bytes, writes
no whitespace, escapes only ``\\`` and ``"`` inside strings and writes every other character as its
raw UTF-8 bytes: no ``\\u003c`` for ``<``, no escaping of U+2028, control characters written raw.
This was checked against a real notary 0.7.0 repository whose target name contains ``<&>``, U+2028
and ``é`` (see tests/data/notary/README.md); the HTML-escaping form does NOT verify there.

Numbers are integers only: notary rejects non-integral numbers in canonical form, and trustd
rejects floats altogether because no notary file contains one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Go decodes a lone UTF-16 surrogate escape (e.g. "\ud800") to U+FFFD; Python keeps the surrogate.
_REPLACEMENT = "\ufffd"


class CanonicalEncodingError(ValueError):
    """A value that has no canonical JSON form (a float, a non-string key, an unknown type)."""


def encode_canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (dicts, lists, str, int, bool, None)."""
    parts: list[bytes] = []
    _encode(obj, parts)
    return b"".join(parts)


def _encode(obj: Any, out: list[bytes]) -> None:
    # bool before int: bool is a subclass of int in Python.
    if obj is None:
        out.append(b"null")
    elif obj is True:
        out.append(b"true")
    elif obj is False:
        out.append(b"false")
    elif isinstance(obj, int):
        out.append(str(int(obj)).encode("ascii"))
    elif isinstance(obj, float):
        raise CanonicalEncodingError(f"floating point number {obj!r} has no canonical form")
    elif isinstance(obj, str):
        out.append(_encode_string(obj))
    elif isinstance(obj, Mapping):
        _encode_object(obj, out)
    elif isinstance(obj, Sequence) and not isinstance(obj, bytes | bytearray):
        out.append(b"[")
        for index, item in enumerate(obj):
            if index:
                out.append(b",")
            _encode(item, out)
        out.append(b"]")
    else:
        raise CanonicalEncodingError(f"{type(obj).__name__} has no canonical JSON form")


def _encode_object(obj: Mapping[Any, Any], out: list[bytes]) -> None:
    encoded: list[tuple[bytes, Any]] = []
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CanonicalEncodingError(f"object key {key!r} is not a string")
        encoded.append((_utf8(key), value))
    # Go sorts map keys as strings, i.e. by their UTF-8 bytes.
    encoded.sort(key=lambda item: item[0])
    out.append(b"{")
    for index, (key_bytes, value) in enumerate(encoded):
        if index:
            out.append(b",")
        out.append(_quote(key_bytes))
        out.append(b":")
        _encode(value, out)
    out.append(b"}")


def _encode_string(text: str) -> bytes:
    return _quote(_utf8(text))


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        cleaned = "".join(_REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
        return cleaned.encode("utf-8")


def _quote(raw: bytes) -> bytes:
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
