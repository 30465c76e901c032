"""Notary (TUF) metadata parsed from bytes into typed, frozen objects.

Parsing checks structure only: types, required fields, ``_type``, key IDs against key content.
Signatures, thresholds, versions and expiry are the trusted set's business. Every malformed input
raises BadMetadata (or UnsupportedKey for an unknown key type) naming the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from trustd.errors import BadMetadata, BadSignature, HashMismatch, ThresholdNotMet, TrustError
from trustd.formats.notary.canonical import CanonicalEncodingError, encode_canonical
from trustd.formats.notary.keys import PublicKey, load_public_key, short_key_id, verify_signature

TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
SUPPORTED_HASHES = ("sha256", "sha512")
_TYPES = {"root": "Root", "timestamp": "Timestamp", "snapshot": "Snapshot", "targets": "Targets"}
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def file_label(role: str, gun: str = "") -> str:
    """How messages name a role's file: ``targets.json for GUN``."""
    return f"{role}.json for {gun}" if gun else f"{role}.json"


@dataclass(frozen=True)
class Signature:
    key_id: str
    method: str
    value: bytes


@dataclass(frozen=True)
class SignedEnvelope:
    """A metadata file: its ``signed`` object, the canonical bytes signed, and the signatures."""

    role: str
    signed: Mapping[str, Any] = field(repr=False)
    signed_bytes: bytes = field(repr=False)
    signatures: tuple[Signature, ...]


@dataclass(frozen=True)
class FileMeta:
    """Length and hashes of a metadata file, as its parent (timestamp or snapshot) lists it."""

    length: int
    hashes: Mapping[str, bytes]

    def matches(self, data: bytes | None) -> bool:
        """Whether ``data`` has this length and every supported hash listed."""
        if data is None:
            return False
        try:
            self.check(data)
        except HashMismatch:
            return False
        return True

    @property
    def sha256(self) -> bytes | None:
        return self.hashes.get("sha256")

    def check(self, data: bytes, name: str = "metadata file", gun: str = "") -> None:
        """HashMismatch unless ``data`` has this length and every supported hash listed."""
        where = f"{name} for {gun}" if gun else name
        if len(data) != self.length:
            raise HashMismatch(
                f"{where}: length {len(data)} does not match the expected {self.length} bytes"
            )
        for algorithm in SUPPORTED_HASHES:
            expected = self.hashes.get(algorithm)
            if expected is not None and hashlib.new(algorithm, data).digest() != expected:
                raise HashMismatch(
                    f"{where}: {algorithm} {hashlib.new(algorithm, data).hexdigest()} does not "
                    f"match the expected {expected.hex()}"
                )


@dataclass(frozen=True)
class RoleKeys:
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class Root:
    version: int
    expires: datetime
    keys: Mapping[str, PublicKey]
    roles: Mapping[str, RoleKeys]
    consistent_snapshot: bool

    def role_keys(self, role: str) -> tuple[dict[str, PublicKey], int]:
        """The keys (by ID) and threshold of a top-level role."""
        spec = self.roles[role]
        return {k: self.keys[k] for k in spec.keyids if k in self.keys}, spec.threshold


@dataclass(frozen=True)
class Timestamp:
    version: int
    expires: datetime
    meta: Mapping[str, FileMeta]  # {"snapshot": ...}

    @property
    def snapshot_meta(self) -> FileMeta:
        return self.meta["snapshot"]


@dataclass(frozen=True)
class Snapshot:
    version: int
    expires: datetime
    meta: Mapping[str, FileMeta]  # "root", "targets", "targets/..."


@dataclass(frozen=True)
class TargetFile:
    length: int
    hashes: Mapping[str, bytes]
    custom: Any = None


@dataclass(frozen=True)
class DelegatedRole:
    name: str
    keyids: tuple[str, ...]
    threshold: int
    paths: tuple[str, ...]
    path_hash_prefixes: tuple[str, ...] = ()

    def allows(self, target: str) -> bool:
        """Notary semantics: a target is allowed if some path is a prefix of it ("" = all)."""
        return any(target.startswith(path) for path in self.paths)


@dataclass(frozen=True)
class Delegations:
    keys: Mapping[str, PublicKey]
    roles: tuple[DelegatedRole, ...]

    def role(self, name: str) -> DelegatedRole | None:
        return next((role for role in self.roles if role.name == name), None)


@dataclass(frozen=True)
class Targets:
    version: int
    expires: datetime
    targets: Mapping[str, TargetFile]
    delegations: Delegations


Metadata = Root | Timestamp | Snapshot | Targets


# --- the envelope --------------------------------------------------------------------------------


def _reject_float(text: str) -> Any:
    raise ValueError(f"non-integer number {text}")


def _reject_constant(text: str) -> Any:
    raise ValueError(f"invalid number {text}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys would let two readers see two different documents behind one signature.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_envelope(data: bytes, role: str, gun: str = "") -> SignedEnvelope:
    """Parse ``{"signed": {...}, "signatures": [...]}``; BadMetadata naming what is malformed."""
    where = file_label(role, gun)
    try:
        document = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BadMetadata(f"{where} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadMetadata(f"{where}: top level is not a JSON object")
    signed = _field(document, "signed", dict, where)
    raw_signatures = _field(document, "signatures", list, where)
    try:
        signed_bytes = encode_canonical(signed)
    except CanonicalEncodingError as error:
        raise BadMetadata(f"{where}: signed has no canonical form: {error}") from None
    signatures = []
    for index, raw in enumerate(raw_signatures):
        label = f"{where}: signatures[{index}]"
        raw = _object(raw, label)
        signatures.append(
            Signature(
                key_id=_field(raw, "keyid", str, label),
                method=_field(raw, "method", str, label),
                value=_base64(_field(raw, "sig", str, label), f"{label}.sig"),
            )
        )
    return SignedEnvelope(role, signed, signed_bytes, tuple(signatures))


# --- the roles -----------------------------------------------------------------------------------


def parse_root(envelope: SignedEnvelope, gun: str = "") -> Root:
    where = _start(envelope, "root", gun)
    signed = envelope.signed
    keys = _parse_keys(_field(signed, "keys", dict, where), f"{where}: keys")
    raw_roles = _field(signed, "roles", dict, where)
    roles: dict[str, RoleKeys] = {}
    for name, raw in raw_roles.items():
        label = f"{where}: roles.{name}"
        raw = _object(raw, label)
        roles[name] = RoleKeys(
            keyids=_string_list(_field(raw, "keyids", list, label), f"{label}.keyids"),
            threshold=_threshold(raw, label),
        )
    for name in TOP_LEVEL_ROLES:
        if name not in roles:
            raise BadMetadata(f"{where}: roles has no {name!r} role")
    consistent = signed.get("consistent_snapshot", False)
    if not isinstance(consistent, bool):
        raise BadMetadata(f"{where}: consistent_snapshot is not a boolean")
    return Root(_version(signed, where), _expires(signed, where), keys, roles, consistent)


def parse_timestamp(envelope: SignedEnvelope, gun: str = "") -> Timestamp:
    where = _start(envelope, "timestamp", gun)
    meta = _parse_meta(_field(envelope.signed, "meta", dict, where), f"{where}: meta")
    if "snapshot" not in meta:
        raise BadMetadata(f"{where}: meta has no 'snapshot' entry")
    return Timestamp(_version(envelope.signed, where), _expires(envelope.signed, where), meta)


def parse_snapshot(envelope: SignedEnvelope, gun: str = "") -> Snapshot:
    where = _start(envelope, "snapshot", gun)
    meta = _parse_meta(_field(envelope.signed, "meta", dict, where), f"{where}: meta")
    for name in meta:
        if name not in ("root", "targets") and not _is_delegation_name(name):
            raise BadMetadata(f"{where}: meta lists {name!r}, which is not a notary role")
    if "targets" not in meta:
        raise BadMetadata(f"{where}: meta has no 'targets' entry")
    return Snapshot(_version(envelope.signed, where), _expires(envelope.signed, where), meta)


def parse_targets(envelope: SignedEnvelope, gun: str = "") -> Targets:
    """Targets of ``envelope.role`` (``targets`` or a delegation such as ``targets/releases``)."""
    role = envelope.role
    if role != "targets" and not _is_delegation_name(role):
        raise BadMetadata(f"{file_label(role, gun)}: {role!r} is not a targets role name")
    where = _start(envelope, role, gun, expected_type="Targets")
    signed = envelope.signed
    targets: dict[str, TargetFile] = {}
    for name, raw in _field(signed, "targets", dict, where).items():
        label = f"{where}: targets[{name!r}]"
        raw = _object(raw, label)
        targets[name] = TargetFile(
            length=_length(raw, label),
            hashes=_hashes(raw, label),
            custom=raw.get("custom"),
        )
    raw_delegations = signed.get("delegations", {"keys": {}, "roles": []})
    if not isinstance(raw_delegations, dict):
        raise BadMetadata(f"{where}: delegations is not an object")
    delegations = _parse_delegations(raw_delegations, role, f"{where}: delegations")
    return Targets(_version(signed, where), _expires(signed, where), targets, delegations)


def parse(data: bytes, role: str, gun: str = "") -> tuple[SignedEnvelope, Metadata]:
    """Envelope and typed metadata of ``role`` in one step."""
    envelope = parse_envelope(data, role, gun)
    if role == "root":
        return envelope, parse_root(envelope, gun)
    if role == "timestamp":
        return envelope, parse_timestamp(envelope, gun)
    if role == "snapshot":
        return envelope, parse_snapshot(envelope, gun)
    return envelope, parse_targets(envelope, gun)


def verify_threshold(
    envelope: SignedEnvelope,
    keys: Mapping[str, PublicKey],
    threshold: int,
    where: str,
    error: type[TrustError] = ThresholdNotMet,
) -> frozenset[str]:
    """The IDs of the distinct ``keys`` whose signature verifies; ``error`` if below threshold.

    Signatures by keys outside ``keys`` are ignored, and several signatures by one key count once.
    """
    valid: set[str] = set()
    problems: dict[str, str] = {}
    for signature in envelope.signatures:
        key = keys.get(signature.key_id)
        if key is None or signature.key_id in valid:
            continue
        try:
            verify_signature(key, signature.method, signature.value, envelope.signed_bytes)
        except (BadSignature, BadMetadata) as problem:
            problems.setdefault(signature.key_id, str(problem))
        else:
            valid.add(signature.key_id)
            problems.pop(signature.key_id, None)
    if len(valid) < threshold:
        detail = "; ".join(f"key {short_key_id(k)}: {why}" for k, why in problems.items())
        if not envelope.signatures:
            detail = "no signatures"
        elif not detail:
            detail = "no signature by a key of this role"
        raise error(f"{where}: {len(valid)} of {threshold} required signatures valid ({detail})")
    return frozenset(valid)


def parse_rfc3339(value: str) -> datetime:
    """Go's RFC 3339 with up to nanoseconds (kept to microseconds); ValueError if malformed."""
    match = _RFC3339.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micro = int((fraction or "0").ljust(9, "0")[:6])
    tz = UTC
    if not zulu:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    parsed = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
    )
    return parsed.astimezone(UTC)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- helpers -------------------------------------------------------------------------------------


def _start(envelope: SignedEnvelope, role: str, gun: str, expected_type: str | None = None) -> str:
    where = file_label(envelope.role, gun)
    wanted = expected_type or _TYPES[role]
    actual = envelope.signed.get("_type")
    if actual != wanted:
        raise BadMetadata(f"{where}: _type is {actual!r}, expected {wanted!r}")
    return where


def _field(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in obj:
        raise BadMetadata(f"{where}: missing field {name!r}")
    value = obj[name]
    # bool is an int in Python; JSON true must not pass for a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadMetadata(f"{where}: field {name!r} is not {_kind_name(kind)}")
    return value


def _object(value: Any, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadMetadata(f"{label} is not an object")
    return value


def _optional(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    """A field that may be absent or null (Go's omitempty); wrong types are still rejected."""
    if obj.get(name) is None:
        return None
    return _field(obj, name, kind, where)


def _kind_name(kind: type) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "an integer"}.get(
        kind, kind.__name__
    )


def _version(signed: Mapping[str, Any], where: str) -> int:
    version: int = _field(signed, "version", int, where)
    if version < 0:
        raise BadMetadata(f"{where}: version {version} is negative")
    return version


def _expires(signed: Mapping[str, Any], where: str) -> datetime:
    raw = _field(signed, "expires", str, where)
    try:
        return parse_rfc3339(raw)
    except ValueError as error:
        raise BadMetadata(f"{where}: expires: {error}") from None


def _threshold(raw: Mapping[str, Any], label: str) -> int:
    threshold: int = _field(raw, "threshold", int, label)
    if threshold < 1:
        raise BadMetadata(f"{label}: threshold {threshold} is below 1")
    return threshold


def _length(raw: Mapping[str, Any], label: str) -> int:
    length: int = _field(raw, "length", int, label)
    if length < 0:
        raise BadMetadata(f"{label}: length {length} is negative")
    return length


def _base64(value: str, label: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadMetadata(f"{label} is not valid base64") from None


def _hashes(raw: Mapping[str, Any], label: str) -> dict[str, bytes]:
    hashes = {}
    for algorithm, value in _field(raw, "hashes", dict, label).items():
        if not isinstance(value, str):
            raise BadMetadata(f"{label}: hashes.{algorithm} is not a base64 string")
        hashes[algorithm] = _base64(value, f"{label}: hashes.{algorithm}")
    for algorithm in SUPPORTED_HASHES:
        size = hashlib.new(algorithm).digest_size
        if algorithm in hashes and len(hashes[algorithm]) != size:
            raise BadMetadata(f"{label}: hashes.{algorithm} is not {size} bytes")
    if not any(algorithm in hashes for algorithm in SUPPORTED_HASHES):
        raise BadMetadata(f"{label}: hashes has neither sha256 nor sha512")
    return hashes


def _parse_meta(raw: Mapping[str, Any], where: str) -> dict[str, FileMeta]:
    meta = {}
    for name, entry in raw.items():
        label = f"{where}[{name!r}]"
        entry = _object(entry, label)
        meta[name] = FileMeta(_length(entry, label), _hashes(entry, label))
    return meta


def _parse_keys(raw: Mapping[str, Any], where: str) -> dict[str, PublicKey]:
    keys = {}
    for declared_id, entry in raw.items():
        label = f"{where}[{short_key_id(declared_id)}]"
        entry = _object(entry, label)
        key_type = _field(entry, "keytype", str, label)
        keyval = _field(entry, "keyval", dict, label)
        public = _field(keyval, "public", str, f"{label}.keyval")
        try:
            keys[declared_id] = load_public_key(key_type, public, declared_id)
        except BadMetadata as error:
            raise type(error)(f"{where}: {error}") from None
    return keys


def _string_list(raw: list[Any], label: str) -> tuple[str, ...]:
    if not all(isinstance(item, str) for item in raw):
        raise BadMetadata(f"{label} holds a non-string")
    return tuple(raw)


def _is_delegation_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) >= 2 and parts[0] == "targets" and all(parts[1:])


def _parse_delegations(raw: Mapping[str, Any], parent: str, where: str) -> Delegations:
    keys = _parse_keys(_optional(raw, "keys", dict, where) or {}, where)
    raw_roles = _optional(raw, "roles", list, where) or []
    roles: list[DelegatedRole] = []
    for index, entry in enumerate(raw_roles):
        label = f"{where}.roles[{index}]"
        entry = _object(entry, label)
        name = _field(entry, "name", str, label)
        # Notary only follows direct children: targets/a may delegate targets/a/b, nothing else.
        if not _is_delegation_name(name) or name.rsplit("/", 1)[0] != parent:
            raise BadMetadata(f"{label}: {name!r} is not a role directly under {parent!r}")
        if any(role.name == name for role in roles):
            raise BadMetadata(f"{label}: role {name!r} is delegated twice")
        paths = _string_list(_optional(entry, "paths", list, label) or [], f"{label}.paths")
        prefixes = _string_list(
            _optional(entry, "path_hash_prefixes", list, label) or [],
            f"{label}.path_hash_prefixes",
        )
        roles.append(
            DelegatedRole(
                name=name,
                keyids=_string_list(_field(entry, "keyids", list, label), f"{label}.keyids"),
                threshold=_threshold(entry, label),
                paths=paths,
                path_hash_prefixes=prefixes,
            )
        )
    return Delegations(keys, tuple(roles))
