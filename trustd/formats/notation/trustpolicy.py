"""Notation's OCI trust policy document (``trustpolicy.oci.json``, formerly ``trustpolicy.json``),
version 1.0, parsed and validated by the rules of the trust store and trust policy specification.

Pure: it reads bytes and names the file only in messages. Everything that makes a document
unusable is a ``TrustPolicyError`` naming the file and the statement; unknown members are refused
rather than ignored, so a setting trustd does not understand never silently loosens a policy.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from trustd.formats.notation import strictjson
from trustd.formats.notation.errors import NoApplicableTrustPolicy, TrustPolicyError

SUPPORTED_VERSIONS: Final = ("1.0",)
WILDCARD: Final = "*"
X509_SUBJECT: Final = "x509.subject"
MAX_POLICY_BYTES: Final = 1024 * 1024

_STATEMENT_MEMBERS: Final = frozenset(
    {"name", "registryScopes", "signatureVerification", "trustStores", "trustedIdentities"}
)
_VERIFICATION_MEMBERS: Final = frozenset({"level", "override", "verifyTimestamp"})
_STORE_NAME: Final = re.compile(r"^[a-zA-Z0-9_.-]+$")
# The repository grammar of the distribution reference: a host (optionally with a port) and a
# lowercase path; no tag, digest or scheme.
_HOST_LABEL: Final = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY: Final = re.compile(
    rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*(?::[0-9]+)?/{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$"
)


class Validation(enum.Enum):
    """The validations of the verification workflow, by their trust policy names."""

    INTEGRITY = "integrity"
    AUTHENTICITY = "authenticity"
    AUTHENTIC_TIMESTAMP = "authenticTimestamp"
    EXPIRY = "expiry"
    REVOCATION = "revocation"


class Action(enum.Enum):
    ENFORCE = "enforce"
    LOG = "log"
    SKIP = "skip"


class StoreType(enum.Enum):
    CA = "ca"
    SIGNING_AUTHORITY = "signingAuthority"
    TSA = "tsa"


class VerifyTimestamp(enum.Enum):
    ALWAYS = "always"
    AFTER_CERT_EXPIRY = "afterCertExpiry"


_E, _L, _S = Action.ENFORCE, Action.LOG, Action.SKIP
_V = Validation
PRESET_LEVELS: Final[dict[str, dict[Validation, Action]]] = {
    "strict": {_V.INTEGRITY: _E, _V.AUTHENTICITY: _E, _V.AUTHENTIC_TIMESTAMP: _E,
               _V.EXPIRY: _E, _V.REVOCATION: _E},
    "permissive": {_V.INTEGRITY: _E, _V.AUTHENTICITY: _E, _V.AUTHENTIC_TIMESTAMP: _L,
                   _V.EXPIRY: _L, _V.REVOCATION: _L},
    "audit": {_V.INTEGRITY: _E, _V.AUTHENTICITY: _L, _V.AUTHENTIC_TIMESTAMP: _L,
              _V.EXPIRY: _L, _V.REVOCATION: _L},
    "skip": {_V.INTEGRITY: _S, _V.AUTHENTICITY: _S, _V.AUTHENTIC_TIMESTAMP: _S,
             _V.EXPIRY: _S, _V.REVOCATION: _S},
}  # fmt: skip
# What an override may set each validation to (integrity cannot be overridden at all).
_OVERRIDABLE: Final = {
    _V.AUTHENTICITY: (_E, _L),
    _V.AUTHENTIC_TIMESTAMP: (_E, _L),
    _V.EXPIRY: (_E, _L),
    _V.REVOCATION: (_E, _L, _S),
}


@dataclass(frozen=True)
class VerificationLevel:
    """A preset level and the action it gives each validation after any overrides."""

    name: str
    actions: Mapping[Validation, Action] = field(compare=False)
    overrides: Mapping[Validation, Action] = field(default_factory=dict)

    def action(self, validation: Validation) -> Action:
        return self.actions[validation]

    @property
    def skip(self) -> bool:
        return self.name == "skip"

    def __str__(self) -> str:
        if not self.overrides:
            return self.name
        shown = ", ".join(f"{v.value}={a.value}" for v, a in self.overrides.items())
        return f"{self.name} ({shown})"


@dataclass(frozen=True)
class TrustStoreRef:
    """A named trust store, ``<type>:<name>`` in the policy."""

    type: StoreType
    name: str

    def __str__(self) -> str:
        return f"{self.type.value}:{self.name}"


@dataclass(frozen=True)
class TrustedIdentity:
    """An ``x509.subject:`` identity: the RDNs the signing certificate's subject must contain."""

    text: str
    attributes: Mapping[str, str] = field(compare=False)

    def matches(self, subject: Mapping[str, str]) -> bool:
        return all(subject.get(kind) == value for kind, value in self.attributes.items())


@dataclass(frozen=True)
class TrustPolicy:
    """One statement of the trust policy document."""

    name: str
    registry_scopes: tuple[str, ...]
    level: VerificationLevel
    verify_timestamp: VerifyTimestamp
    trust_stores: tuple[TrustStoreRef, ...]
    # Empty with any_identity (the "*" identity) or with a skip level.
    trusted_identities: tuple[TrustedIdentity, ...]
    any_identity: bool
    # Identities of other types than x509.subject (plugins evaluate them); trustd never matches
    # them, and says so when a signature meets no other identity.
    other_identities: tuple[str, ...] = ()
    source: str = ""

    def stores_of(self, kind: StoreType) -> tuple[TrustStoreRef, ...]:
        return tuple(ref for ref in self.trust_stores if ref.type is kind)


@dataclass(frozen=True)
class TrustPolicyDocument:
    version: str
    policies: tuple[TrustPolicy, ...]
    source: str = ""

    def policy_for(self, repository: str) -> TrustPolicy:
        """The statement for a fully qualified repository (``registry.example.com/app``): the
        one whose scopes name it, else the one with the ``*`` scope."""
        for policy in self.policies:
            if repository in policy.registry_scopes:
                return policy
        for policy in self.policies:
            if WILDCARD in policy.registry_scopes:
                return policy
        raise NoApplicableTrustPolicy(
            f"no statement of the Notation trust policy {self.source or '(unnamed)'} applies to "
            f"repository {repository} (no registryScopes entry names it, and there is no '*' "
            "scope)"
        )

    def store_refs(self) -> tuple[TrustStoreRef, ...]:
        """Every trust store some statement names, each once."""
        seen: dict[TrustStoreRef, None] = {}
        for policy in self.policies:
            for ref in policy.trust_stores:
                seen.setdefault(ref, None)
        return tuple(seen)


def parse_trust_policy(data: bytes, source: str) -> TrustPolicyDocument:
    """The trust policy document ``data`` holds; ``source`` (the file) names it in messages."""
    if len(data) > MAX_POLICY_BYTES:
        raise TrustPolicyError(f"{source}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        document = strictjson.loads(data)
    except strictjson.JsonError as error:
        raise TrustPolicyError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise TrustPolicyError(f"{source}: the document is not a JSON object")
    unknown = sorted(set(document) - {"version", "trustPolicies"})
    if unknown:
        raise TrustPolicyError(f"{source}: unknown members {', '.join(unknown)}")
    version = document.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise TrustPolicyError(
            f"{source}: version {version!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_VERSIONS)})"
        )
    statements = document.get("trustPolicies")
    if not isinstance(statements, list) or not statements:
        raise TrustPolicyError(f"{source}: trustPolicies must be a non-empty list of statements")
    policies: list[TrustPolicy] = []
    names: set[str] = set()
    scope_owner: dict[str, str] = {}
    for index, statement in enumerate(statements):
        policy = _statement(statement, index, source)
        if policy.name in names:
            raise TrustPolicyError(
                f"{source}: two trust policy statements are named {policy.name!r}; names must "
                "be unique"
            )
        names.add(policy.name)
        for scope in policy.registry_scopes:
            if scope in scope_owner:
                what = "the global scope '*'" if scope == WILDCARD else f"registry scope {scope!r}"
                raise TrustPolicyError(
                    f"{source}: {what} is in both statement {scope_owner[scope]!r} and "
                    f"statement {policy.name!r}; a scope may belong to one statement only"
                )
            scope_owner[scope] = policy.name
        policies.append(policy)
    return TrustPolicyDocument(version=version, policies=tuple(policies), source=source)


def _statement(statement: Any, index: int, source: str) -> TrustPolicy:
    if not isinstance(statement, dict):
        raise TrustPolicyError(f"{source}: trust policy statement {index + 1} is not an object")
    name = statement.get("name")
    if not isinstance(name, str) or not name:
        raise TrustPolicyError(f"{source}: trust policy statement {index + 1} has no name")
    where = f"{source}: trust policy statement {name!r}"
    unknown = sorted(set(statement) - _STATEMENT_MEMBERS)
    if unknown:
        raise TrustPolicyError(f"{where}: unknown members {', '.join(unknown)}")

    scopes = _string_list(statement.get("registryScopes"), where, "registryScopes")
    if not scopes:
        raise TrustPolicyError(f"{where}: registryScopes must list at least one scope")
    if WILDCARD in scopes and len(scopes) > 1:
        raise TrustPolicyError(
            f"{where}: the global scope '*' cannot be combined with other registry scopes"
        )
    for scope in scopes:
        if scope != WILDCARD and not _REPOSITORY.fullmatch(scope):
            raise TrustPolicyError(
                f"{where}: registry scope {scope!r} is not a fully qualified repository such "
                "as registry.example.com/team/app (no scheme, tag, digest or wildcard)"
            )
    if len(set(scopes)) != len(scopes):
        raise TrustPolicyError(f"{where}: registryScopes lists a scope twice")

    level, verify_timestamp = _verification(statement.get("signatureVerification"), where)
    stores_given = statement.get("trustStores")
    identities_given = statement.get("trustedIdentities")
    if level.skip:
        if stores_given or identities_given:
            raise TrustPolicyError(
                f"{where}: level skip verifies nothing, so it must not name trustStores or "
                "trustedIdentities"
            )
        if WILDCARD in scopes:
            raise TrustPolicyError(f"{where}: level skip cannot be used with the global scope '*'")
        return TrustPolicy(
            name=name,
            registry_scopes=tuple(scopes),
            level=level,
            verify_timestamp=verify_timestamp,
            trust_stores=(),
            trusted_identities=(),
            any_identity=False,
            source=source,
        )

    stores = _string_list(stores_given, where, "trustStores")
    identities = _string_list(identities_given, where, "trustedIdentities")
    if not stores or not identities:
        raise TrustPolicyError(
            f"{where}: level {level.name} needs both trustStores and trustedIdentities"
        )
    refs = tuple(dict.fromkeys(_store_ref(text, where) for text in stores))
    any_identity, x509_identities, others = _identities(identities, where)
    return TrustPolicy(
        name=name,
        registry_scopes=tuple(scopes),
        level=level,
        verify_timestamp=verify_timestamp,
        trust_stores=refs,
        trusted_identities=x509_identities,
        any_identity=any_identity,
        other_identities=others,
        source=source,
    )


def _string_list(value: Any, where: str, member: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TrustPolicyError(f"{where}: {member} must be a list of strings")
    return value


def _verification(value: Any, where: str) -> tuple[VerificationLevel, VerifyTimestamp]:
    if not isinstance(value, dict):
        raise TrustPolicyError(f"{where}: signatureVerification is missing or not an object")
    unknown = sorted(set(value) - _VERIFICATION_MEMBERS)
    if unknown:
        raise TrustPolicyError(f"{where}: unknown signatureVerification members {unknown}")
    name = value.get("level")
    if name not in PRESET_LEVELS:
        raise TrustPolicyError(
            f"{where}: signatureVerification level {name!r} is not one of "
            f"{', '.join(PRESET_LEVELS)}"
        )
    assert isinstance(name, str)
    timestamp_text = value.get("verifyTimestamp", VerifyTimestamp.ALWAYS.value)
    try:
        verify_timestamp = VerifyTimestamp(timestamp_text)
    except ValueError:
        raise TrustPolicyError(
            f"{where}: verifyTimestamp {timestamp_text!r} is not "
            f"{' or '.join(repr(v.value) for v in VerifyTimestamp)}"
        ) from None
    override = value.get("override", {})
    if not isinstance(override, dict):
        raise TrustPolicyError(f"{where}: override must be an object")
    if override and name == "skip":
        raise TrustPolicyError(f"{where}: level skip cannot be overridden")
    actions = dict(PRESET_LEVELS[name])
    overrides: dict[Validation, Action] = {}
    for key, action_text in override.items():
        try:
            validation = Validation(key)
        except ValueError:
            raise TrustPolicyError(
                f"{where}: override names {key!r}, which is not one of "
                f"{', '.join(v.value for v in Validation)}"
            ) from None
        if validation is Validation.INTEGRITY:
            raise TrustPolicyError(f"{where}: integrity cannot be overridden")
        allowed = _OVERRIDABLE[validation]
        action = next((a for a in allowed if a.value == action_text), None)
        if action is None:
            raise TrustPolicyError(
                f"{where}: override {key}={action_text!r} is not allowed (allowed: "
                f"{', '.join(a.value for a in allowed)})"
            )
        actions[validation] = action
        overrides[validation] = action
    return VerificationLevel(name, actions, overrides), verify_timestamp


def _store_ref(text: str, where: str) -> TrustStoreRef:
    kind, separator, name = text.partition(":")
    if not separator:
        raise TrustPolicyError(
            f"{where}: trust store {text!r} is not of the form <type>:<name> (e.g. ca:acme)"
        )
    try:
        store_type = StoreType(kind)
    except ValueError:
        raise TrustPolicyError(
            f"{where}: trust store {text!r} has type {kind!r}, not one of "
            f"{', '.join(t.value for t in StoreType)}"
        ) from None
    if not _STORE_NAME.fullmatch(name):
        raise TrustPolicyError(f"{where}: trust store {text!r} has a name outside [a-zA-Z0-9_.-]+")
    return TrustStoreRef(store_type, name)


def _identities(
    identities: list[str], where: str
) -> tuple[bool, tuple[TrustedIdentity, ...], tuple[str, ...]]:
    if WILDCARD in identities:
        if len(identities) > 1:
            raise TrustPolicyError(
                f"{where}: the trusted identity '*' cannot be combined with other identities"
            )
        return True, (), ()
    parsed: list[TrustedIdentity] = []
    others: list[str] = []
    for text in identities:
        if not text:
            raise TrustPolicyError(f"{where}: a trusted identity is empty")
        kind, separator, value = text.partition(":")
        if not separator:
            raise TrustPolicyError(
                f"{where}: trusted identity {text!r} has no type prefix (e.g. x509.subject:)"
            )
        if kind != X509_SUBJECT:
            others.append(text)
            continue
        try:
            attributes = parse_distinguished_name(value)
        except ValueError as error:
            raise TrustPolicyError(f"{where}: trusted identity {text!r}: {error}") from None
        parsed.append(TrustedIdentity(text, attributes))
    for first in parsed:
        for second in parsed:
            if first is not second and first.matches(second.attributes):
                raise TrustPolicyError(
                    f"{where}: trusted identities {second.text!r} and {first.text!r} overlap "
                    "(a certificate matching the first also matches the second)"
                )
    return False, tuple(parsed), tuple(others)


# --- distinguished names --------------------------------------------------------------------

_MANDATORY: Final = ("C", "ST", "O")
_SPECIAL: Final = frozenset(' "#+,;<=>\\')
_ATTRIBUTE_TYPE: Final = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)$")
_HEX: Final = frozenset("0123456789abcdefABCDEF")


def parse_distinguished_name(text: str) -> dict[str, str]:
    """An RFC 4514 distinguished name as attribute type -> value, by the Notary Project's rules:
    single-valued RDNs, each type once, C, ST (or S) and O present. ValueError if not."""
    if "=#" in text:
        raise ValueError("hex-encoded ('=#') attribute values are not supported")
    result: dict[str, str] = {}
    for rdn in _split(text, ",;"):
        if len(_split(rdn, "+")) > 1:
            raise ValueError("multi-valued RDNs ('+') are not supported")
        parts = _split(rdn, "=", limit=1)
        if len(parts) != 2:
            raise ValueError(f"RDN {rdn.strip()!r} is not of the form TYPE=value")
        kind = parts[0].strip().upper()
        if not _ATTRIBUTE_TYPE.fullmatch(kind):
            raise ValueError(f"{parts[0].strip()!r} is not an attribute type")
        kind = "ST" if kind == "S" else kind
        value = _unescape(parts[1])
        if not value:
            raise ValueError(f"attribute {kind} has an empty value")
        if kind in result:
            raise ValueError(f"attribute {kind} appears twice")
        result[kind] = value
    missing = [kind for kind in _MANDATORY if kind not in result]
    if missing:
        raise ValueError(f"must contain C, ST (or S) and O; {', '.join(missing)} missing")
    return result


def _split(text: str, separators: str, limit: int = -1) -> list[str]:
    """Split at unescaped separators (a backslash escapes the next character)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char in separators and (limit < 0 or len(parts) < limit):
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise ValueError(f"{text!r} ends with a lone backslash")
    parts.append("".join(current))
    return parts


def _unescape(raw: str) -> str:
    """An attribute value with escapes resolved and unescaped surrounding spaces removed."""
    # (character, escaped) pairs, so only unescaped spaces are trimmed.
    chars: list[tuple[str, bool]] = []
    pending = bytearray()
    index = 0

    def flush() -> None:
        if pending:
            try:
                chars.extend((char, True) for char in pending.decode("utf-8"))
            except UnicodeDecodeError:
                raise ValueError("a hex escape sequence is not UTF-8") from None
            pending.clear()

    while index < len(raw):
        char = raw[index]
        if char != "\\":
            flush()
            chars.append((char, False))
            index += 1
            continue
        pair = raw[index + 1 : index + 3]
        if len(pair) == 2 and set(pair) <= _HEX:
            pending.append(int(pair, 16))
            index += 3
            continue
        flush()
        escaped = raw[index + 1 : index + 2]
        if escaped not in _SPECIAL:
            raise ValueError(f"'\\{escaped}' is not a valid escape")
        chars.append((escaped, True))
        index += 2
    flush()
    while chars and chars[0] == (" ", False):
        chars.pop(0)
    while chars and chars[-1] == (" ", False):
        chars.pop()
    return "".join(char for char, _ in chars)


# Subject attributes by the names trusted identities use for them (those Go's crypto/x509 prints;
# a subject attribute of another type can never be matched, as in notation).
_SUBJECT_NAMES: Final = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.STREET_ADDRESS: "STREET",
    NameOID.POSTAL_CODE: "POSTALCODE",
    NameOID.SERIAL_NUMBER: "SERIALNUMBER",
}


def subject_attributes(name: x509.Name) -> dict[str, str]:
    """A certificate subject as attribute type -> value; ValueError when it cannot be compared
    with trusted identities (a multi-valued RDN, or an attribute type appearing twice)."""
    result: dict[str, str] = {}
    for rdn in name.rdns:
        if len(rdn) > 1:
            raise ValueError("the subject has a multi-valued RDN")
        for attribute in rdn:
            kind = _SUBJECT_NAMES.get(attribute.oid)
            if kind is None or not isinstance(attribute.value, str):
                continue
            if kind in result:
                raise ValueError(f"the subject has attribute {kind} more than once")
            result[kind] = attribute.value
    return result
