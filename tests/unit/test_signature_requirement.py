"""A rule's `signatures` key, and how the answers of the formats it names combine."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from trustd.config.load import parse_config
from trustd.config.model import PolicyRule
from trustd.errors import (
    ConfigError,
    FormatNotConfigured,
    NoAcceptedSignature,
    NotaryUnavailable,
    RegistryUnavailable,
    SignaturesDisagree,
    SourceUnavailable,
    TagNotSigned,
    TrustdError,
    kubernetes_reason,
)
from trustd.formats.base import (
    Combination,
    FormatName,
    Judgement,
    SignatureQuery,
    SignatureRequirement,
    SignedDigest,
)
from trustd.names.reference import parse_reference
from trustd.policy.requirement import judge_required

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
REFERENCE = parse_reference("registry.example.com/app:1.0")
NOTARY, NOTATION, COSIGN = FormatName.NOTARY_V1, FormatName.NOTATION, FormatName.COSIGN


# Every format configured, so a rule may name any of them.
_FORMATS = '[notation]\nconfig_dir = "notation"\n'
_COSIGN_KEYS = f'[policy.cosign]\nkeys = ["{__file__}"]\n'


def rule_with(signatures: str) -> PolicyRule:
    text = (
        f'{_FORMATS}[[policy]]\nmatch = "registry.example.com/**"\n'
        f"signatures = {signatures}\n{_COSIGN_KEYS}"
    )
    return parse_config(text, "trustd.toml").policy[0]


def test_a_rule_naming_a_format_needs_its_configuration() -> None:
    with pytest.raises(ConfigError, match=r"policy\[0\]\.signatures: names notation, but "):
        parse_config('[[policy]]\nmatch = "**"\nsignatures = "notation"\n', "trustd.toml")
    with pytest.raises(ConfigError, match=r"policy\[0\]\.signatures: names cosign, but "):
        parse_config('[[policy]]\nmatch = "**"\nsignatures = "cosign"\n', "trustd.toml")


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('"notation"', SignatureRequirement((NOTATION,))),
        (
            '{ any_of = ["notary-v1", "notation"] }',
            SignatureRequirement((NOTARY, NOTATION), Combination.ANY_OF),
        ),
        (
            '{ all_of = ["cosign", "notary-v1"] }',
            SignatureRequirement((COSIGN, NOTARY), Combination.ALL_OF),
        ),
    ],
)
def test_the_forms_of_the_key(written: str, expected: SignatureRequirement) -> None:
    assert rule_with(written).signatures == expected


def test_a_rule_without_the_key_requires_notary_v1_alone() -> None:
    config = parse_config('[[policy]]\nmatch = "**"\n', "trustd.toml")
    assert config.policy[0].signatures == SignatureRequirement((NOTARY,))


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ('"gpg"', r'policy\[0\]\.signatures: unknown signature format "gpg"'),
        ('{ one_of = ["notation"] }', r"signatures: unknown key one_of: use any_of or all_of"),
        ("{ any_of = [] }", r"signatures\.any_of: must be a non-empty array"),
        ('{ all_of = ["cosign", "cosign"] }', r"signatures\.all_of: names a format more than"),
        ('{ any_of = ["cosign"], all_of = ["notation"] }', r"a table with one key"),
        ("3", r"must be a format name"),
    ],
)
def test_bad_values_name_the_file_and_key(written: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^trustd\.toml: .*" + message):
        rule_with(written)


@dataclass
class Answering:
    """A format that gives a fixed answer and counts how often it was asked."""

    format_name: FormatName
    signed: str | None = None
    error: TrustdError | None = None
    asked: list[SignatureQuery] = field(default_factory=list)

    @property
    def name(self) -> FormatName:
        return self.format_name

    def judge(self, query: SignatureQuery) -> Judgement:
        self.asked.append(query)
        if self.error is not None:
            return Judgement(self.format_name, error=self.error)
        assert self.signed is not None
        signed = SignedDigest(self.format_name.value, "app", "1.0", self.signed, "someone")
        return Judgement(self.format_name, signed=signed)


def judge(requirement: SignatureRequirement, *formats: Answering) -> Judgement:
    query = SignatureQuery(REFERENCE, rule_with('"notary-v1"'))
    return judge_required(requirement, {f.format_name: f for f in formats}, query)


def test_any_of_stops_at_the_first_format_that_verifies() -> None:
    notary = Answering(NOTARY, signed=A)
    notation = Answering(NOTATION, signed=B)
    answer = judge(SignatureRequirement((NOTARY, NOTATION)), notary, notation)
    assert answer.signed is not None and answer.signed.digest == A
    assert notation.asked == []


def test_any_of_falls_through_to_the_next_format() -> None:
    notary = Answering(NOTARY, error=TagNotSigned("tag 1.0 is not signed"))
    notation = Answering(NOTATION, signed=B)
    answer = judge(SignatureRequirement((NOTARY, NOTATION)), notary, notation)
    assert answer.signed is not None and answer.signed.digest == B
    assert answer.format is NOTATION


def test_any_of_with_none_verified_lists_every_reason() -> None:
    notary = Answering(NOTARY, error=TagNotSigned("tag 1.0 is not signed"))
    notation = Answering(NOTATION, error=RegistryUnavailable("registry down"))
    answer = judge(SignatureRequirement((NOTARY, NOTATION)), notary, notation)
    assert isinstance(answer.error, NoAcceptedSignature)
    assert str(answer.error) == (
        "no accepted signature (any of notary-v1, notation): notary-v1: tag 1.0 is not "
        "signed; notation: registry down"
    )
    assert kubernetes_reason(answer.error) == "SignatureValidationFailed"


def test_any_of_is_an_outage_only_when_every_source_was_down() -> None:
    notary = Answering(NOTARY, error=NotaryUnavailable("notary down"))
    notation = Answering(NOTATION, error=RegistryUnavailable("registry down"))
    answer = judge(SignatureRequirement((NOTARY, NOTATION)), notary, notation)
    assert isinstance(answer.error, SourceUnavailable)
    assert kubernetes_reason(answer.error) == "RegistryUnavailable"


def test_all_of_needs_every_format_and_one_digest() -> None:
    both = SignatureRequirement((NOTARY, COSIGN), Combination.ALL_OF)
    answer = judge(both, Answering(NOTARY, signed=A), Answering(COSIGN, signed=A))
    assert answer.signed is not None
    assert (answer.signed.format, answer.signed.digest) == ("notary-v1+cosign", A)
    assert answer.signed.signer == "notary-v1: someone; cosign: someone"

    disagree = judge(both, Answering(NOTARY, signed=A), Answering(COSIGN, signed=B))
    assert isinstance(disagree.error, SignaturesDisagree)
    assert f"notary-v1 signs {A}, cosign signs {B}" in str(disagree.error)

    cosign = Answering(COSIGN, signed=A)
    failed = judge(both, Answering(NOTARY, error=TagNotSigned("not signed")), cosign)
    assert isinstance(failed.error, TagNotSigned)
    assert str(failed.error) == "notary-v1: not signed"
    assert cosign.asked == []  # all of: the first failure decides


def test_a_format_this_node_has_no_configuration_for_is_a_denial() -> None:
    answer = judge(SignatureRequirement((COSIGN,)))
    assert isinstance(answer.error, FormatNotConfigured)
    assert "requires cosign signatures, but this node has no cosign configuration" in str(
        answer.error
    )
