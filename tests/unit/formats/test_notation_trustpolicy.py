"""Notation trust policy documents: parsing, the specification's constraints, and selection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trustd.errors import ConfigError, TrustError
from trustd.formats.notation.errors import NoApplicableTrustPolicy, TrustPolicyError
from trustd.formats.notation.trustpolicy import (
    Action,
    StoreType,
    TrustStoreRef,
    Validation,
    VerifyTimestamp,
    parse_distinguished_name,
    parse_trust_policy,
)

SOURCE = "/etc/trustd/notation/trustpolicy.oci.json"


def statement(name: str = "images", **changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": name,
        "registryScopes": ["registry.example.com/app"],
        "signatureVerification": {"level": "strict"},
        "trustStores": ["ca:acme"],
        "trustedIdentities": ["*"],
    }
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def document(*statements: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"version": "1.0", "trustPolicies": list(statements), **top}).encode()


def refused(data: bytes, *fragments: str) -> TrustPolicyError:
    with pytest.raises(TrustPolicyError) as raised:
        parse_trust_policy(data, SOURCE)
    message = str(raised.value)
    assert message.startswith(SOURCE)
    for fragment in fragments:
        assert fragment in message, message
    return raised.value


def test_example_policy_of_the_specification_parses() -> None:
    data = document(
        statement(
            "wabbit-networks-images",
            registryScopes=[
                "registry.acme-rockets.io/software/net-monitor",
                "registry.acme-rockets.io/software/net-logger",
            ],
            trustStores=["ca:wabbit-networks"],
            trustedIdentities=[
                "x509.subject: C=US, ST=WA, L=Seattle, O=wabbit-networks.io, OU=Security Tools"
            ],
        ),
        statement(
            "unsigned-image",
            registryScopes=["registry.wabbit-networks.io/software/unsigned/net-utils"],
            signatureVerification={"level": "skip"},
            trustStores=None,
            trustedIdentities=None,
        ),
        statement(
            "use-expired-image",
            registryScopes=["registry.acme-rockets.io/software/legacy/metrics"],
            signatureVerification={
                "level": "strict",
                "override": {"expiry": "log", "revocation": "skip"},
            },
            trustStores=["ca:acme-rockets"],
        ),
        statement(
            "global-policy-for-all-other-images",
            registryScopes=["*"],
            signatureVerification={"level": "audit", "verifyTimestamp": "afterCertExpiry"},
            trustStores=["ca:acme-rockets", "ca:acme-rockets-ca2", "tsa:trusted-tsa"],
            trustedIdentities=[
                "x509.subject: C=US, ST=WA, L=Seattle, O=acme-rockets.io, OU=Finance, "
                "CN=SecureBuilder"
            ],
        ),
    )
    policy = parse_trust_policy(data, SOURCE)
    assert [p.name for p in policy.policies] == [
        "wabbit-networks-images",
        "unsigned-image",
        "use-expired-image",
        "global-policy-for-all-other-images",
    ]
    first = policy.policy_for("registry.acme-rockets.io/software/net-logger")
    assert first.name == "wabbit-networks-images"
    assert first.trust_stores == (TrustStoreRef(StoreType.CA, "wabbit-networks"),)
    assert dict(first.trusted_identities[0].attributes) == {
        "C": "US",
        "ST": "WA",
        "L": "Seattle",
        "O": "wabbit-networks.io",
        "OU": "Security Tools",
    }
    assert not first.any_identity
    skip = policy.policy_for("registry.wabbit-networks.io/software/unsigned/net-utils")
    assert skip.level.skip and skip.trust_stores == ()
    custom = policy.policy_for("registry.acme-rockets.io/software/legacy/metrics")
    assert custom.level.action(Validation.EXPIRY) is Action.LOG
    assert custom.level.action(Validation.REVOCATION) is Action.SKIP
    assert custom.level.action(Validation.AUTHENTICITY) is Action.ENFORCE
    assert str(custom.level) == "strict (expiry=log, revocation=skip)"
    assert custom.any_identity
    fallback = policy.policy_for("docker.io/library/nginx")
    assert fallback.name == "global-policy-for-all-other-images"
    assert fallback.verify_timestamp is VerifyTimestamp.AFTER_CERT_EXPIRY
    assert fallback.stores_of(StoreType.TSA) == (TrustStoreRef(StoreType.TSA, "trusted-tsa"),)
    # Each store once, though two statements name ca:acme-rockets.
    assert [str(ref) for ref in policy.store_refs()] == [
        "ca:wabbit-networks",
        "ca:acme-rockets",
        "ca:acme-rockets-ca2",
        "tsa:trusted-tsa",
    ]


def test_levels_give_the_specifications_actions() -> None:
    expected = {
        "strict": "EEEEE",
        "permissive": "EELLL",
        "audit": "ELLLL",
        "skip": "SSSSS",
    }
    order = [
        Validation.INTEGRITY,
        Validation.AUTHENTICITY,
        Validation.AUTHENTIC_TIMESTAMP,
        Validation.EXPIRY,
        Validation.REVOCATION,
    ]
    for level, actions in expected.items():
        changes: dict[str, Any] = {"signatureVerification": {"level": level}}
        if level == "skip":
            changes.update(trustStores=None, trustedIdentities=None)
        policy = parse_trust_policy(document(statement(**changes)), SOURCE).policies[0]
        got = "".join(policy.level.action(v).value[0].upper() for v in order)
        assert got == actions, level


def test_exact_scope_wins_over_the_global_scope() -> None:
    data = document(
        statement("global", registryScopes=["*"]),
        statement("exact", registryScopes=["registry.example.com/app"]),
    )
    policy = parse_trust_policy(data, SOURCE)
    assert policy.policy_for("registry.example.com/app").name == "exact"
    assert policy.policy_for("registry.example.com/app/sub").name == "global"


def test_no_applicable_policy_is_a_denial() -> None:
    policy = parse_trust_policy(document(statement()), SOURCE)
    with pytest.raises(NoApplicableTrustPolicy, match=r"registry\.example\.com/other") as raised:
        policy.policy_for("registry.example.com/other")
    assert isinstance(raised.value, TrustError)
    assert SOURCE in str(raised.value)


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (b"{", ("not valid JSON",)),
        (b"[]", ("not a JSON object",)),
        (json.dumps({"version": "2.0", "trustPolicies": []}).encode(), ("version '2.0'",)),
        (json.dumps({"trustPolicies": [statement()]}).encode(), ("version None",)),
        (document(), ("trustPolicies must be a non-empty list",)),
        (document(statement(), extra=1), ("unknown members extra",)),
        (b'{"version": "1.0", "version": "1.0"}', ("duplicate key 'version'",)),
        (document("x"), ("statement 1 is not an object",)),  # type: ignore[arg-type]
        (document(statement(name="")), ("statement 1 has no name",)),
        (
            document(statement("a"), statement("a", registryScopes=["r.example.com/b"])),
            ("two trust policy statements are named 'a'",),
        ),
        (
            document(statement("a"), statement("b")),
            ("registry scope 'registry.example.com/app' is in both statement 'a'", "'b'"),
        ),
        (
            document(statement("a", registryScopes=["*"]), statement("b", registryScopes=["*"])),
            ("global scope '*' is in both",),
        ),
        (
            document(statement(registryScopes=["*", "registry.example.com/app"])),
            ("statement 'images'", "'*' cannot be combined"),
        ),
        (document(statement(registryScopes=[])), ("at least one scope",)),
        (document(statement(registryScopes="x")), ("registryScopes must be a list",)),
        (
            document(statement(registryScopes=["registry.example.com/app:latest"])),
            ("registry scope 'registry.example.com/app:latest' is not a fully qualified",),
        ),
        (document(statement(registryScopes=["app"])), ("'app' is not a fully qualified",)),
        (document(statement(registryScopes=["registry.example.com/*"])), ("fully qualified",)),
        (document(statement(registryScopes=["https://r.example.com/a"])), ("fully qualified",)),
        (document(statement(registryScopes=["r.example.com/App"])), ("fully qualified",)),
        (document(statement(registryScopes=["r.example.com/a\n"])), ("fully qualified",)),
        (
            document(statement(registryScopes=["r.example.com/a", "r.example.com/a"])),
            ("lists a scope twice",),
        ),
        (document(statement(trustStore=["ca:x"])), ("unknown members trustStore",)),
        (document(statement(signatureVerification=None)), ("signatureVerification is missing",)),
        (
            document(statement(signatureVerification={"level": "lenient"})),
            ("level 'lenient' is not one of strict, permissive, audit, skip",),
        ),
        (
            document(statement(signatureVerification={"level": "strict", "mode": "x"})),
            ("unknown signatureVerification members",),
        ),
        (
            document(
                statement(signatureVerification={"level": "strict", "verifyTimestamp": "never"})
            ),
            ("verifyTimestamp 'never'",),
        ),
        (
            document(
                statement(
                    signatureVerification={"level": "strict", "override": {"integrity": "log"}}
                )
            ),
            ("integrity cannot be overridden",),
        ),
        (
            document(
                statement(signatureVerification={"level": "strict", "override": {"expiry": "skip"}})
            ),
            ("override expiry='skip' is not allowed",),
        ),
        (
            document(
                statement(
                    signatureVerification={"level": "strict", "override": {"authenticity": "x"}}
                )
            ),
            ("override authenticity='x'",),
        ),
        (
            document(
                statement(signatureVerification={"level": "strict", "override": {"speed": "log"}})
            ),
            ("override names 'speed'",),
        ),
        (
            document(
                statement(
                    signatureVerification={"level": "skip", "override": {"expiry": "log"}},
                    trustStores=None,
                    trustedIdentities=None,
                )
            ),
            ("level skip cannot be overridden",),
        ),
        (
            document(statement(signatureVerification={"level": "skip"})),
            ("level skip verifies nothing, so it must not name trustStores",),
        ),
        (
            document(
                statement(
                    registryScopes=["*"],
                    signatureVerification={"level": "skip"},
                    trustStores=None,
                    trustedIdentities=None,
                )
            ),
            ("skip cannot be used with the global scope",),
        ),
        (document(statement(trustStores=None)), ("needs both trustStores and trustedIdentities",)),
        (document(statement(trustStores=[])), ("needs both",)),
        (document(statement(trustedIdentities=None)), ("needs both",)),
        (document(statement(trustStores=["acme"])), ("not of the form <type>:<name>",)),
        (document(statement(trustStores=["x509:acme"])), ("has type 'x509'",)),
        (document(statement(trustStores=["ca:../etc"])), ("name outside",)),
        (document(statement(trustStores=["ca:"])), ("name outside",)),
        (
            document(statement(trustedIdentities=["*", "x509.subject: C=US, ST=WA, O=x"])),
            ("'*' cannot be combined with other identities",),
        ),
        (document(statement(trustedIdentities=[""])), ("a trusted identity is empty",)),
        (document(statement(trustedIdentities=["C=US"])), ("has no type prefix",)),
        (
            document(statement(trustedIdentities=["x509.subject: C=US, O=x"])),
            ("must contain C, ST (or S) and O; ST missing",),
        ),
        (
            document(statement(trustedIdentities=["x509.subject:"])),
            ("x509.subject:",),
        ),
        (
            document(
                statement(
                    trustedIdentities=[
                        "x509.subject: C=US, ST=WA, O=acme, OU=org1",
                        "x509.subject: C=US, ST=WA, O=acme",
                    ]
                )
            ),
            ("overlap",),
        ),
        (
            document(
                statement(
                    trustedIdentities=[
                        "x509.subject: C=US, ST=WA, O=acme",
                        "x509.subject: C=US, S=WA, O=acme",
                    ]
                )
            ),
            ("overlap",),
        ),
    ],
)
def test_invalid_documents_are_refused(data: bytes, fragments: tuple[str, ...]) -> None:
    error = refused(data, *fragments)
    assert isinstance(error, ConfigError)


def test_oversized_document_is_refused() -> None:
    refused(b" " * (1024 * 1024 + 1), "larger than")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("C=US, ST=WA, O=acme", {"C": "US", "ST": "WA", "O": "acme"}),
        ("C=US,S=WA,O=acme", {"C": "US", "ST": "WA", "O": "acme"}),
        ("C=US; ST=WA; O=acme", {"C": "US", "ST": "WA", "O": "acme"}),
        ("c=US, st=WA, o=acme, cn=x", {"C": "US", "ST": "WA", "O": "acme", "CN": "x"}),
        ("C=US, ST=WA, O=a\\, b\\; c", {"C": "US", "ST": "WA", "O": "a, b; c"}),
        ("C=US, ST=WA, O=\\ spaced\\ ", {"C": "US", "ST": "WA", "O": " spaced "}),
        ("C=US, ST=WA, O=back\\\\slash", {"C": "US", "ST": "WA", "O": "back\\slash"}),
        ("C=US, ST=WA, O=caf\\C3\\A9", {"C": "US", "ST": "WA", "O": "café"}),
        ("C=US, ST=WA, O=a=b", {"C": "US", "ST": "WA", "O": "a=b"}),
        (
            "C=US, ST=WA, O=acme, 2.5.4.11=unit",
            {"C": "US", "ST": "WA", "O": "acme", "2.5.4.11": "unit"},
        ),
    ],
)
def test_distinguished_names(text: str, expected: dict[str, str]) -> None:
    assert parse_distinguished_name(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("C=US, ST=WA, O=acme+OU=x", "multi-valued"),
        ("C=US, ST=WA, O=#04024869", "'=#'"),
        ("C=US, ST=WA, O=acme, O=other", "appears twice"),
        ("C=US, ST=WA, O=", "empty value"),
        ("C=US, ST=WA, O", "TYPE=value"),
        ("C=US, ST=WA, O=acme,", "TYPE=value"),
        ("C=US, ST=WA, O=a\\qb", "not a valid escape"),
        ("C=US, ST=WA, O=a\\", "lone backslash"),
        ("C=US, ST=WA, O=\\FF", "not UTF-8"),
        ("C=US, S T=WA, O=acme", "not an attribute type"),
    ],
)
def test_invalid_distinguished_names(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_distinguished_name(text)
