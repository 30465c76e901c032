import base64
import json
from pathlib import Path

import pytest

from tests.unit import notary_factory as f
from trustd.errors import BadMetadata, BadSignature, UnsupportedKey
from trustd.formats.notary.keys import canonical_key_id, key_id, load_public_key, verify_signature

FIXTURES = Path(__file__).parent.parent / "data" / "notary"


def _fixture_keys() -> dict[str, dict]:
    root = json.loads((FIXTURES / "root.json").read_bytes())["signed"]["keys"]
    targets = json.loads((FIXTURES / "targets.json").read_bytes())["signed"]
    return {**root, **targets["delegations"]["keys"]}


def test_key_ids_recomputed_equal_the_ids_in_the_real_files() -> None:
    for declared, entry in _fixture_keys().items():
        assert key_id(entry["keytype"], entry["keyval"]["public"]) == declared


def test_canonical_ids_of_x509_keys_are_the_cli_private_key_file_names() -> None:
    files = (FIXTURES / "private_key_files.txt").read_text().split()
    names = {name.removesuffix(".key") for name in files}
    x509_keys = [
        load_public_key(e["keytype"], e["keyval"]["public"], k)
        for k, e in _fixture_keys().items()
        if e["keytype"].endswith("-x509")
    ]
    assert len(x509_keys) == 2  # the root certificate and the targets/releases certificate
    for key in x509_keys:
        assert key.certificate is not None
        assert canonical_key_id(key) != key.key_id
        assert canonical_key_id(key) in names


def test_declared_id_must_match_content() -> None:
    key = f.ecdsa_key()
    with pytest.raises(BadMetadata, match="does not match"):
        load_public_key("ecdsa", key.public_b64, "0" * 64)


def test_unknown_key_type_names_id_and_type() -> None:
    with pytest.raises(UnsupportedKey, match="'dsa'"):
        load_public_key("dsa", base64.b64encode(b"x").decode(), "ab" * 32)


def test_key_material_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(BadMetadata):
        load_public_key("rsa", f.ecdsa_key().public_b64)


@pytest.mark.parametrize(
    "make", [f.ecdsa_key, f.ed25519_key, f.rsa_key, lambda: f.rsa_key("rsapkcs1v15"), f.x509_key]
)
def test_each_key_type_verifies_and_rejects_a_tampered_message(make) -> None:
    test_key = make()
    key = load_public_key(test_key.key_type, test_key.public_b64)
    signature = test_key.sign(b"message")
    verify_signature(key, test_key.method, signature, b"message")
    with pytest.raises(BadSignature, match="bad signature"):
        verify_signature(key, test_key.method, signature, b"messagf")


def test_rsa_x509_key_verifies() -> None:
    test_key = f.x509_key(rsa_bits=2048)
    key = load_public_key("rsa-x509", test_key.public_b64)
    verify_signature(key, "rsapss", test_key.sign(b"m"), b"m")


def test_method_not_matching_key_type_names_both() -> None:
    test_key = f.ecdsa_key()
    key = load_public_key("ecdsa", test_key.public_b64)
    with pytest.raises(BadSignature, match="'eddsa' does not match key type 'ecdsa'"):
        verify_signature(key, "eddsa", test_key.sign(b"m"), b"m")


def test_unknown_method_is_unsupported() -> None:
    key = load_public_key("ed25519", f.ed25519_key().public_b64)
    with pytest.raises(UnsupportedKey, match="'hmac'"):
        verify_signature(key, "hmac", b"x" * 64, b"m")


def test_ecdsa_signature_must_be_raw_r_s_of_curve_length() -> None:
    test_key = f.ecdsa_key()
    key = load_public_key("ecdsa", test_key.public_b64)
    with pytest.raises(BadSignature, match="64 bytes"):
        verify_signature(key, "ecdsa", test_key.sign(b"m")[:63], b"m")


def test_small_rsa_keys_are_refused() -> None:
    test_key = f.rsa_key(bits=1024)
    key = load_public_key("rsa", test_key.public_b64)
    with pytest.raises(BadSignature, match="2048"):
        verify_signature(key, "rsapss", test_key.sign(b"m"), b"m")
