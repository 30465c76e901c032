"""Offline check of the Rekor signed entry timestamp (SET) a classic cosign signature carries.

The ``dev.sigstore.cosign/bundle`` annotation (cosign ``specs/SIGNATURE_SPEC.md``) holds
``{"SignedEntryTimestamp": base64, "Payload": {"body", "integratedTime", "logIndex", "logID"}}``.
The SET is Rekor's signature over the RFC 8785 canonical JSON of ``Payload``; ``logID`` is the
SHA-256 of the log's DER public key; ``body`` is the base64 log entry, a ``hashedrekord`` 0.0.1
recording the signature, the signer's public key and the payload's hash. What must match follows
containers/image ``signature/internal/rekor_set.go``: the entry must record exactly this
signature, exactly the key that verified it, and the hash of exactly this payload.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustd.formats.cosign import _json
from trustd.formats.cosign.errors import CosignKeyError, RekorEntryInvalid
from trustd.formats.cosign.keys import CosignPublicKey, public_key_from_pem

# A log entry stamped later than this past the caller's ``now`` cannot be genuine.
MAX_CLOCK_SKEW_SECONDS: Final = 300
# RFC 8785 writes integers beyond this in exponent form; real values are far below it.
_MAX_SAFE_INTEGER: Final = 2**53 - 1
_HASHES: Final = ("sha256", "sha384", "sha512")


def canonical_payload(payload: dict[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of a SET payload (strings and safe integers only).

    For such objects the JCS form is: keys sorted, no whitespace, only ``"``, ``\\`` and control
    characters escaped, UTF-8; which is what this serialisation produces.
    """
    for value in payload.values():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("only strings and integers are canonicalised here")
        if isinstance(value, int) and abs(value) > _MAX_SAFE_INTEGER:
            raise ValueError("integer too large for canonical JSON")
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def verify_set(
    annotation: str | None,
    rekor_keys: Sequence[CosignPublicKey],
    *,
    signature: bytes,
    payload: bytes,
    signer_keys: Sequence[CosignPublicKey],
    now: datetime,
    where: str,
) -> int:
    """The entry's integrated time (Unix seconds) if the SET is valid for this signature."""
    err = RekorEntryInvalid
    if annotation is None:
        raise err(
            f"{where}: no Rekor entry (dev.sigstore.cosign/bundle), which the policy requires"
        )
    what = f"{where}: Rekor bundle"
    top = _json.expect_object(_json.loads(annotation.encode("utf-8"), what, err), what, err)
    _json.expect_keys(top, what, err, required=("SignedEntryTimestamp", "Payload"))
    stamp = _json.std_b64decode(
        _json.expect_string(top["SignedEntryTimestamp"], f"{what}.SignedEntryTimestamp", err),
        f"{what}.SignedEntryTimestamp",
        err,
    )
    body_what = f"{what}.Payload"
    set_payload = _json.expect_object(top["Payload"], body_what, err)
    _json.expect_keys(
        set_payload, body_what, err, required=("body", "integratedTime", "logIndex", "logID")
    )
    body_b64 = _json.expect_string(set_payload["body"], f"{body_what}.body", err)
    log_id = _json.expect_string(set_payload["logID"], f"{body_what}.logID", err)
    integrated = set_payload["integratedTime"]
    log_index = set_payload["logIndex"]
    for name, number in (("integratedTime", integrated), ("logIndex", log_index)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise err(f"{body_what}.{name} must be a non-negative integer")
    try:
        canonical = canonical_payload(set_payload)
    except (ValueError, UnicodeEncodeError) as exc:
        raise err(f"{body_what} cannot be canonicalised: {exc}") from None

    log_key = next((key for key in rekor_keys if key.verify(stamp, canonical)), None)
    if log_key is None:
        tried = ", ".join(key.describe() for key in rekor_keys)
        raise err(
            f"{what}: the signed entry timestamp does not verify with the Rekor key ({tried})"
        )
    if log_id != log_key.key_id:
        raise err(f"{what}: logID {log_id!r} is not the ID of the Rekor key that signed it")
    if integrated > now.timestamp() + MAX_CLOCK_SKEW_SECONDS:
        raise err(f"{what}: integrated time {integrated} is in the future")

    _check_entry(body_b64, signature, payload, signer_keys, what)
    return int(integrated)


def _check_entry(
    body_b64: str,
    signature: bytes,
    payload: bytes,
    signer_keys: Sequence[CosignPublicKey],
    what: str,
) -> None:
    err = RekorEntryInvalid
    body_what = f"{what} entry body"
    raw = _json.std_b64decode(body_b64, body_what, err)
    entry = _json.expect_object(_json.loads(raw, body_what, err), body_what, err)
    if entry.get("kind") != "hashedrekord" or entry.get("apiVersion") != "0.0.1":
        raise err(
            f"{body_what}: kind {entry.get('kind')!r} version {entry.get('apiVersion')!r}, "
            "expected hashedrekord 0.0.1"
        )
    spec = _json.expect_object(entry.get("spec"), f"{body_what}.spec", err)
    sig = _json.expect_object(spec.get("signature"), f"{body_what}.spec.signature", err)
    content = _json.expect_string(sig.get("content"), f"{body_what} signature.content", err)
    if _json.std_b64decode(content, f"{body_what} signature.content", err) != signature:
        raise err(f"{what}: the log entry records a different signature")
    key_obj = _json.expect_object(sig.get("publicKey"), f"{body_what} signature.publicKey", err)
    key_b64 = _json.expect_string(key_obj.get("content"), f"{body_what} publicKey.content", err)
    key_pem = _json.std_b64decode(key_b64, f"{body_what} publicKey.content", err)
    logged_spki = _logged_spki(key_pem, body_what)
    if all(key.spki != logged_spki for key in signer_keys):
        raise err(f"{what}: the log entry records a different signing key")

    data = _json.expect_object(spec.get("data"), f"{body_what}.spec.data", err)
    hashed = _json.expect_object(data.get("hash"), f"{body_what} data.hash", err)
    algorithm = hashed.get("algorithm")
    value = hashed.get("value")
    if algorithm not in _HASHES or not isinstance(value, str):
        raise err(f"{body_what}: data.hash is not a sha256/sha384/sha512 value")
    if hashlib.new(algorithm, payload).hexdigest() != value:
        raise err(f"{what}: the log entry records the hash of a different payload")


def _logged_spki(pem: bytes, what: str) -> bytes:
    if b"-----BEGIN CERTIFICATE-----" in pem:
        try:
            certificate = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise RekorEntryInvalid(f"{what}: the logged certificate is not valid") from None
        return certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    try:
        return public_key_from_pem(pem, what).spki
    except CosignKeyError as exc:
        raise RekorEntryInvalid(str(exc)) from None
