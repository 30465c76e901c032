"""The one question every signature format answers, and the shape of its answer.

"Which digest is ``reference`` signed as?" Notary v1 answers from TUF trust data on a Notary
server; Notation and cosign from signatures stored beside the image in its registry. Each
format implements ``SignatureFormat.judge``; the policy (``trustd.policy``) decides which formats
a rule requires and how their answers combine, and nothing else reaches a format directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from trustd.errors import TrustdError

if TYPE_CHECKING:
    from trustd.config.model import PolicyRule
    from trustd.names.reference import Reference
    from trustd.net.credentials import Credentials


class FormatName(StrEnum):
    """The signature formats a policy rule can require (the names used in the config)."""

    NOTARY_V1 = "notary-v1"
    NOTATION = "notation"
    COSIGN = "cosign"


class Combination(StrEnum):
    """How a rule that names several formats combines them."""

    ANY_OF = "any_of"  # one verified signature admits (migrating from one format to another)
    ALL_OF = "all_of"  # every format must verify, as the same digest (independent signers)


@dataclass(frozen=True)
class SignatureRequirement:
    """Which formats a rule requires, and how they combine."""

    formats: tuple[FormatName, ...] = (FormatName.NOTARY_V1,)
    combination: Combination = Combination.ANY_OF

    def describe(self) -> str:
        """``notary-v1``, ``any of notary-v1, notation`` or ``all of notary-v1, cosign``."""
        if len(self.formats) == 1:
            return self.formats[0].value
        names = ", ".join(name.value for name in self.formats)
        return f"{self.combination.value.replace('_', ' ')} {names}"


NOTARY_V1_ONLY = SignatureRequirement()


@dataclass(frozen=True)
class SignedDigest:
    """``name`` (a tag, or the digest asked about) of ``repository`` is signed as ``digest``."""

    format: str  # a FormatName value, or several joined by "+" when all of them verified
    repository: str
    name: str
    digest: str  # "sha256:<hex>"
    signer: str  # Notary roles, a certificate subject, cosign key IDs
    size: int | None = None  # the signed size, where the format signs one
    # Checks a rule's level logged instead of enforcing (Notation's permissive and audit).
    notes: tuple[str, ...] = ()

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class SignatureQuery:
    """What a format is asked: the reference (a tag, a digest, or a tag with the digest it was
    resolved to), the rule that applies, and the pull's credentials."""

    reference: Reference
    rule: PolicyRule
    credentials: Credentials | None = None
    # A bare digest needs a signature even if the rule lets unsigned digests through
    # (trustctl verify asks "is this signed?").
    require_signed_digests: bool | None = None

    @property
    def digest_must_be_signed(self) -> bool:
        if self.require_signed_digests is not None:
            return self.require_signed_digests
        return self.rule.require_signed_digests


@dataclass(frozen=True)
class Judgement:
    """One format's answer: the signed digest, or why there is none.

    ``signed`` and ``error`` are both None for a bare digest the rule lets through unsigned.
    ``cached_age`` (seconds since the source last confirmed it) is set when the answer came from
    what this node verified before, because the source could not be reached (``outage``).
    """

    format: FormatName
    signed: SignedDigest | None = None
    error: TrustdError | None = None
    cached_age: float | None = None
    outage: str | None = None

    @property
    def verified(self) -> bool:
        return self.error is None


class SignatureFormat(Protocol):
    """A signature format: answers a query, never raising for what it finds in trust data."""

    @property
    def name(self) -> FormatName: ...

    def judge(self, query: SignatureQuery) -> Judgement:
        """The digest ``query.reference`` is signed as under ``query.rule``, or why not.

        Trust failures, outages and bad configuration come back as ``Judgement.error``; the
        call waits no longer than the caller's deadline (``trustd.net.deadline``).
        """
        ...
