import base64
import json
from pathlib import Path

import pytest

from trustd.formats.notary.canonical import CanonicalEncodingError, encode_canonical
from trustd.formats.notary.keys import load_public_key, verify_signature

FIXTURES = Path(__file__).parent.parent / "data" / "notary"
ROLES = ("root", "timestamp", "snapshot", "targets", "targets/releases")


def test_sorted_keys_by_bytes_and_no_whitespace() -> None:
    assert encode_canonical({"b": 1, "a": [True, None, "x"], "B": {}}) == (
        b'{"B":{},"a":[true,null,"x"],"b":1}'
    )
    # "é" (0xC3 0xA9) sorts after "z" by UTF-8 bytes.
    assert encode_canonical({"é": 1, "z": 2}) == '{"z":2,"é":1}'.encode()


def test_strings_escape_only_quote_and_backslash_like_notary() -> None:
    value = 'a"b\\c<&>\u2028é\n'
    assert encode_canonical(value) == b'"a\\"b\\\\c<&>' + "\u2028é\n".encode() + b'"'


def test_lone_surrogate_becomes_replacement_character_as_in_go() -> None:
    assert encode_canonical("\ud800") == '"\ufffd"'.encode()


@pytest.mark.parametrize("value", [1.5, 1.0, {1: "x"}, b"bytes", object()])
def test_values_without_canonical_form_are_rejected(value: object) -> None:
    with pytest.raises(CanonicalEncodingError):
        encode_canonical(value)


@pytest.mark.parametrize("role", ROLES)
def test_real_fixture_signatures_verify_over_the_canonical_form(role: str) -> None:
    document = json.loads((FIXTURES / f"{role}.json").read_bytes())
    root = json.loads((FIXTURES / "root.json").read_bytes())["signed"]
    targets = json.loads((FIXTURES / "targets.json").read_bytes())["signed"]
    keys = targets["delegations"]["keys"] if role.startswith("targets/") else root["keys"]
    message = encode_canonical(document["signed"])
    for signature in document["signatures"]:
        entry = keys[signature["keyid"]]
        key = load_public_key(entry["keytype"], entry["keyval"]["public"], signature["keyid"])
        verify_signature(key, signature["method"], base64.b64decode(signature["sig"]), message)


def test_real_target_name_with_html_characters_is_signed_unescaped() -> None:
    signed = json.loads((FIXTURES / "targets.json").read_bytes())["signed"]
    assert "odd<&>\u2028café" in signed["targets"]
    assert "odd<&>\u2028café".encode() in encode_canonical(signed)
