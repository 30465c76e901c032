"""cosign public keys: loading, key IDs and verification under the schemes cosign signs with."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from tests.unit.formats import cosign_factory as f
from trustd.formats.cosign import _ed25519ph
from trustd.formats.cosign.errors import CosignKeyError
from trustd.formats.cosign.keys import public_key_from_der, public_key_from_pem
from trustd.formats.cosign.loader import load_public_key_file, load_public_key_files

MESSAGE = b'{"critical":{}}'


def test_key_id_is_sha256_of_spki_and_hint_its_base64() -> None:
    signer = f.ecdsa_signer()
    key = signer.public
    spki = signer.private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.key_id == hashlib.sha256(spki).hexdigest()
    assert key.hint == base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert key.short_id == key.key_id[:12]
    assert key.algorithm == "ecdsa-p256"
    assert public_key_from_der(spki, "der").key_id == key.key_id
    assert "p256.pub" in key.describe()


@pytest.mark.parametrize(
    ("curve", "label", "hash_name"),
    [
        (ec.SECP256R1(), "ecdsa-p256", "sha256"),
        (ec.SECP384R1(), "ecdsa-p384", "sha256"),  # cosign up to 2.5
        (ec.SECP384R1(), "ecdsa-p384", "sha384"),  # cosign 2.6 and later
        (ec.SECP521R1(), "ecdsa-p521", "sha256"),
        (ec.SECP521R1(), "ecdsa-p521", "sha512"),
    ],
)
def test_ecdsa_hashes_cosign_signs_with(
    curve: ec.EllipticCurve, label: str, hash_name: str
) -> None:
    signer = f.Signer(ec.generate_private_key(curve), "k.pub", hash_name)
    key = signer.public
    assert key.algorithm == label
    signature = signer.sign(MESSAGE)
    assert key.verify(signature, MESSAGE) == f"ecdsa-{hash_name}"
    assert key.verify(signature, MESSAGE + b" ") is None


def test_p256_refuses_a_sha384_signature() -> None:
    signer = f.Signer(ec.generate_private_key(ec.SECP256R1()), "k.pub", "sha384")
    assert signer.public.verify(signer.sign(MESSAGE), MESSAGE) is None


def test_ecdsa_signature_must_be_der() -> None:
    signer = f.ecdsa_signer()
    der = signer.sign(MESSAGE)
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert signer.public.verify(raw, MESSAGE) is None
    assert signer.public.verify(der + b"\x00", MESSAGE) is None


def test_rsa_pkcs1v15_sha256_only() -> None:
    signer = f.rsa_signer()
    key = signer.public
    assert key.algorithm == "rsa-2048"
    assert key.verify(signer.sign(MESSAGE), MESSAGE) == "rsa-pkcs1v15-sha256"
    pss = signer.private.sign(  # type: ignore[union-attr]
        MESSAGE,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    assert key.verify(pss, MESSAGE) is None
    sha512 = signer.private.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA512())  # type: ignore[union-attr]
    assert key.verify(sha512, MESSAGE) is None


def test_ed25519_plain() -> None:
    signer = f.ed25519_signer()
    assert signer.public.verify(signer.sign(MESSAGE), MESSAGE) == "ed25519"
    assert signer.public.verify(signer.sign(MESSAGE), MESSAGE + b"x") is None


def test_ed25519ph_rfc8032_vector() -> None:
    # RFC 8032 section 7.3, test "abc".
    public = bytes.fromhex("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf")
    signature = bytes.fromhex(
        "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41"
        "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406"
    )
    pem = (
        b"-----BEGIN PUBLIC KEY-----\n"
        + base64.b64encode(bytes.fromhex("302a300506032b6570032100") + public)
        + b"\n-----END PUBLIC KEY-----\n"
    )
    key = public_key_from_pem(pem, "rfc8032")
    assert key.verify(signature, b"abc") == "ed25519ph"
    assert key.verify(signature, b"abd") is None
    # S at or above the group order is refused (malleability).
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(signature[32:], "little") + order
    assert (
        _ed25519ph.verify_prehashed(public, signature[:32] + s.to_bytes(32, "little"), b"abc")
        is False
    )


def test_ed25519ph_arithmetic_agrees_with_plain_ed25519() -> None:
    # The hand-written curve arithmetic, run in plain mode against cryptography's signatures.
    for size in (0, 1, 64, 1000):
        signer = f.ed25519_signer()
        raw = signer.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        message = bytes(range(256))[: size % 256] * (size // 256 + 1)
        signature = signer.sign(message)
        assert _ed25519ph.verify_pure(raw, signature, message)
        assert not _ed25519ph.verify_pure(raw, signature, message + b"!")
        assert not _ed25519ph.verify_prehashed(raw, signature, message)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: f.rsa_signer(bits=1024).pem, "at least 2048"),
        (lambda: f.ecdsa_signer(curve=ec.SECP256K1()).pem, "secp256k1"),
        (lambda: f.certificate_pem(f.ecdsa_signer()).encode(), "not a PUBLIC KEY"),
        (lambda: f.ecdsa_signer().pem + f.ecdsa_signer().pem, "2 PEM blocks"),
        (lambda: b"ssh-ed25519 AAAA", "no PEM block"),
        (
            lambda: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "not a valid public key",
        ),
    ],
)
def test_unusable_keys_are_refused_naming_the_source(make: object, fragment: str) -> None:
    with pytest.raises(CosignKeyError) as caught:
        public_key_from_pem(make(), "/etc/trustd/keys/team.pub")  # type: ignore[operator]
    assert "/etc/trustd/keys/team.pub" in str(caught.value)
    assert fragment in str(caught.value)


def test_private_key_pem_is_refused() -> None:
    private = f.ecdsa_signer().private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(CosignKeyError, match="not a PUBLIC KEY"):
        public_key_from_pem(private, "key.pem")


def test_loader(tmp_path: Path) -> None:
    signer = f.ecdsa_signer()
    first = tmp_path / "a.pub"
    first.write_bytes(signer.pem)
    key = load_public_key_file(first)
    assert key.key_id == signer.public.key_id
    assert key.source == str(first)

    twin = tmp_path / "b.pub"
    twin.write_bytes(signer.pem)
    with pytest.raises(CosignKeyError, match="the same public key as"):
        load_public_key_files([first, twin])

    big = tmp_path / "big.pub"
    big.write_bytes(b"x" * 70000)
    with pytest.raises(CosignKeyError, match="more than"):
        load_public_key_file(big)
    with pytest.raises(CosignKeyError, match="cannot read"):
        load_public_key_file(tmp_path / "missing.pub")
