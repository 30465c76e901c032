"""Asking the formats a rule requires, and combining their answers (any of / all of)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from trustd.errors import (
    FormatNotConfigured,
    NoAcceptedSignature,
    SignaturesDisagree,
    SourceUnavailable,
    TrustdError,
)
from trustd.formats.base import (
    Combination,
    FormatName,
    Judgement,
    SignatureFormat,
    SignatureQuery,
    SignatureRequirement,
)

# A combined failure message keeps each format's reason, cut to this many characters.
_REASON_CHARS = 300


def judge_required(
    requirement: SignatureRequirement,
    formats: Mapping[FormatName, SignatureFormat],
    query: SignatureQuery,
) -> Judgement:
    """The combined answer of the formats ``requirement`` names, asked in the order it names them.

    *any of* stops at the first format that verifies; *all of* stops at the first that does not,
    and its formats must sign the same digest. A single format's answer is returned as it is.
    """
    answers: list[Judgement] = []
    for name in requirement.formats:
        answer = _ask(formats, name, query)
        answers.append(answer)
        if requirement.combination is Combination.ANY_OF and answer.verified:
            return answer
        if requirement.combination is Combination.ALL_OF and not answer.verified:
            return answer if len(requirement.formats) == 1 else _failed_one_of_all(answer)
    if len(answers) == 1:
        return answers[0]
    if requirement.combination is Combination.ANY_OF:
        return _none_verified(requirement, answers)
    return _all_verified(requirement, answers)


def _ask(
    formats: Mapping[FormatName, SignatureFormat], name: FormatName, query: SignatureQuery
) -> Judgement:
    signature_format = formats.get(name)
    if signature_format is None:
        error = FormatNotConfigured(
            f"{query.rule.source} requires {name.value} signatures, but this node has no "
            f"{name.value} configuration"
        )
        return Judgement(name, error=error)
    return signature_format.judge(query)


def _failed_one_of_all(answer: Judgement) -> Judgement:
    assert answer.error is not None
    error = _same_kind(answer.error, f"{answer.format.value}: {answer.error}")
    return replace(answer, error=error)


def _none_verified(requirement: SignatureRequirement, answers: Sequence[Judgement]) -> Judgement:
    reasons = "; ".join(f"{a.format.value}: {_cut(str(a.error))}" for a in answers)
    message = f"no accepted signature ({requirement.describe()}): {reasons}"
    errors = [a.error for a in answers if a.error is not None]
    # Only when every source was unreachable is this an outage; otherwise a signature failed.
    if errors and all(isinstance(error, SourceUnavailable) for error in errors):
        error: TrustdError = SourceUnavailable(message)
    else:
        error = NoAcceptedSignature(message)
    cached = next((a for a in answers if a.cached_age is not None), None)
    if cached is None:
        return Judgement(answers[0].format, error=error)
    return Judgement(cached.format, error=error, cached_age=cached.cached_age, outage=cached.outage)


def _all_verified(requirement: SignatureRequirement, answers: Sequence[Judgement]) -> Judgement:
    signed = [a.signed for a in answers if a.signed is not None]
    if not signed:  # a bare digest every format lets through unsigned
        return answers[0]
    if len(signed) != len(answers):
        # Some formats let an unsigned digest through and others verified it: the verified
        # ones stand for the rule.
        answers = [a for a in answers if a.signed is not None]
    digests = {s.digest for s in signed}
    first = signed[0]
    if len(digests) > 1:
        said = ", ".join(f"{a.format.value} signs {a.signed.digest}" for a in answers if a.signed)
        error = SignaturesDisagree(
            f"{first.name} of {first.repository}: the formats {requirement.describe()} "
            f"disagree ({said})"
        )
        return Judgement(answers[0].format, error=error)
    combined = replace(
        first,
        format="+".join(s.format for s in signed),
        signer="; ".join(f"{s.format}: {s.signer}" for s in signed),
        size=next((s.size for s in signed if s.size is not None), None),
        notes=tuple(note for s in signed for note in s.notes),
    )
    ages = [a.cached_age for a in answers if a.cached_age is not None]
    outage = next((a.outage for a in answers if a.outage is not None), None)
    return Judgement(
        answers[0].format, signed=combined, cached_age=max(ages, default=None), outage=outage
    )


def _same_kind(error: TrustdError, message: str) -> TrustdError:
    """An error of the same class with ``message``, so kubelet's reason stays what it was."""
    try:
        return type(error)(message)
    except TypeError:  # a class whose constructor takes more than a message
        return (
            SourceUnavailable(message)
            if isinstance(error, SourceUnavailable)
            else (NoAcceptedSignature(message))
        )


def _cut(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS] + "..."
