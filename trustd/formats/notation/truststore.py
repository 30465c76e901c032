"""Loads a Notation configuration directory, in notation's own layout, for the pure verifier:

    <dir>/trustpolicy.oci.json               (or the older name trustpolicy.json)
    <dir>/truststore/x509/ca/<name>/*.{crt,cer,pem}
    <dir>/truststore/x509/signingAuthority/<name>/...
    <dir>/truststore/x509/tsa/<name>/...

Only the trust stores the policy names are read. Certificate files hold one or more
certificates, PEM or DER. As the specification requires, symbolic links are refused; a named
store's subdirectories, and files of other extensions, are ignored with a warning. Every file is
read with a size cap, and nothing is followed or waited on (FIFOs and devices are refused).
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509

from trustd.formats.notation.chain import issued_by, load_certificate
from trustd.formats.notation.errors import TrustPolicyError, TrustStoreError
from trustd.formats.notation.stores import NamedStore, TrustStores
from trustd.formats.notation.trustpolicy import (
    MAX_POLICY_BYTES,
    StoreType,
    TrustPolicyDocument,
    TrustStoreRef,
    parse_trust_policy,
)

POLICY_FILES: Final = ("trustpolicy.oci.json", "trustpolicy.json")
CERTIFICATE_EXTENSIONS: Final = (".crt", ".cer", ".pem")
MAX_CERTIFICATE_FILE_BYTES: Final = 1024 * 1024
MAX_CERTIFICATES_PER_STORE: Final = 1000

_PEM_BLOCK: Final = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL
)


@dataclass(frozen=True)
class NotationConfig:
    directory: str
    policy: TrustPolicyDocument
    stores: TrustStores
    # Things an operator should know but that do not stop the configuration from being used.
    warnings: tuple[str, ...] = ()


def load_notation_config(directory: str | os.PathLike[str]) -> NotationConfig:
    """The trust policy of ``directory`` and every trust store it names; TrustPolicyError or
    TrustStoreError (both ConfigError) when they cannot be used."""
    root = Path(directory)
    policy = load_trust_policy(root)
    warnings: list[str] = []
    stores = [load_named_store(root, ref, warnings) for ref in policy.store_refs()]
    return NotationConfig(str(root), policy, TrustStores.of(*stores), tuple(warnings))


def load_trust_policy(directory: str | os.PathLike[str]) -> TrustPolicyDocument:
    root = Path(directory)
    for name in POLICY_FILES:
        path = root / name
        try:
            os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise TrustPolicyError(f"{path}: cannot be read ({error.strerror})") from None
        data = _read_file(path, MAX_POLICY_BYTES, TrustPolicyError)
        return parse_trust_policy(data, str(path))
    raise TrustPolicyError(
        f"{root}: no Notation trust policy ({' or '.join(POLICY_FILES)}) in this directory"
    )


def store_directory(directory: str | os.PathLike[str], ref: TrustStoreRef) -> Path:
    return Path(directory) / "truststore" / "x509" / ref.type.value / ref.name


def load_named_store(
    directory: str | os.PathLike[str], ref: TrustStoreRef, warnings: list[str]
) -> NamedStore:
    """One named trust store; warnings about ignored entries are appended to ``warnings``."""
    path = store_directory(directory, ref)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise TrustStoreError(f"trust store {ref} does not exist: {path} is missing") from None
    except OSError as error:
        raise TrustStoreError(f"trust store {ref}: {path}: {error.strerror}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise TrustStoreError(
            f"trust store {ref}: {path} is not a directory (symbolic links are not supported)"
        )
    try:
        entries = sorted(os.scandir(path), key=lambda entry: entry.name)
    except OSError as error:
        raise TrustStoreError(f"trust store {ref}: {path}: {error.strerror}") from None
    certificates: list[x509.Certificate] = []
    for entry in entries:
        file_path = Path(entry.path)
        if entry.is_symlink():
            raise TrustStoreError(
                f"trust store {ref}: {file_path} is a symbolic link, which is not supported"
            )
        if entry.is_dir(follow_symlinks=False):
            warnings.append(f"trust store {ref}: subdirectory {file_path} is ignored")
            continue
        if not entry.name.lower().endswith(CERTIFICATE_EXTENSIONS):
            warnings.append(
                f"trust store {ref}: {file_path} is ignored (certificate files end in "
                f"{', '.join(CERTIFICATE_EXTENSIONS)})"
            )
            continue
        data = _read_file(file_path, MAX_CERTIFICATE_FILE_BYTES, TrustStoreError)
        try:
            found = read_certificates(data)
        except ValueError as error:
            raise TrustStoreError(f"trust store {ref}: {file_path}: {error}") from None
        for cert in found:
            problem = trust_anchor_problem(cert, ref.type)
            if problem:
                raise TrustStoreError(f"trust store {ref}: {file_path}: {problem}")
        certificates.extend(found)
        if len(certificates) > MAX_CERTIFICATES_PER_STORE:
            raise TrustStoreError(
                f"trust store {ref}: {path} holds more than {MAX_CERTIFICATES_PER_STORE} "
                "certificates"
            )
    if not certificates:
        raise TrustStoreError(f"trust store {ref}: {path} holds no certificates")
    return NamedStore(ref, tuple(certificates), str(path))


def trust_anchor_problem(cert: x509.Certificate, kind: StoreType) -> str | None:
    """Why a certificate cannot be in a trust store of this type: stores hold CA certificates
    or self-signed ones, and a TSA store only self-signed root CAs. None if it can."""
    name = cert.subject.rfc4514_string()
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    except ValueError as error:
        return f"certificate {name!r} has malformed extensions ({error})"
    self_signed = issued_by(cert, cert)
    if kind is StoreType.TSA and not (is_ca and self_signed):
        return f"certificate {name!r} is not a self-signed root CA certificate"
    if not is_ca and not self_signed:
        return f"certificate {name!r} is neither a CA certificate nor self-signed"
    return None


def read_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM file (CERTIFICATE blocks only) or of concatenated DER."""
    if b"-----BEGIN" in data:
        blocks = _PEM_BLOCK.findall(data)
        if not blocks:
            raise ValueError("no complete PEM block")
        ders: list[bytes] = []
        for begin, body, end in blocks:
            if begin != end or begin != b"CERTIFICATE":
                label = begin.decode("ascii", "replace")
                raise ValueError(f"a PEM block is {label!r}, not CERTIFICATE")
            try:
                ders.append(base64.b64decode(b"".join(body.split()), validate=True))
            except (binascii.Error, ValueError):
                raise ValueError("a PEM CERTIFICATE block is not base64") from None
    else:
        ders = _der_sequences(data)
    if not ders:
        raise ValueError("no certificates")
    certificates = []
    for index, der in enumerate(ders):
        try:
            certificates.append(load_certificate(der))
        except ValueError as error:
            raise ValueError(f"certificate {index + 1} cannot be parsed ({error})") from None
    return tuple(certificates)


def _der_sequences(data: bytes) -> list[bytes]:
    """Split concatenated DER SEQUENCEs (each certificate is one)."""
    result = []
    position = 0
    while position < len(data):
        if data[position] != 0x30 or position + 2 > len(data):
            raise ValueError("neither PEM nor DER certificate data")
        first = data[position + 1]
        header = 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 4 or position + 2 + count > len(data):
                raise ValueError("a DER length is malformed")
            length = int.from_bytes(data[position + 2 : position + 2 + count], "big")
            header += count
        end = position + header + length
        if end > len(data):
            raise ValueError("a DER certificate is truncated")
        result.append(data[position:end])
        position = end
    return result


def _read_file(path: Path, limit: int, error: type[TrustPolicyError | TrustStoreError]) -> bytes:
    """A regular file's bytes, at most ``limit``; never follows a symbolic link and never opens a
    FIFO or device."""
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            raise error(f"{path} is a symbolic link, which is not supported")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path} is not a regular file")
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as failure:
        if failure.errno == errno.ELOOP:
            raise error(f"{path} is a symbolic link, which is not supported") from None
        raise error(f"{path}: cannot be read ({failure.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise error(f"{path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(descriptor, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as failure:
        raise error(f"{path}: cannot be read ({failure.strerror})") from None
    finally:
        os.close(descriptor)
    if size > limit:
        raise error(f"{path} is larger than {limit} bytes")
    return b"".join(chunks)
