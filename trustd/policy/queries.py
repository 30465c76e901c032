"""trustctl's answers, made alike in its own process and in the daemon.

``trustctl verify`` prints what ``verify_answer`` returns, whether it judges in its own process
(``trustd.programs.trustctl_commands``: ``--local``, or no daemon to ask) or the daemon answers it
on its verifier socket (``trustd.programs.trustctl`` asks, ``trustd.service.daemon`` answers with
its own config and trust engine). One function makes both answers, so they cannot drift apart.

Exit statuses: 0 success; 1 the image is not trusted; 2 bad usage, reference or config;
3 the Notary server or registry could not be reached.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, NamedTuple

from trustd.errors import ConfigError, InvalidReference, SourceUnavailable
from trustd.names.reference import parse_reference

if TYPE_CHECKING:
    from trustd.net.credentials import Credentials
    from trustd.policy.engine import PolicyEngine

EXIT_OK = 0
EXIT_UNTRUSTED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class VerifyAnswer(NamedTuple):
    """What ``trustctl verify`` prints and how it exits."""

    status: int
    stdout: str
    stderr: str


def status_for(error: Exception) -> int:
    if isinstance(error, SourceUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, InvalidReference | ConfigError):
        return EXIT_USAGE
    return EXIT_UNTRUSTED


def failure(error: Exception) -> VerifyAnswer:
    """The one stderr line trustctl gives for ``error``, and its exit status."""
    return VerifyAnswer(status_for(error), "", f"trustctl: {error}\n")


def verify_answer(
    policy: PolicyEngine,
    image: str,
    credentials: Credentials | None,
    as_json: bool,
) -> VerifyAnswer:
    """``trustctl verify IMAGE [--json]`` under ``policy`` (its config and formats, left open:
    the daemon's serves on): the signed digest of ``image`` as typed, or why it is not trusted."""
    try:
        reference = parse_reference(image)
    except InvalidReference as error:
        return failure(error)
    # trustctl answers "is this signed?", so a digest is checked whatever the rule allows.
    answer = policy.signature_of(reference, credentials, require_signed_digests=True)
    if answer.error is not None:
        return failure(answer.error)
    signed = answer.signed
    assert signed is not None
    if as_json:
        document = {
            "reference": str(reference),
            "gun": reference.repository,
            "tag": signed.name,
            "digest": signed.digest,
            "size": signed.size,
            "role": signed.signer,
            "format": signed.format,
            "pinned": reference.pinned(signed.digest),
        }
        return VerifyAnswer(EXIT_OK, json.dumps(document, indent=2) + "\n", "")
    size = f"size {signed.size}" if signed.size is not None else "size unsigned"
    line = f"{reference.pinned(signed.digest)}\t{size}\tsigned by {signed.signer}\n"
    return VerifyAnswer(EXIT_OK, line, "")
