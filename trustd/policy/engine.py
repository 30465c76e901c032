"""The node policy: for one requested image, what to pull, or why not.

``PolicyEngine.decide`` is the question the CRI shim asks before a pull; ``judge_resolved`` is the
one containerd's image-verifier hook asks after containerd has resolved a name to a digest
(``trustd.programs.image_verifier``). Both parse the reference, find the rule, ask the trust engine,
and return a ``Decision``; they never raise for bad input. Every decision is handed to the observers
(audit log, metrics) before it is returned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from trustd.config.model import Config, PolicyRule
from trustd.errors import (
    DigestNotSigned,
    InvalidReference,
    TrustdError,
    denial_message,
)
from trustd.formats.base import (
    Combination,
    FormatName,
    Judgement,
    SignatureFormat,
    SignatureQuery,
    SignatureRequirement,
    SignedDigest,
)
from trustd.formats.notary.engine import TrustEngine
from trustd.formats.notary.format import NotaryV1Format
from trustd.names.reference import Reference, parse_digest, parse_reference
from trustd.net.credentials import Credentials
from trustd.net.deadline import call_deadline
from trustd.policy.requirement import judge_required

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    ALLOW = "allow"  # verified (enforce or audit), or not subject to verification (off, exempt)
    DENY = "deny"  # refused; the pull does not happen
    AUDIT_FAIL = "audit-fail"  # verification failed, admitted because the rule is in audit mode


class Action(StrEnum):
    PULL = "pull"  # the shim's PullImage
    STATUS = "status"  # the shim's ImageStatus
    VERIFY = "verify"  # containerd's image-verifier hook: a name already resolved to a digest


@dataclass(frozen=True)
class Decision:
    """The outcome of one policy question, as audited and as acted on by the shim."""

    image: str
    action: Action
    verdict: Verdict
    mode: str  # "enforce" | "audit" | "off" | "exempt" | "invalid"
    reason: str
    reference: Reference | None = None
    pull_ref: str | None = None  # what containerd is asked for; None when denied
    signed: SignedDigest | None = None
    rule: str = ""
    error: TrustdError | None = field(default=None, compare=False)
    latency_seconds: float = 0.0
    # Judged from trust data cached on this node while Notary was unreachable: seconds since
    # the server last confirmed it. None when the server answered (or nothing was looked up).
    cached_age: float | None = None
    # The signature format(s) the decision rests on: what verified (``signed.format``), else
    # what the rule requires (``format_label``); "" when no signature was asked for.
    format: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.DENY

    @property
    def gun(self) -> str | None:
        return self.reference.repository if self.reference else None

    @property
    def message(self) -> str:
        """The denial as kubelet and containerd's verifier hook report it (first line says all)."""
        return denial_message(self.error, self.reason)


Observer = Callable[[Decision], None]


class PolicyEngine:
    """Decides every image request against the current config; safe to call concurrently."""

    def __init__(
        self,
        config: Config,
        trust: TrustEngine,
        formats: Callable[[Config], Mapping[FormatName, SignatureFormat]] | None = None,
    ) -> None:
        """``formats(config)`` builds the formats beyond Notary v1 that ``config`` configures
        (``trustd.formats.configured``), again on every reconfigure."""
        self._config = config
        self.trust = trust
        self._build_formats = formats
        self.formats = self._formats_for(config)
        self._observers: list[Observer] = []
        self._lock = threading.Lock()

    def _formats_for(self, config: Config) -> dict[FormatName, SignatureFormat]:
        # Notary v1 is always there (its engine is the node's); Notation and cosign when
        # configured. Rules reach formats only through ``judge_required``.
        formats: dict[FormatName, SignatureFormat] = {
            FormatName.NOTARY_V1: NotaryV1Format(self.trust)
        }
        if self._build_formats is not None:
            formats.update(self._build_formats(config))
        return formats

    @property
    def config(self) -> Config:
        return self._config

    def reconfigure(self, config: Config) -> None:
        """Judge by ``config`` from now on; ConfigError (and nothing changed) when its formats
        cannot be built."""
        formats = self._formats_for(config)
        with self._lock:
            self._config = config
            self.formats = formats
        self.trust.reconfigure(config)

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    def decide(
        self,
        image: str,
        credentials: Credentials | None = None,
        action: Action = Action.PULL,
        timeout: float | None = None,
    ) -> Decision:
        """Judge ``image``; ``timeout`` (seconds) bounds the Notary requests and their retries."""
        started = time.monotonic()
        with call_deadline(timeout):
            decision = self._decide(image, credentials, action)
        decision = replace(decision, latency_seconds=time.monotonic() - started)
        self._notify(decision)
        return decision

    def signature_of(
        self,
        reference: Reference,
        credentials: Credentials | None = None,
        *,
        require_signed_digests: bool | None = None,
    ) -> Judgement:
        """Which digest ``reference`` is signed as under the rule that applies, or why not.

        The formats' answer without the rule's mode applied and without observers (nothing is
        audited): what ``trustctl verify`` and ``explain`` show. ``require_signed_digests``
        overrides the rule's for a bare digest.
        """
        rule = self._config.rule_for(reference.repository)
        query = SignatureQuery(reference, rule, credentials, require_signed_digests)
        return judge_required(rule.signatures, self.formats, query)

    def signatures_each(
        self, reference: Reference, credentials: Credentials | None = None
    ) -> tuple[Judgement, ...]:
        """Each format the rule for ``reference`` requires, asked on its own and in the rule's
        order: what ``trustctl explain`` shows (a decision stops at the first format that
        settles it). Nothing is audited."""
        rule = self._config.rule_for(reference.repository)
        query = SignatureQuery(reference, rule, credentials)
        return tuple(
            judge_required(SignatureRequirement((name,)), self.formats, query)
            for name in rule.signatures.formats
        )

    def judge_resolved(
        self, image: str, resolved_digest: str, timeout: float | None = None
    ) -> Decision:
        """May ``image``, which containerd resolved to ``resolved_digest``, be pulled?

        The question is the shim's, asked about ``image`` pinned to the resolved digest: a tag is
        admitted only if it is signed as exactly that digest (a tag re-pushed in the registry
        resolves to other bytes and is refused), a digest reference only if it is a signed target
        (``require_signed_digests``). Exempt, off, audit and Notary outages behave as for pulls.
        ``timeout`` as for ``decide``. Never raises.
        """
        started = time.monotonic()
        try:
            pinned = _pin_to_resolved(image, resolved_digest)
        except InvalidReference as error:
            decision = Decision(
                image, Action.VERIFY, Verdict.DENY, "invalid", str(error), error=error
            )
        else:
            with call_deadline(timeout):
                decision = self._decide_reference(image, pinned, None, Action.VERIFY)
        decision = replace(decision, latency_seconds=time.monotonic() - started)
        self._notify(decision)
        return decision

    def check_local_image(self, decision: Decision, repo_digests: Sequence[str]) -> Decision:
        """Is the image containerd holds for an admitted reference the signed one?

        ``repo_digests`` are the local image's ``repo@sha256:…`` names. Decisions without a
        signed digest (off, exempt, unsigned digests a rule lets through) are returned as they
        are. A local image that is not the signed one is denied in enforce mode (ImageStatus then
        reports it absent, so kubelet pulls the signed one) and is an audit failure in audit
        mode (it was pulled as asked); either is recorded like any other decision.
        """
        signed = decision.signed
        if signed is None or not decision.allowed:
            return decision
        if f"{signed.repository}@{signed.digest}" in repo_digests:
            return decision
        local = ", ".join(repo_digests) or "an image without a repository digest"
        if decision.action is Action.PULL:
            what = f"pulled {local}"
        else:
            what = f"the local image is {local}"
        error = DigestNotSigned(
            f"{what}, but tag {signed.name} of {signed.repository} is signed as {signed.digest}"
        )
        verdict = Verdict.AUDIT_FAIL if decision.mode == "audit" else Verdict.DENY
        checked = replace(decision, verdict=verdict, reason=str(error), error=error)
        if verdict is Verdict.DENY:
            checked = replace(checked, pull_ref=None)
        self._notify(checked)
        return checked

    def _notify(self, decision: Decision) -> None:
        for observer in self._observers:
            try:
                observer(decision)
            except Exception:  # an audit sink failing must not turn into a crash or an admit
                log.exception("decision observer failed")

    def _decide(self, image: str, credentials: Credentials | None, action: Action) -> Decision:
        try:
            reference = parse_reference(image)
        except InvalidReference as error:
            return Decision(image, action, Verdict.DENY, "invalid", str(error), error=error)
        return self._decide_reference(image, reference, credentials, action)

    def _decide_reference(
        self,
        image: str,
        reference: Reference,
        credentials: Credentials | None,
        action: Action,
    ) -> Decision:
        matched = policy_match(self._config, reference)
        if matched.rule is None:
            return Decision(
                image,
                action,
                Verdict.ALLOW,
                "exempt",
                f"exempt by pattern {matched.exemption!r}",
                reference=reference,
                pull_ref=str(reference),
                rule=f"exempt {matched.exemption!r}",
            )

        rule = matched.rule
        rule_name = _rule_label(rule)
        if rule.mode == "off":
            return Decision(
                image,
                action,
                Verdict.ALLOW,
                "off",
                "verification is off for this repository",
                reference=reference,
                pull_ref=str(reference),
                rule=rule_name,
            )

        query = SignatureQuery(reference, rule, credentials)
        answer = judge_required(rule.signatures, self.formats, query)
        cached_age = answer.cached_age
        required = format_label(rule.signatures)
        if answer.error is not None:
            reason = str(answer.error)
            if cached_age is not None:
                reason += _cached_clause(answer)
            if rule.mode == "audit":
                return Decision(
                    image,
                    action,
                    Verdict.AUDIT_FAIL,
                    "audit",
                    reason,
                    reference=reference,
                    pull_ref=str(reference),
                    rule=rule_name,
                    error=answer.error,
                    cached_age=cached_age,
                    format=required,
                )
            return Decision(
                image,
                action,
                Verdict.DENY,
                rule.mode,
                reason,
                reference=reference,
                rule=rule_name,
                error=answer.error,
                cached_age=cached_age,
                format=required,
            )

        signed = answer.signed
        if signed is None:  # an unsigned digest reference the rule lets through
            reason = "digest reference admitted without a signature (require_signed_digests off)"
            pull_ref = str(reference)
        else:
            reason = f"signed by {signed.signer} as {signed.digest}"
            if signed.format != FormatName.NOTARY_V1.value:
                reason = f"{signed.format} signature by {signed.signer} for {signed.digest}"
            if signed.notes:
                reason += f" ({'; '.join(signed.notes)})"
            # Audit mode pulls what was asked; enforce pins the pull to the signed bytes.
            pull_ref = str(reference) if rule.mode == "audit" else reference.pinned(signed.digest)
        if cached_age is not None:
            reason += _cached_clause(answer)
        return Decision(
            image,
            action,
            Verdict.ALLOW,
            rule.mode,
            reason,
            reference=reference,
            pull_ref=pull_ref,
            signed=signed,
            rule=rule_name,
            cached_age=cached_age,
            format=signed.format if signed is not None else required,
        )


@dataclass(frozen=True)
class PolicyMatch:
    """Which entry of the config applies to a reference: an exemption, or a rule."""

    exemption: str | None = None  # the ``exempt`` pattern, when exempt
    exemption_index: int | None = None
    rule: PolicyRule | None = None  # the rule that applies, when not exempt

    @property
    def source(self) -> str:
        """``exempt[0]``, ``policy[2]`` or ``default rule``."""
        if self.rule is None:
            return f"exempt[{self.exemption_index}]"
        return self.rule.source


def policy_match(config: Config, reference: Reference) -> PolicyMatch:
    """The exemption or rule that applies to ``reference``: what ``PolicyEngine`` decides by and
    what ``trustctl explain`` shows."""
    exemption = config.exemption_for(reference)
    if exemption is not None:
        index, text = exemption
        return PolicyMatch(exemption=text, exemption_index=index)
    return PolicyMatch(rule=config.rule_for(reference.repository))


def format_label(requirement: SignatureRequirement) -> str:
    """A rule's formats as decisions name them: ``notation``, ``notary-v1+notation`` (all of
    them) or ``notary-v1|notation`` (any of them); a verified *all of* is named the same way."""
    joiner = "+" if requirement.combination is Combination.ALL_OF else "|"
    return joiner.join(name.value for name in requirement.formats)


def _cached_clause(answer: Judgement) -> str:
    what = "trust data" if answer.format is FormatName.NOTARY_V1 else "signatures verified"
    return (
        f" (judged from {what} cached on this node, confirmed {answer.cached_age:.0f}s "
        f"ago, because {answer.outage})"
    )


def _pin_to_resolved(image: str, resolved_digest: str) -> Reference:
    """``image`` with the digest containerd resolved it to (a tag stays, to be checked)."""
    parse_digest(resolved_digest)
    reference = parse_reference(image)
    if reference.digest is not None and reference.digest != resolved_digest:
        # containerd resolves a digest reference to itself; anything else is not what was named.
        raise InvalidReference(
            f"{image} names {reference.digest}, but containerd resolved it to {resolved_digest}"
        )
    return replace(reference, digest=resolved_digest)


def _rule_label(rule: PolicyRule) -> str:
    return rule.source
