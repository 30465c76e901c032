"""Reading the notary CLI's private key files (``TRUSTDIR/private/<id>.key``).

The files are ``ENCRYPTED PRIVATE KEY`` PEM with ``role:``/``gun:`` header lines. Inside, notary
0.7.0 writes a PKCS#8 PrivateKeyInfo with version 1 (not 0), which ``cryptography`` refuses to
load ("Invalid key"); so the PBES2 envelope is opened here and the inner key loaded directly.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_SEQUENCE, _INTEGER, _OCTET_STRING, _OID = 0x30, 0x02, 0x04, 0x06
_PBES2 = "1.2.840.113549.1.5.13"
_PBKDF2 = "1.2.840.113549.1.5.12"
_PRF_HASHES = {"1.2.840.113549.2.7": "sha1", "1.2.840.113549.2.9": "sha256"}
_AES_CBC_KEY_SIZES = {
    "2.16.840.1.101.3.4.1.2": 16,
    "2.16.840.1.101.3.4.1.22": 24,
    "2.16.840.1.101.3.4.1.42": 32,
}


def read_key_file(path: Path) -> tuple[dict[str, str], bytes]:
    """A CLI private key file: its ``role:``/``gun:`` headers and the PEM without them."""
    headers: dict[str, str] = {}
    pem_lines: list[str] = []
    for line in path.read_text().splitlines():
        name, separator, value = line.partition(": ")
        if separator and name in ("role", "gun"):
            headers[name] = value.strip()
        elif line.strip():
            pem_lines.append(line)
    return headers, ("\n".join(pem_lines) + "\n").encode()


def _read_tlv(data: bytes, offset: int = 0) -> tuple[int, bytes, int]:
    """One DER element at ``offset``: (tag, content, offset after it)."""
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[offset : offset + size], "big")
        offset += size
    return tag, data[offset : offset + length], offset + length


def _children(data: bytes) -> list[tuple[int, bytes]]:
    items, offset = [], 0
    while offset < len(data):
        tag, content, offset = _read_tlv(data, offset)
        items.append((tag, content))
    return items


def _oid(content: bytes) -> str:
    parts = [content[0] // 40, content[0] % 40]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(part) for part in parts)


def _expect(item: tuple[int, bytes], tag: int, what: str) -> bytes:
    if item[0] != tag:
        raise ValueError(f"notary key file: unexpected DER in {what}")
    return item[1]


def decrypt_notary_key(pem: bytes, passphrase: str) -> PrivateKeyTypes:
    """Open an ``ENCRYPTED PRIVATE KEY`` (PBES2, PBKDF2, AES-CBC) as notary writes it."""
    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    _, envelope, _ = _read_tlv(base64.b64decode(body))
    algorithm, encrypted = _children(envelope)
    scheme_oid, scheme_params = _children(_expect(algorithm, _SEQUENCE, "algorithm"))
    if _oid(_expect(scheme_oid, _OID, "scheme")) != _PBES2:
        raise ValueError("notary key file: not PBES2-encrypted")
    kdf, cipher = _children(scheme_params[1])
    kdf_oid, kdf_params = _children(kdf[1])
    if _oid(kdf_oid[1]) != _PBKDF2:
        raise ValueError("notary key file: key derivation is not PBKDF2")
    salt, iterations, *optional = _children(kdf_params[1])
    prf = "sha1"  # PKCS#5 default when the PRF is absent
    for tag, content in optional:
        if tag == _SEQUENCE:
            prf = _PRF_HASHES[_oid(_children(content)[0][1])]
    cipher_oid, iv = _children(cipher[1])
    key_size = _AES_CBC_KEY_SIZES[_oid(cipher_oid[1])]
    key = hashlib.pbkdf2_hmac(
        prf,
        passphrase.encode(),
        _expect(salt, _OCTET_STRING, "salt"),
        int.from_bytes(_expect(iterations, _INTEGER, "iterations"), "big"),
        key_size,
    )
    decryptor = Cipher(algorithms.AES(key), modes.CBC(_expect(iv, _OCTET_STRING, "iv"))).decryptor()
    padded = (
        decryptor.update(_expect(encrypted, _OCTET_STRING, "ciphertext")) + decryptor.finalize()
    )
    unpadder = padding.PKCS7(128).unpadder()
    private_key_info = unpadder.update(padded) + unpadder.finalize()
    # PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING }; the inner
    # privateKey of an EC key is a SEC1 ECPrivateKey, which names its curve itself.
    _, info, _ = _read_tlv(private_key_info)
    inner = _expect(_children(info)[2], _OCTET_STRING, "privateKey")
    return serialization.load_der_private_key(inner, password=None)


def load_notary_key(path: Path, passphrase: str) -> PrivateKeyTypes:
    """The decrypted private key in one of the CLI's ``private/<id>.key`` files."""
    _, pem = read_key_file(path)
    return decrypt_notary_key(pem, passphrase)
