"""A strict, bounded CBOR (RFC 8949) decoder for COSE_Sign1 envelopes, and the small encoder the
COSE ``Sig_structure`` needs.

The decoder accepts every major type with definite lengths and refuses what a signature envelope
never needs and an attacker could use: indefinite lengths, reserved additional-information
values, nesting deeper than ``max_depth``, more than ``max_items`` data items, duplicate or
non-scalar map keys, invalid UTF-8 in text strings and trailing bytes. Every length is checked
against the bytes actually left before anything is allocated. Anything malformed raises
``CborError``.

Decoded values: unsigned and negative integers as ``int``, byte strings as ``bytes``, text as
``str``, arrays as ``list``, maps as ``dict``, tags as ``Tag``, ``false``/``true``/``null`` as
``False``/``True``/``None``, floats as ``float`` and any other simple value as ``Simple``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

MAX_DEPTH: Final = 16
MAX_ITEMS: Final = 100_000

_UINT: Final = 0
_NEGINT: Final = 1
_BYTES: Final = 2
_TEXT: Final = 3
_ARRAY: Final = 4
_MAP: Final = 5
_TAG: Final = 6
_SIMPLE: Final = 7

_INDEFINITE: Final = 31


class CborError(ValueError):
    """Bytes that are not one well-formed CBOR data item within the decoder's limits."""


@dataclass(frozen=True)
class Tag:
    """A tagged data item (major type 6)."""

    number: int
    value: CborValue


@dataclass(frozen=True)
class Simple:
    """A simple value other than false, true and null (``undefined`` is ``Simple(23)``)."""

    value: int


# Map keys are kept to types that cannot collide in a Python dict (True == 1 == 1.0 would).
CborKey: TypeAlias = int | str | bytes
CborValue: TypeAlias = (
    int
    | bytes
    | str
    | bool
    | float
    | list["CborValue"]
    | dict[CborKey, "CborValue"]
    | Tag
    | Simple
    | None
)


def decode(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> CborValue:
    """The single CBOR data item ``data`` holds; CborError if it holds anything else."""
    decoder = _Decoder(bytes(data), max_depth, max_items)
    value = decoder.item(0)
    if decoder.pos != len(decoder.data):
        raise CborError(f"{len(decoder.data) - decoder.pos} trailing bytes after the CBOR item")
    return value


class _Decoder:
    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.items_left = max_items

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if count < 0 or end > len(self.data):
            raise CborError(
                f"CBOR item at offset {self.pos} needs {count} bytes, "
                f"{len(self.data) - self.pos} are left"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def argument(self, info: int) -> int:
        if info < 24:
            return info
        if info == 24:
            return self.take(1)[0]
        if info == 25:
            return int.from_bytes(self.take(2), "big")
        if info == 26:
            return int.from_bytes(self.take(4), "big")
        if info == 27:
            return int.from_bytes(self.take(8), "big")
        if info == _INDEFINITE:
            raise CborError(f"indefinite-length CBOR item at offset {self.pos - 1} is not accepted")
        raise CborError(f"reserved CBOR additional information {info} at offset {self.pos - 1}")

    def item(self, depth: int) -> CborValue:
        if depth > self.max_depth:
            raise CborError(f"CBOR nesting deeper than {self.max_depth} levels")
        self.items_left -= 1
        if self.items_left < 0:
            raise CborError("too many CBOR data items")
        start = self.pos
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == _SIMPLE:
            return self.simple(info, start)
        value = self.argument(info)
        if major == _UINT:
            return value
        if major == _NEGINT:
            return -1 - value
        if major == _BYTES:
            return self.take(value)
        if major == _TEXT:
            raw = self.take(value)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CborError(f"CBOR text string at offset {start} is not UTF-8") from None
        if major == _ARRAY:
            self.check_count(value, start)
            return [self.item(depth + 1) for _ in range(value)]
        if major == _MAP:
            self.check_count(2 * value, start)
            result: dict[CborKey, CborValue] = {}
            for _ in range(value):
                key_offset = self.pos
                key = self.item(depth + 1)
                if isinstance(key, bool) or not isinstance(key, int | str | bytes):
                    raise CborError(f"CBOR map key at offset {key_offset} is not an int or string")
                if key in result:
                    raise CborError(f"duplicate CBOR map key {key!r} at offset {key_offset}")
                result[key] = self.item(depth + 1)
            return result
        # major type 6: a tag and the one item it applies to
        return Tag(value, self.item(depth + 1))

    def check_count(self, count: int, start: int) -> None:
        # Every item takes at least one byte: a count beyond the bytes left is malformed, and
        # refusing it here keeps a huge claimed length from costing anything.
        if count > len(self.data) - self.pos:
            raise CborError(f"CBOR container at offset {start} claims more items than bytes left")

    def simple(self, info: int, start: int) -> CborValue:
        if info < 20:
            return Simple(info)
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 23:
            return Simple(23)
        if info == 24:
            value = self.take(1)[0]
            if value < 32:
                raise CborError(f"badly encoded CBOR simple value {value} at offset {start}")
            return Simple(value)
        if info == 25:
            return float(struct.unpack(">e", self.take(2))[0])
        if info == 26:
            return float(struct.unpack(">f", self.take(4))[0])
        if info == 27:
            return float(struct.unpack(">d", self.take(8))[0])
        if info == _INDEFINITE:
            raise CborError(f"unexpected CBOR break at offset {start}")
        raise CborError(f"reserved CBOR additional information {info} at offset {start}")


# --- encoding: only what the COSE Sig_structure is made of -------------------------------------

Encodable: TypeAlias = bytes | str | Sequence["Encodable"]


def encode(value: Encodable) -> bytes:
    """The CBOR encoding (definite, shortest lengths) of a byte string, a text string or an
    array of those."""
    if isinstance(value, bytes):
        return _head(_BYTES, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(_TEXT, len(raw)) + raw
    parts = [encode(element) for element in value]
    return _head(_ARRAY, len(parts)) + b"".join(parts)


def _head(major: int, argument: int) -> bytes:
    if argument < 24:
        return bytes([major << 5 | argument])
    if argument < 1 << 8:
        return bytes([major << 5 | 24]) + argument.to_bytes(1, "big")
    if argument < 1 << 16:
        return bytes([major << 5 | 25]) + argument.to_bytes(2, "big")
    if argument < 1 << 32:
        return bytes([major << 5 | 26]) + argument.to_bytes(4, "big")
    return bytes([major << 5 | 27]) + argument.to_bytes(8, "big")
