"""The strict CBOR decoder and the Sig_structure encoder."""

from __future__ import annotations

import pytest

from tests.unit.formats.notation_factory import CborTag, cbor
from trustd.formats.notation.cbor import CborError, Simple, Tag, decode, encode


@pytest.mark.parametrize(
    ("hex_data", "value"),
    [
        ("00", 0),
        ("17", 23),
        ("1818", 24),
        ("1903e8", 1000),
        ("1a000f4240", 1000000),
        ("1b000000e8d4a51000", 1000000000000),
        ("20", -1),
        ("3863", -100),
        ("3bffffffffffffffff", -18446744073709551616),
        ("40", b""),
        ("4401020304", b"\x01\x02\x03\x04"),
        ("60", ""),
        ("62c3bc", "ü"),
        ("80", []),
        ("83010203", [1, 2, 3]),
        ("a201020304", {1: 2, 3: 4}),
        ("a26161016162820203", {"a": 1, "b": [2, 3]}),
        ("c11a514b67b0", Tag(1, 1363896240)),
        ("f4", False),
        ("f5", True),
        ("f6", None),
        ("f7", Simple(23)),
        ("f0", Simple(16)),
        ("f8ff", Simple(255)),
        ("f93c00", 1.0),
        ("fa47c35000", 100000.0),
        ("fb3ff199999999999a", 1.1),
    ],
)
def test_rfc8949_examples_decode(hex_data: str, value: object) -> None:
    assert decode(bytes.fromhex(hex_data)) == value


def test_cose_sign1_example_decodes() -> None:
    # RFC 9052 appendix C.2.1, a COSE_Sign1 with an ES256 signature.
    message = bytes.fromhex(
        "d28443a10126a10442313154546869732069732074686520636f6e74656e742e5840"
        "8eb33e4ca31d1c465ab05aac34cc6b23d58fef5c083106c4d25a91aef0b0117e2af9"
        "a291aa32e14ab834dc56ed2a223444547e01f11d3b0916e5a4c345cacb36"
    )
    decoded = decode(message)
    assert isinstance(decoded, Tag) and decoded.number == 18
    assert isinstance(decoded.value, list)
    protected, unprotected, payload, signature = decoded.value
    assert protected == b"\xa1\x01\x26"
    assert unprotected == {4: b"11"}
    assert payload == b"This is the content."
    assert isinstance(signature, bytes) and len(signature) == 64


@pytest.mark.parametrize(
    ("hex_data", "reason"),
    [
        ("", "bytes"),
        ("18", "bytes"),
        ("5f4101ff", "indefinite"),  # indefinite byte string
        ("9f01ff", "indefinite"),  # indefinite array
        ("bf0101ff", "indefinite"),
        ("ff", "break"),
        ("1c", "reserved"),
        ("f818", "badly encoded"),
        ("0000", "trailing"),
        ("62c3", "bytes"),  # text string shorter than its length
        ("62c328", "UTF-8"),
        ("a20102 0103".replace(" ", ""), "duplicate"),
        ("a1810102", "not an int or string"),  # array as a map key
        ("a1f501", "not an int or string"),  # true as a map key (would collide with 1)
        ("5bffffffffffffffff", "bytes"),  # a huge length claim
        ("9bffffffffffffffff", "more items"),
        ("bb7fffffffffffffff", "more items"),
    ],
)
def test_malformed_cbor_is_refused(hex_data: str, reason: str) -> None:
    with pytest.raises(CborError, match=reason):
        decode(bytes.fromhex(hex_data))


def test_nesting_is_limited() -> None:
    decode(b"\x81" * 16 + b"\x00")
    with pytest.raises(CborError, match="deeper"):
        decode(b"\x81" * 17 + b"\x00")
    with pytest.raises(CborError, match="deeper"):
        decode(b"\xc1" * 100_000 + b"\x00")  # tags nest too


def test_item_count_is_limited() -> None:
    many = cbor(list(range(1000)))
    assert decode(many, max_items=1001) == list(range(1000))
    with pytest.raises(CborError, match="too many"):
        decode(many, max_items=1000)


def test_text_and_bytes_keys_do_not_collide() -> None:
    assert decode(cbor({"a": 1, b"a": 2, 1: 3})) == {"a": 1, b"a": 2, 1: 3}


def test_round_trip_of_the_test_encoder() -> None:
    value = {1: -37, 2: ["io.cncf.notary.signingScheme"], "x": CborTag(1, 1700000000)}
    decoded = decode(cbor(value))
    assert decoded == {1: -37, 2: ["io.cncf.notary.signingScheme"], "x": Tag(1, 1700000000)}


@pytest.mark.parametrize("size", [0, 23, 24, 255, 256, 65535, 65536])
def test_encoder_uses_shortest_lengths(size: int) -> None:
    data = b"\x01" * size
    assert encode(data) == cbor(data)
    assert encode("é" * size) == cbor("é" * size)
    assert decode(encode(data)) == data


def test_sig_structure_encoding() -> None:
    encoded = encode(["Signature1", b"\xa1\x01\x26", b"", b"payload"])
    assert encoded == bytes.fromhex("846a5369676e61747572653143a101264047") + b"payload"
    assert decode(encoded) == ["Signature1", b"\xa1\x01\x26", b"", b"payload"]
