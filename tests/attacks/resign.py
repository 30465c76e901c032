"""Re-signing copies of REAL notary metadata with the REAL keys the notary CLI holds.

The attack tests change one thing in a file the real CLI or notary-server produced and sign it
again with the key the CLI generated for that role, so trustd sees a valid signature on bad
metadata. Server-held keys (the timestamp key, and the snapshot key once rotated to the server)
are never available here; ``RootHolder`` does what the holder of the real root key can do
instead: rotate those roles to keys it holds, then sign timestamp and snapshot itself.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.stack import NotaryPublisher
from tests.stack.notary_keys import load_notary_key
from trustd.formats.notary.canonical import encode_canonical
from trustd.formats.notary.keys import canonical_key_id, load_public_key
from trustd.formats.notary.keys import key_id as notary_key_id

Document = dict[str, Any]


def load(data: bytes) -> Document:
    return json.loads(data)


def dump(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def rfc3339(moment: datetime) -> str:
    """``moment`` as notary's Go code writes a time (RFC 3339 in UTC, the fraction of a second
    without trailing zeros, none at all for a whole second).

    notary-server lists in its snapshot the hashes of its own encoding of a published file, so
    a time written any other way (``.250000`` for ``.25``) makes the snapshot name bytes that
    differ from the file it serves, and every client refuses the repository.
    """
    utc = moment.astimezone(UTC)
    fraction = f"{utc.microsecond:06d}".rstrip("0")
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def file_meta(data: bytes) -> Document:
    """The ``{hashes, length}`` entry a parent lists for ``data``, as notary writes it."""
    return {
        "hashes": {
            "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
            "sha512": base64.b64encode(hashlib.sha512(data).digest()).decode(),
        },
        "length": len(data),
    }


def _raw_signature(key: PrivateKeyTypes, message: bytes) -> tuple[str, bytes]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "eddsa", key.sign(message)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # notary's ecdsa signatures are raw r||s, not DER.
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
        half = (key.curve.key_size + 7) // 8
        return "ecdsa", r.to_bytes(half, "big") + s.to_bytes(half, "big")
    raise TypeError(f"cannot sign with a {type(key).__name__}")


def sign(document: Mapping[str, Any], signers: Iterable[tuple[str, PrivateKeyTypes]]) -> bytes:
    """``document`` with its signatures replaced by fresh ones over canonical ``signed``."""
    signed = document["signed"]
    message = encode_canonical(signed)
    signatures = []
    for key_id, key in signers:
        method, value = _raw_signature(key, message)
        signatures.append(
            {"keyid": key_id, "method": method, "sig": base64.b64encode(value).decode()}
        )
    return dump({"signed": signed, "signatures": signatures})


def go_envelope(data: bytes) -> bytes:
    """A signed file laid out as notary's Go code marshals it (``signed`` before
    ``signatures``). notary-server serves a published file as uploaded but lists in the snapshot
    it signs the hashes of its own encoding of it, so the file must already be in that layout
    (with times from ``rfc3339``), or the snapshot names other bytes than the server serves."""
    document = load(data)
    signed = json.dumps(document["signed"], sort_keys=True, separators=(",", ":"))
    signatures = json.dumps(document["signatures"], separators=(",", ":"))
    return f'{{"signed":{signed},"signatures":{signatures}}}'.encode()


def edit(data: bytes) -> Document:
    """A deep copy of a metadata file to change before re-signing."""
    return copy.deepcopy(load(data))


class CLIKeys:
    """The CLI trust dir's private keys, found by the key IDs metadata files use."""

    def __init__(self, publisher: NotaryPublisher) -> None:
        self.publisher = publisher

    def _by_canonical_id(self) -> dict[str, PrivateKeyTypes]:
        found: dict[str, PrivateKeyTypes] = {}
        for path in sorted((self.publisher.trust_dir / "private").glob("*.key")):
            key = load_notary_key(path, self.publisher.passphrase)
            public = key.public_key()
            assert isinstance(public, ec.EllipticCurvePublicKey)
            spki = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            found[_ecdsa_id(spki)] = key
        return found

    def signer(self, key_id: str, key_entry: Mapping[str, Any]) -> tuple[str, PrivateKeyTypes]:
        """(metadata key ID, private key) for a key as a metadata file lists it."""
        public = load_public_key(
            key_entry["keytype"], key_entry["keyval"]["public"], declared_id=key_id
        )
        keys = self._by_canonical_id()
        return key_id, keys[canonical_key_id(public)]

    def role_signers(self, root_or_targets: bytes, role: str) -> list[tuple[str, PrivateKeyTypes]]:
        """Signers of ``role`` as a root (top-level role) or a targets file (delegation) lists."""
        signed = load(root_or_targets)["signed"]
        if "roles" in signed and isinstance(signed["roles"], dict):
            key_ids = signed["roles"][role]["keyids"]
            keys = signed["keys"]
        else:
            spec = next(r for r in signed["delegations"]["roles"] if r["name"] == role)
            key_ids = spec["keyids"]
            keys = signed["delegations"]["keys"]
        return [self.signer(key_id, keys[key_id]) for key_id in key_ids]


def _ecdsa_id(spki: bytes) -> str:
    entry = {
        "keytype": "ecdsa",
        "keyval": {"private": None, "public": base64.b64encode(spki).decode()},
    }
    return hashlib.sha256(encode_canonical(entry)).hexdigest()


class RootHolder:
    """The holder of a repository's real root key, rotating timestamp and snapshot to its keys.

    ``root`` is the real root.json with its version bumped and the timestamp and snapshot roles
    moved to Ed25519 keys generated here, signed by the real root key from the CLI's trust dir.
    That key is both the old and the new root key, so this is a valid rotation, exactly what
    ``notary key rotate`` by the owner produces. From then on this holder signs any timestamp
    and snapshot; targets and delegations are still signed with the real CLI keys.
    """

    def __init__(self, keys: CLIKeys, real_root: bytes) -> None:
        self._signers: dict[str, tuple[str, ed25519.Ed25519PrivateKey]] = {}
        document = edit(real_root)
        signed = document["signed"]
        for role in ("timestamp", "snapshot"):
            private = ed25519.Ed25519PrivateKey.generate()
            raw = private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            public = base64.b64encode(raw).decode()
            new_id = notary_key_id("ed25519", public)
            signed["keys"][new_id] = {
                "keytype": "ed25519",
                "keyval": {"private": None, "public": public},
            }
            signed["roles"][role] = {"keyids": [new_id], "threshold": 1}
            self._signers[role] = (new_id, private)
        signed["version"] += 1
        self.root = sign(document, keys.role_signers(real_root, "root"))

    def snapshot(
        self,
        real_snapshot: bytes,
        changed: Mapping[str, bytes] = {},
        expires: datetime | None = None,
        listed: Mapping[str, Document] = {},
    ) -> bytes:
        """The next snapshot: lists the new root and ``changed`` files, signed by this holder.

        ``listed`` gives a file's ``{hashes, length}`` entry as is (a file too big to pass).
        """
        document = edit(real_snapshot)
        signed = document["signed"]
        for role, data in {"root": self.root, **changed}.items():
            signed["meta"][role] = file_meta(data)
        for role, meta in listed.items():
            signed["meta"][role] = dict(meta)
        signed["version"] += 1
        if expires is not None:
            signed["expires"] = rfc3339(expires)
        return sign(document, [self._signers["snapshot"]])

    def timestamp(self, real_timestamp: bytes, snapshot: bytes | Mapping[str, Any]) -> bytes:
        """The next timestamp, naming ``snapshot`` by length and hashes (or by the given
        ``{hashes, length}`` entry)."""
        document = edit(real_timestamp)
        listed = file_meta(snapshot) if isinstance(snapshot, bytes) else dict(snapshot)
        document["signed"]["meta"]["snapshot"] = listed
        document["signed"]["version"] += 1
        return sign(document, [self._signers["timestamp"]])
