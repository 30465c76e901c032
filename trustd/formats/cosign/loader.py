"""Reading configured cosign public keys from files (the one part of this package with I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from trustd.formats.cosign.errors import CosignKeyError
from trustd.formats.cosign.keys import CosignPublicKey, public_key_from_pem

# A PEM public key is well under 2 KiB even for RSA 4096; anything far larger is a wrong file.
MAX_KEY_FILE_BYTES: Final = 64 * 1024


def load_public_key_file(path: Path) -> CosignPublicKey:
    """The public key in ``path`` (PEM, as ``cosign.pub``); CosignKeyError naming the file."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise CosignKeyError(
            f"{path}: cannot read the cosign public key ({exc.strerror})"
        ) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise CosignKeyError(
            f"{path}: more than {MAX_KEY_FILE_BYTES} bytes; not a cosign public key file"
        )
    return public_key_from_pem(data, str(path))


def load_public_key_files(paths: list[Path]) -> tuple[CosignPublicKey, ...]:
    """Keys from several files, refusing the same key configured twice (it would count twice
    towards a threshold in the operator's mind, once in fact)."""
    keys: list[CosignPublicKey] = []
    seen: dict[str, Path] = {}
    for path in paths:
        key = load_public_key_file(path)
        if key.key_id in seen:
            raise CosignKeyError(f"{path}: the same public key as {seen[key.key_id]}")
        seen[key.key_id] = path
        keys.append(key)
    return tuple(keys)
