"""The ``trustctl`` commands, judged in this process: verify (``trustctl.py`` asks the daemon
first), inspect, explain, expiring and forget-root.

Exit statuses: 0 success; 1 the image is not trusted; 2 bad usage, reference or config;
3 the Notary server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustd.config.load import load_config
from trustd.config.model import Config, PolicyRule
from trustd.errors import ConfigError, InvalidReference, TrustError
from trustd.formats.notary.key_ids import ROOT_KEY_ID_FORM, is_key_id
from trustd.names.reference import parse_reference
from trustd.policy.queries import EXIT_OK, EXIT_UNTRUSTED, EXIT_USAGE, status_for
from trustd.programs.options import add_config_option, config_path

if TYPE_CHECKING:
    # The trust engine (cryptography, TLS) is imported by the commands that use it, so that
    # `trustd check-config` and `--help` do not pay for it.
    from trustd.formats.base import FormatName, Judgement
    from trustd.formats.notary.engine import TrustEngine
    from trustd.formats.notary.lifetime import Expiry
    from trustd.formats.notary.metadata import Root
    from trustd.formats.notary.resolution import RepositoryReport
    from trustd.formats.notary.view import VerifiedRepository
    from trustd.names.reference import Reference
    from trustd.net.credentials import Credentials
    from trustd.service.audit import AuditLog
    from trustd.service.engine import Audit, Engine


def _fail(message: str, status: int) -> int:
    print(f"trustctl: {message}", file=sys.stderr)
    return status


def _credentials(args: argparse.Namespace) -> Credentials | None:
    if not args.username:
        return None
    password = os.environ.get("TRUSTCTL_PASSWORD", "")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    from trustd.net.credentials import Credentials

    return Credentials(username=args.username, password=password)


def _engine(config: Config, state_dir: str | None, audit: Audit | None = None) -> Engine:
    """The engine the daemon would build (trustd.service.engine), on ``--state-dir`` if given;
    auditing nothing unless ``audit`` says (AuditLogUnavailable if it cannot)."""
    from trustd.service.engine import Audit, build_engine

    return build_engine(
        config,
        state_dir=Path(state_dir) if state_dir else None,
        audit=audit if audit is not None else Audit.NONE,
    )


# --- trustctl ------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    """In this process (the ``trustctl`` program asks the daemon first: trustd.programs.trustctl);
    the answer is made by the same function as the daemon's."""
    from trustd.policy.queries import verify_answer

    config = load_config(config_path(args.config))
    with _engine(config, args.state_dir) as engine:
        answer = verify_answer(engine.policy, args.reference, _credentials(args), args.json)
    sys.stdout.write(answer.stdout)
    sys.stderr.write(answer.stderr)
    return answer.status


def _inspect(args: argparse.Namespace) -> int:
    from trustd.formats.base import FormatName
    from trustd.formats.notary.resolution import inspect_repository

    config = load_config(config_path(args.config))
    reference = parse_reference(args.reference)
    formats = config.rule_for(reference.repository).signatures.formats
    repository, notary_error = None, None
    with _engine(config, args.state_dir) as engine:
        credentials = _credentials(args)
        # Notation's section is there wherever [notation] is: while a rule still requires
        # Notary v1, it shows whether the Notation signatures that will replace it verify.
        notation_shown = FormatName.NOTATION in engine.policy.formats
        if FormatName.NOTARY_V1 in formats:
            try:
                repository = engine.trust.repository(
                    reference.registry, reference.repository, credentials
                )
            except TrustError as error:
                if len(formats) == 1 and not notation_shown:
                    raise
                notary_error = str(error)  # the other formats are still shown
        cosign = _cosign_inspection(engine, reference, credentials, formats)
        notation = _notation_inspection(engine, reference, credentials)
    document: dict[str, object] = {"Name": reference.repository}
    texts = []
    if notary_error is not None:
        document["notary_error"] = notary_error
        texts.append(f"Notary v1: {notary_error}\n")
    if repository is not None:
        report = inspect_repository(repository)
        lifetime = _lifetime_report(repository, config.server.expiry_warning_days)
        document = {**_docker_trust_inspect_shape(report), **lifetime.json()}
        texts += [_format_report(report), lifetime.text()]
    if cosign is not None:
        document["cosign"] = cosign
        texts.append(_format_cosign_inspection(cosign))
    if notation is not None:
        document["notation"] = notation
        texts.append(_format_notation_inspection(notation))
    if args.json:
        print(json.dumps([document], indent=2))
    else:
        print("\n".join(texts))
    return EXIT_OK


def _cosign_inspection(
    engine: Engine,
    reference: Reference,
    credentials: Credentials | None,
    formats: Sequence[FormatName],
) -> dict[str, object] | None:
    """The cosign signatures of the manifest ``reference`` names, when its rule requires cosign:
    each with its form, where it is and the configured keys that verified it."""
    from trustd.formats.base import FormatName, SignatureQuery
    from trustd.formats.cosign.format import CosignFormat

    cosign = engine.policy.formats.get(FormatName.COSIGN)
    if FormatName.COSIGN not in formats or not isinstance(cosign, CosignFormat):
        return None
    rule = engine.policy.config.rule_for(reference.repository)
    listing = cosign.list_signatures(SignatureQuery(reference, rule, credentials))
    return {
        "repository": listing.repository,
        "digest": listing.digest,
        "registry": listing.endpoint,
        "keys": [
            {"id": key.key_id, "algorithm": key.algorithm, "file": key.source}
            for key in listing.keys
        ],
        "threshold": listing.threshold,
        "signatures": [
            {
                "form": signature.form,
                "source": signature.source,
                "key_ids": list(signature.key_ids),
                "problem": signature.problem or None,
            }
            for signature in listing.signatures
        ],
        "unreadable": list(listing.unreadable),
        "verified": not listing.error,
        "reason": listing.error or None,
    }


def _notation_inspection(
    engine: Engine, reference: Reference, credentials: Credentials | None
) -> dict[str, object] | None:
    """The Notation signatures of the manifest ``reference`` names, where ``[notation]`` is
    configured: each with what it claims (signer, times) and whether it verified, at which
    level, or why not. A registry that cannot be read is said, not raised."""
    from datetime import datetime

    from trustd.formats.base import FormatName, SignatureQuery
    from trustd.formats.notary.metadata import format_time
    from trustd.formats.notation.format import NotationFormat

    notation = engine.policy.formats.get(FormatName.NOTATION)
    if not isinstance(notation, NotationFormat):
        return None
    rule = engine.policy.config.rule_for(reference.repository)
    try:
        inspection = notation.inspect(SignatureQuery(reference, rule, credentials))
    except TrustError as error:
        return {"reference": str(reference), "error": str(error)}

    def when(moment: datetime | None) -> str | None:
        return format_time(moment) if moment is not None else None

    shown = inspection.repository
    if inspection.name != inspection.target.digest:
        shown += f":{inspection.name}"
    return {
        "reference": shown,
        "digest": inspection.target.digest,
        "media_type": inspection.target.media_type,
        "size": inspection.target.size,
        "trust_policy": inspection.policy or None,
        "level": inspection.level or None,
        "signatures": [
            {
                "manifest": signature.manifest,
                "envelope": signature.envelope_type,
                "signing_scheme": signature.signing_scheme or None,
                "signer": signature.signer or None,
                "issuer": signature.issuer or None,
                "signing_time": when(signature.signing_time),
                "expiry": when(signature.expiry),
                "certificate_expires": when(signature.certificate_expires),
                "verified": signature.verified,
                "level": signature.level or None,
                "logged": list(signature.logged),
                "problem": signature.problem or None,
            }
            for signature in inspection.signatures
        ],
        "problems": list(inspection.problems),
        "error": None,
    }


def _format_notation_inspection(listing: dict[str, Any]) -> str:
    if listing["error"]:
        return f"Notation signatures of {listing['reference']}: {listing['error']}"
    policy = (
        f"trust policy {listing['trust_policy']!r} (level {listing['level']})"
        if listing["trust_policy"]
        else "no trust policy statement applies"
    )
    lines = [
        f"Notation signatures of {listing['reference']} ({listing['digest']}), {policy}",
        "",
    ]
    if not listing["signatures"]:
        lines.append("No Notation signatures.")
    for signature in listing["signatures"]:
        envelope = "JWS" if signature["envelope"].endswith("jose+json") else "COSE"
        scheme = f", {signature['signing_scheme']}" if signature["signing_scheme"] else ""
        lines.append(f"  signature manifest {signature['manifest']} ({envelope}{scheme})")
        if signature["signer"]:
            rows = [
                ("signer", signature["signer"]),
                ("issuer", signature["issuer"]),
                ("signed", signature["signing_time"] or "unknown"),
                ("expires", signature["expiry"] or "never (none set)"),
            ]
            if signature["certificate_expires"]:
                rows.append(("certificate", f"valid until {signature['certificate_expires']}"))
            lines += [f"    {label + ':':<13}{value}" for label, value in rows]
        if signature["verified"]:
            state = f"yes, level {signature['level']}"
            state += "".join(f"\n{'':17}{note}" for note in signature["logged"])
        else:
            state = f"no: {signature['problem']}"
        lines.append(f"    {'verified:':<13}{state}")
        lines.append("")
    lines += [f"WARNING: {problem}" for problem in listing["problems"]]
    return "\n".join(lines).rstrip("\n")


def _format_cosign_inspection(listing: dict[str, Any]) -> str:
    keys = listing["keys"]
    lines = [
        f"cosign signatures of {listing['repository']}@{listing['digest']} in "
        f"{listing['registry']}",
        "",
    ]
    if listing["signatures"]:
        lines.append(f"{'FORM':<8}   {'KEYS':<12}   WHERE")
        for signature in listing["signatures"]:
            ids = ", ".join(key_id[:12] for key_id in signature["key_ids"]) or "-"
            lines.append(f"{signature['form']:<8}   {ids:<12}   {signature['source']}")
            if signature["problem"]:
                lines.append(f"{'':<8}   {'':<12}   not counted: {signature['problem']}")
    else:
        lines.append("No cosign signatures.")
    lines += [f"unreadable: {problem}" for problem in listing["unreadable"]]
    lines.append("")
    configured = ", ".join(f"{key['id'][:12]} ({key['file']})" for key in keys) or "none"
    lines.append(f"configured keys: {configured}; threshold {listing['threshold']}")
    verdict = "signed" if listing["verified"] else f"not signed: {listing['reason']}"
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)


class _LifetimeReport:
    """What ``inspect`` adds to docker's view: root keys in both ID forms, the line that pins
    them, and when each role and root certificate expires."""

    def __init__(self, repository: VerifiedRepository, warning_days: int) -> None:
        from datetime import UTC, datetime, timedelta

        from trustd.formats.notary.lifetime import due, pinning_line, repository_expiries, root_keys

        self.gun = repository.gun
        self.now = datetime.now(UTC)
        self.warning_days = warning_days or DEFAULT_EXPIRING_DAYS
        self.root_keys = root_keys(repository.root)
        self.pinning_line = pinning_line(repository.gun, repository.root)
        self.expiries = repository_expiries(repository.gun, repository.root, repository.expires)
        self.due = set(due(self.expiries, self.now, timedelta(days=self.warning_days)))

    def json(self) -> dict[str, object]:
        from trustd.formats.notary.metadata import format_time

        return {
            "RootKeys": [
                {
                    "ID": key.key_id,
                    "CanonicalID": key.canonical_id,
                    "KeyType": key.key_type,
                    "CertificateExpires": format_time(key.not_after) if key.not_after else None,
                }
                for key in self.root_keys
            ],
            "TrustPinning": {"Section": "trust_pinning.certs", "Line": self.pinning_line},
            "Expiry": [
                {
                    "Kind": str(item.kind),
                    "Name": item.name,
                    "Expires": format_time(item.expires),
                    "SecondsLeft": round(item.seconds_left(self.now)),
                    "Due": item in self.due,
                }
                for item in self.expiries
            ],
            "ExpiryWarningDays": self.warning_days,
        }

    def text(self) -> str:
        from trustd.formats.notary.metadata import format_time

        lines = ["", f"Root keys of {self.gun} (trust pinning accepts either ID):", ""]
        for key in self.root_keys:
            lines.append(f"  ID in root.json:  {key.key_id}")
            lines.append(f"  canonical ID:     {key.canonical_id}   (notary key list)")
            if key.not_after is not None:
                lines.append(f"  certificate:      expires {format_time(key.not_after)}")
            lines.append("")
        lines += [
            "To pin this root (e.g. with disable_tofu = true), put in the config:",
            "",
            "  [trust_pinning.certs]",
            f"  {self.pinning_line}",
            "",
            f"Expiry (WARNING: within {self.warning_days} days):",
            "",
        ]
        width = max((len(self._label(item)) for item in self.expiries), default=0)
        for item in sorted(self.expiries, key=lambda item: item.expires):
            flag = "   WARNING" if item in self.due else ""
            lines.append(f"  {self._label(item):<{width}}   {item.when(self.now)}{flag}")
        return "\n".join(lines)

    @staticmethod
    def _label(item: Expiry) -> str:
        return item.name if item.kind == "role" else f"root certificate {item.name[:12]}…"


def _lifetime_report(repository: VerifiedRepository, warning_days: int) -> _LifetimeReport:
    return _LifetimeReport(repository, warning_days)


def _docker_trust_inspect_shape(report: RepositoryReport) -> dict[str, object]:
    return {
        "Name": report.gun,
        "SignedTags": [
            {
                "SignedTag": tag.tag,
                "Digest": tag.digest.split(":", 1)[-1],
                "Signers": list(tag.signers),
            }
            for tag in report.signed_tags
        ],
        "Signers": [
            {"Name": signer.role, "Keys": [{"ID": key} for key in signer.key_ids]}
            for signer in report.signers
        ],
        "AdministrativeKeys": [
            {"Name": admin.role, "Keys": [{"ID": key} for key in admin.key_ids]}
            for admin in report.administrative_keys
        ],
        "BrokenRoles": [{"Role": role, "Reason": reason} for role, reason in report.broken_roles],
    }


def _format_report(report: RepositoryReport) -> str:
    lines = [f"Signatures for {report.gun} (from {report.server})", ""]
    if report.signed_tags:
        width = max(len("SIGNED TAG"), *(len(tag.tag) for tag in report.signed_tags))
        lines.append(f"{'SIGNED TAG':<{width}}   {'DIGEST':<64}   SIGNERS")
        for tag in report.signed_tags:
            digest = tag.digest.split(":", 1)[-1]
            lines.append(f"{tag.tag:<{width}}   {digest:<64}   {', '.join(tag.signers)}")
    else:
        lines.append("No signed tags.")
    lines.append("")
    if report.signers:
        lines.append(f"List of signers and their keys for {report.gun}:")
        lines.append("")
        lines.append(f"{'SIGNER':<20}   KEYS")
        for signer in report.signers:
            keys = ", ".join(key[:12] for key in signer.key_ids)
            lines.append(f"{signer.role:<20}   {keys} (threshold {signer.threshold})")
        lines.append("")
    lines.append(f"Administrative keys for {report.gun}:")
    lines.append("")
    for admin in report.administrative_keys:
        lines.append(f"  {admin.role} Key:\t{', '.join(admin.key_ids)}")
    for role, reason in report.broken_roles:
        lines.append("")
        lines.append(f"WARNING: role {role} is not usable: {reason}")
    return "\n".join(lines)


# --- trustctl expiring ----------------------------------------------------------------------------

DEFAULT_EXPIRING_DAYS = 30


def _expiring(args: argparse.Namespace) -> int:
    """Everything in the node's cache that expires within N days; exit 1 if anything does."""
    from datetime import UTC, datetime, timedelta

    from trustd.formats.notary.lifetime import due, repository_expiries
    from trustd.formats.notary.metadata import format_time

    config = load_config(config_path(args.config))
    # --days 0 lists what has expired already; a config that never warns (0) still gets a horizon.
    days = args.days if args.days is not None else config.server.expiry_warning_days
    if args.days is None and days == 0:
        days = DEFAULT_EXPIRING_DAYS
    now = datetime.now(UTC)
    found: list[Expiry] = []
    unreadable: list[tuple[str, str]] = []
    with _engine(config, args.state_dir) as engine:
        guns = engine.trust.cached_guns()
        for gun in guns:
            try:
                repository = engine.trust.cached_repository(gun)
            except TrustError as error:
                unreadable.append((gun, str(error)))
                continue
            if repository is not None:
                expiries = repository_expiries(gun, repository.root, repository.expires)
                found += due(expiries, now, timedelta(days=days))
    found.sort(key=lambda item: (item.expires, item.gun, item.name))
    if args.json:
        print(
            json.dumps(
                {
                    "days": days,
                    "repositories": len(guns),
                    "due": [
                        {
                            "gun": item.gun,
                            "kind": str(item.kind),
                            "name": item.name,
                            "expires": format_time(item.expires),
                            "seconds_left": round(item.seconds_left(now)),
                            "advice": item.owner_advice(),
                        }
                        for item in found
                    ],
                    "unreadable": [{"gun": gun, "error": error} for gun, error in unreadable],
                },
                indent=2,
            )
        )
    else:
        for item in found:
            print(f"{item.describe(now)}; {item.owner_advice()}")
        for gun, problem in unreadable:
            print(f"cannot read the cached trust data of {gun}: {problem}")
        if not found and not unreadable:
            print(f"nothing expires within {days} days ({len(guns)} repositories cached)")
    return EXIT_UNTRUSTED if found or unreadable else EXIT_OK


# --- trustctl forget-root -------------------------------------------------------------------------


def _forget_root(args: argparse.Namespace) -> int:
    """Forget the trusted root of a GUN (or every cached GUN a pattern matches, with ``--all``
    when that is more than one), or trust the served root signed by a given key instead.

    Under each GUN's lock, the audit record is written first and the change made only once it
    is: a change of trust that cannot be recorded is not made.
    """
    from trustd.service.engine import Audit

    config = load_config(config_path(args.config))
    if config.audit.file is None:
        return _fail(
            f"{config.source}: audit.file is off; forget-root records each change in the audit "
            "log before making it, so set audit.file (or pass a config that does, -c)",
            EXIT_USAGE,
        )
    pattern = args.target if any(char in args.target for char in "*?") else None
    if args.pin is not None and pattern is not None:
        return _fail("--pin takes one repository, not a pattern", EXIT_USAGE)
    if args.pin is not None and not all(is_key_id(key) for key in args.pin):
        return _fail(f"--pin must be {ROOT_KEY_ID_FORM}", EXIT_USAGE)
    # The audit log is opened first (AuditLogUnavailable: nothing is done); each change is
    # recorded in it below, before it is made.
    built = _engine(config, args.state_dir, Audit.RECORDS)
    engine, audit = built.trust, built.audit
    assert audit is not None  # audit.file is set
    try:
        guns, registry = _forget_targets(args.target, pattern, engine)
    except ValueError as error:
        built.close()
        return _fail(str(error), EXIT_USAGE)
    if len(guns) > 1 and not args.all:
        built.close()
        return _fail(_needs_all(pattern or args.target, guns), EXIT_USAGE)
    try:
        if not guns or (args.pin is None and guns[0] not in engine.cached_guns()):
            return _fail(
                f"no trust data cached for {pattern or guns[0]} in "
                f"{engine.updater.store.state_dir}",
                EXIT_UNTRUSTED,
            )
        for done, gun in enumerate(guns):
            record = _RecordFirst(audit, gun, pattern, args.pin)
            try:
                if args.pin is not None:
                    old, _ = engine.pin_root(registry, gun, args.pin, before=record)
                else:
                    old = engine.forget(gun, before=record)
            except _AuditUnwritable as error:
                return _fail(
                    f"cannot write the audit log {config.audit.file}: {error.reason}; nothing "
                    f"changed for {gun}" + _progress(guns, done),
                    EXIT_USAGE,
                )
            except BaseException as error:
                if record.written:
                    record.failed(error)
                if isinstance(error, OSError):
                    return _fail(
                        f"cannot change the trust data of {gun} in "
                        f"{engine.updater.store.state_dir}: {error} (it may be partly changed: "
                        "see the forget-root-failed record in the audit log)"
                        + _progress(guns, done),
                        EXIT_USAGE,
                    )
                raise
            if args.pin is not None:
                keys = ", ".join(args.pin)
                print(f"{gun}: now trusting its current root, signed by pinned key {keys}")
                _note_config_pin(config, gun, args.pin)
            else:
                print(f"{gun}: forgot its trusted root; {_next_lookup(config, gun)}")
            if old is not None:
                print(f"{gun}: it trusted root key {_key_ids_text(old)}")
    finally:
        built.close()
    return EXIT_OK


_NAMES_SHOWN = 5


def _progress(guns: Sequence[str], done: int) -> str:
    """What else a run over ``guns`` that stopped at ``guns[done]`` did and did not change."""
    after = len(guns) - done - 1
    text = f"; nothing changed for the {after} after it" if after else ""
    return text + (f"; {done} changed before it, each recorded" if done else "")


def _needs_all(pattern: str, guns: Sequence[str]) -> str:
    shown = ", ".join(guns[:_NAMES_SHOWN])
    more = f" and {len(guns) - _NAMES_SHOWN} more" if len(guns) > _NAMES_SHOWN else ""
    return (
        f"{pattern} matches {len(guns)} cached repositories ({shown}{more}); forgetting their "
        "roots re-opens trust on first use for every one of them: add --all if that is meant, "
        "or name one repository"
    )


class _AuditUnwritable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _RecordFirst:
    """The ``before`` hook of a forget or re-pin: writes its audit record, or stops it."""

    def __init__(
        self, audit: AuditLog, gun: str, pattern: str | None, pinned: Sequence[str] | None
    ) -> None:
        self._audit = audit
        self._gun = gun
        self._pattern = pattern
        self._pinned = pinned
        self.written = False

    def __call__(self, old: Root | None, new: Root | None) -> None:
        line = _forget_record(self._gun, self._pattern, self._pinned, old, new)
        try:
            self._audit.append_or_raise(line)
        except OSError as error:
            raise _AuditUnwritable(error.strerror or str(error)) from None
        self.written = True

    def failed(self, error: BaseException) -> None:
        """The change recorded did not happen: say so in the log too, if it can be written."""
        line = _forget_record(self._gun, self._pattern, self._pinned, None, None, error)
        try:
            self._audit.append_or_raise(line)
        except OSError as write_error:
            print(
                f"trustctl: the audit log records a change of {self._gun} that then failed, "
                f"and the failure cannot be added to it: {write_error}",
                file=sys.stderr,
            )


def _forget_targets(target: str, pattern: str | None, engine: TrustEngine) -> tuple[list[str], str]:
    """(GUNs to forget, registry of a single GUN); ValueError for a bad name or pattern."""
    if pattern is not None:
        from trustd.names.patterns import InvalidPattern, RepositoryPattern

        try:
            compiled = RepositoryPattern(pattern)
        except InvalidPattern as error:
            raise ValueError(str(error)) from None
        return [gun for gun in engine.cached_guns() if compiled.matches(gun)], ""
    from trustd.names.reference import parse_repository

    try:
        gun = parse_repository(target)
    except InvalidReference as error:
        raise ValueError(str(error)) from None
    return [gun], parse_reference(gun).registry


def _next_lookup(config: Config, gun: str) -> str:
    rule = config.pinning_for(gun)
    if rule.allow_tofu:
        return "its next lookup trusts the root the server serves then (trust on first use)"
    if rule.root_key_ids or rule.ca_file is not None:
        return f"its next lookup trusts a root only as {rule.source} says"
    return (
        "trust on first use is disabled (trust_pinning.disable_tofu): its next lookup is "
        "refused until you pin it (--pin KEY_ID, or [trust_pinning.certs] in the config)"
    )


def _note_config_pin(config: Config, gun: str, key_ids: Sequence[str]) -> None:
    rule = config.pinning_for(gun)
    line = f'"{gun}" = [{", ".join(json.dumps(key) for key in key_ids)}]'
    if rule.root_key_ids and not set(key_ids) <= set(rule.root_key_ids):
        print(
            f"{gun}: note: the config pins other keys ({rule.source}); change it so a node "
            f"without this cache trusts the same root:\n  [trust_pinning.certs]\n  {line}"
        )
    elif not rule.allow_tofu and not rule.root_key_ids:
        print(
            f"{gun}: note: to trust the same root on a node without this cache, add:\n"
            f"  [trust_pinning.certs]\n  {line}"
        )


def _key_ids_text(root: Root) -> str:
    from trustd.formats.notary.lifetime import root_keys

    return ", ".join(f"{key.key_id} (canonical {key.canonical_id})" for key in root_keys(root))


def _forget_record(
    gun: str,
    pattern: str | None,
    pinned: Sequence[str] | None,
    old: Root | None,
    new: Root | None,
    error: BaseException | None = None,
) -> str:
    """The audit line of a forget or re-pin about to be made; with ``error``, of one that was
    recorded and then failed (``forget-root-failed``: it may be partly done)."""
    import pwd
    from datetime import UTC, datetime

    from trustd.formats.notary.lifetime import root_keys
    from trustd.service.audit import rfc3339_millis

    def keys(root: Root | None) -> list[dict[str, str]] | None:
        if root is None:
            return None
        return [{"id": key.key_id, "canonical_id": key.canonical_id} for key in root_keys(root)]

    uid = os.getuid()
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    record = {
        "time": rfc3339_millis(datetime.now(UTC)),
        "action": "forget-root",
        "gun": gun,
        "pattern": pattern,
        "pinned": list(pinned) if pinned is not None else None,
        "old_root_keys": keys(old),
        "new_root_keys": keys(new),
        "uid": uid,
        "user": user,
        "sudo_user": os.environ.get("SUDO_USER"),
    }
    if error is not None:
        record["action"] = "forget-root-failed"
        record["error"] = f"{type(error).__name__}: {error}"[:2048]
    return json.dumps(record, separators=(",", ":")) + "\n"


# --- trustctl explain -----------------------------------------------------------------------------


def _explain(args: argparse.Namespace) -> int:
    """What trustd would do with an image on this node now, and why; nothing is pulled."""
    from trustd.policy.engine import Verdict, policy_match

    config = load_config(config_path(args.config))
    reference = parse_reference(args.reference)
    matched = policy_match(config, reference)
    credentials = _credentials(args)
    with _engine(config, args.state_dir) as engine:
        decision = engine.policy.decide(args.reference, credentials)
        cached = engine.trust.cached_guns()
        rule = matched.rule
        # Every format the rule requires, each asked on its own: a decision stops at the first
        # that settles it, explain shows them all (a migration checks the new signatures here).
        verifying = rule is not None and rule.mode != "off"
        answers = engine.policy.signatures_each(reference, credentials) if verifying else ()
        notation = _notation_rule(engine, rule, reference.repository)
    notary = config.notary_for(reference.registry)
    pinning = config.pinning_for(reference.repository)
    explanation: dict[str, object] = {
        "image": args.reference,
        "reference": str(reference),
        "gun": reference.repository,
        "applies": {
            "source": matched.source,
            "pattern": matched.exemption if rule is None else rule.match,
            "exempt": rule is None,
        },
        "mode": decision.mode,
        "roles": list(rule.roles) if rule is not None and not rule.signers else [],
        "signers": list(rule.signers) if rule is not None else [],
        "require_signed_digests": rule.require_signed_digests if rule is not None else None,
        "signatures": rule.signatures.describe() if rule is not None else None,
        "answers": [_answer_explained(answer) for answer in answers],
        "cosign": _cosign_rule(rule),
        "notation": notation,
        "outage": _outage_policy(config, rule),
        "notary": {
            "url": notary.url,
            "source": notary.source,
            "warning": _notary_warning(config, reference.registry),
        },
        "trust_pinning": {
            "source": pinning.source,
            "root_key_ids": list(pinning.root_key_ids),
            "ca": str(pinning.ca_file) if pinning.ca_file else None,
            "trusted_root_cached": reference.repository in cached,
        },
        "verdict": str(decision.verdict),
        "reason": decision.reason,
        "error": type(decision.error).__name__ if decision.error is not None else None,
        "pull_ref": decision.pull_ref,
        "digest": decision.signed.digest if decision.signed is not None else None,
        "signed_by": decision.signed.signer if decision.signed is not None else None,
        # The format(s) whose signature the decision rests on; null when none verified.
        "applied": decision.signed.format if decision.signed is not None else None,
    }
    if args.json:
        print(json.dumps(explanation, indent=2))
    else:
        print(_format_explanation(explanation, rule))
    if decision.verdict is not Verdict.DENY:
        return EXIT_OK
    return status_for(decision.error) if decision.error is not None else EXIT_UNTRUSTED


def _answer_explained(answer: Judgement) -> dict[str, object]:
    """One format's answer on its own, for explain."""
    signed = answer.signed
    if answer.error is not None:
        reason = str(answer.error)
    elif signed is None:
        reason = "digest reference admitted without a signature (require_signed_digests off)"
    else:
        reason = f"signed by {signed.signer} as {signed.digest}"
        if signed.notes:
            reason += f" ({'; '.join(signed.notes)})"
    if answer.cached_age is not None:
        reason += f" (judged from what this node verified {answer.cached_age:.0f}s ago, "
        reason += f"because {answer.outage})"
    return {
        "format": answer.format.value,
        "verified": answer.verified,
        "digest": signed.digest if signed is not None else None,
        "signer": signed.signer if signed is not None else None,
        "notes": list(signed.notes) if signed is not None else [],
        "from_cache": answer.cached_age is not None,
        "error": type(answer.error).__name__ if answer.error is not None else None,
        "reason": reason,
    }


def _notation_rule(
    engine: Engine, rule: PolicyRule | None, repository: str
) -> dict[str, object] | None:
    """For a rule requiring Notation: the trust policy statement that applies to
    ``repository`` (its level, stores and identities), or why none does."""
    from trustd.formats.base import FormatName
    from trustd.formats.notation.format import NotationFormat

    if rule is None or FormatName.NOTATION not in rule.signatures.formats:
        return None
    config = engine.policy.config
    directory = str(config.notation.config_dir) if config.notation.config_dir else None
    notation = engine.policy.formats.get(FormatName.NOTATION)
    if not isinstance(notation, NotationFormat):
        return {"config_dir": directory, "error": "[notation] config_dir is not set"}
    try:
        policy = notation.policy_for(repository)
    except TrustError as error:
        return {"config_dir": directory, "error": str(error)}
    return {
        "config_dir": directory,
        "trust_policy": notation.config.policy.source,
        "statement": policy.name,
        "level": str(policy.level),
        "trust_stores": [str(ref) for ref in policy.trust_stores],
        "trusted_identities": ["*"]
        if policy.any_identity
        else [identity.text for identity in policy.trusted_identities],
        "error": None,
    }


def _notation_rows(notation: dict[str, Any]) -> list[tuple[str, str]]:
    if notation["error"]:
        return [("notation policy", f"none: {notation['error']}")]
    identities = "; ".join(notation["trusted_identities"])
    return [
        (
            "notation policy",
            f"{notation['statement']!r}, level {notation['level']}, trust stores "
            f"{', '.join(notation['trust_stores'])}, identities {identities} "
            f"({notation['trust_policy']})",
        )
    ]


def _cosign_rule(rule: PolicyRule | None) -> dict[str, object] | None:
    """The rule's ``[policy.cosign]``: each key file with its key ID (or why it is unusable)."""
    from trustd.formats.cosign.loader import load_public_key_file

    if rule is None or rule.cosign is None:
        return None

    def keys(paths: Sequence[Path]) -> list[dict[str, str]]:
        described = []
        for path in paths:
            try:
                key = load_public_key_file(path)
            except ConfigError as error:
                described.append({"file": str(path), "error": str(error)})
            else:
                described.append({"file": str(path), "id": key.key_id, "algorithm": key.algorithm})
        return described

    return {
        "keys": keys(rule.cosign.keys),
        "threshold": rule.cosign.threshold,
        "rekor_public_keys": keys(rule.cosign.rekor_public_keys),
    }


def _cosign_rows(cosign: dict[str, Any]) -> list[tuple[str, str]]:
    def shown(key: dict[str, str]) -> str:
        if "error" in key:
            return f"UNUSABLE {key['error']}"
        return f"{key['id'][:12]} {key['algorithm']} ({key['file']})"

    keys = cosign["keys"]
    rows = [("cosign keys", "; ".join(shown(key) for key in keys))]
    rows.append(("cosign threshold", f"{cosign['threshold']} of the {len(keys)} key(s)"))
    if cosign["rekor_public_keys"]:
        rekor = "; ".join(shown(key) for key in cosign["rekor_public_keys"])
        rows.append(("rekor", f"classic signatures need a signed entry timestamp of {rekor}"))
    return rows


def _outage_policy(config: Config, rule: PolicyRule | None) -> dict[str, object] | None:
    """What the rule does when its Notary server cannot be reached (``offline``)."""
    if rule is None or rule.mode == "off":
        return None  # Notary is not asked
    return {
        "offline": str(rule.offline),
        "max_offline_age": rule.max_offline_age,
        "freshness_window": config.server.freshness_window,
    }


def _notary_warning(config: Config, registry: str) -> str | None:
    from trustd.config.model import DOCKER_HUB_NOTARY_END
    from trustd.names.reference import DEFAULT_REGISTRY

    if registry == DEFAULT_REGISTRY and config.notary_for(registry).source == "default":
        return (
            f"no [[notary]] entry for {DEFAULT_REGISTRY}: Docker's notary.docker.io, which shuts "
            f"down on {DOCKER_HUB_NOTARY_END}"
        )
    return None


def _format_explanation(explanation: dict[str, Any], rule: PolicyRule | None) -> str:
    from trustd.formats.base import FormatName

    applies = explanation["applies"]
    rows = [
        ("image", explanation["image"]),
        ("reference", f"{explanation['reference']} (repository {explanation['gun']})"),
        ("applies", f"{applies['source']} {json.dumps(applies['pattern'])}"),
        ("mode", explanation["mode"]),
    ]
    if rule is not None and rule.mode != "off":
        notary_v1 = FormatName.NOTARY_V1 in rule.signatures.formats
        rows.append(("signatures", explanation["signatures"]))
        for answer in explanation["answers"]:
            state = "verified" if answer["verified"] else "not verified"
            rows.append((f"  {answer['format']}", f"{state}: {answer['reason']}"))
        if explanation["notation"] is not None:
            rows += _notation_rows(explanation["notation"])
        if notary_v1 and rule.signers:
            rows.append(("signers", f"all of {', '.join(rule.signers)}, with one digest"))
        elif notary_v1:
            rows.append(("roles", ", ".join(rule.roles) + " (first that signs the tag)"))
        if explanation["cosign"] is not None and FormatName.COSIGN in rule.signatures.formats:
            rows += _cosign_rows(explanation["cosign"])
        signed = "must be signed targets" if notary_v1 else "must be signed"
        rows.append(
            (
                "digests",
                signed
                if rule.require_signed_digests
                else "admitted unsigned (require_signed_digests = false)",
            )
        )
        outage = explanation["outage"]
        if outage["offline"] == "deny":
            unreachable = 'refused (offline = "deny")'
        else:
            age = outage["max_offline_age"]
            limit = "any age" if age is None else f"confirmed at most {age:g} s ago"
            unreachable = (
                f"judged from trust data cached on this node, if unexpired and {limit} "
                f'(offline = "cached")'
            )
            if not notary_v1:
                limit = "of any age" if age is None else f"made at most {age:g} s ago"
                unreachable = (
                    f'judged from this node\'s own verification, {limit} (offline = "cached")'
                )
        rows.append(("if unreachable", unreachable))
        if notary_v1:
            rows += _notary_rows(explanation, outage)
        rows.append(("applied", explanation["applied"] or "none"))
    verdict = f"{explanation['verdict']}: {explanation['reason']}"
    rows.append(("verdict now", verdict))
    if explanation["pull_ref"]:
        rows.append(("would pull", explanation["pull_ref"]))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}   {value}" for label, value in rows)


def _notary_rows(explanation: dict[str, Any], outage: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        (
            "freshness",
            f"a verified lookup is reused for {outage['freshness_window']:g} s "
            "(server.freshness_window)",
        )
    ]
    notary = explanation["notary"]
    rows.append(("notary", f"{notary['url']} ({notary['source']})"))
    if notary["warning"]:
        rows.append(("", f"WARNING: {notary['warning']}"))
    pinning = explanation["trust_pinning"]
    first = pinning["source"]
    if pinning["root_key_ids"]:
        first += f" ({', '.join(pinning['root_key_ids'])})"
    trusted = "cached" if pinning["trusted_root_cached"] else "none cached"
    rows.append(("first root", f"{first}; trusted root: {trusted}"))
    return rows


# --- trustctl command line ----------------------------------------------------------------------


def _add_state_dir_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--state-dir", help="trust cache directory (default: server.state_dir of the config)"
    )


def _add_credential_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--username", help="registry user for the Notary token service")
    command.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (else $TRUSTCTL_PASSWORD)",
    )


def trustctl_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="trustctl", description="Query trustd's view of image signatures."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, helptext, handler in (
        (
            "verify",
            "print the signed digest of an image reference, or why it is not trusted",
            _verify,
        ),
        (
            "inspect",
            "show a repository's Notary v1 signed tags, signers, root keys (and the line that "
            "pins them) and expiry, and the cosign and Notation signatures of the image a "
            "reference names (Notation: signer, signing time, expiry, level applied)",
            _inspect,
        ),
        (
            "explain",
            "dry run: the exemption or rule that applies to an image, and what trustd would do "
            "with it now (nothing is pulled)",
            _explain,
        ),
    ):
        command = commands.add_parser(name, help=helptext)
        command.add_argument("reference")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        _add_state_dir_option(command)
        _add_credential_options(command)
        add_config_option(command)
        command.set_defaults(handler=handler)
        if name == "verify":
            # The trustctl program asks the running daemon unless told otherwise
            # (trustd.programs.trustctl);
            # here, in trustctl_main, verify always judges in this process.
            command.add_argument(
                "--local", action="store_true", help="judge in this process, not via the daemon"
            )

    expiring = commands.add_parser(
        "expiring",
        help="list trust data and root certificates in the cache expiring within N days "
        "(exit 1 if any)",
    )
    expiring.add_argument(
        "--days",
        type=_days,
        help="horizon in days (default: server.expiry_warning_days of the config)",
    )
    expiring.add_argument("--json", action="store_true", help="machine-readable output")
    _add_state_dir_option(expiring)
    add_config_option(expiring)
    expiring.set_defaults(handler=_expiring)

    forget = commands.add_parser(
        "forget-root",
        help="forget the trusted root of a repository (a re-created one), so its next lookup "
        "trusts a first root again; or trust its current root if --pin KEY_ID signs it",
    )
    forget.add_argument(
        "target", help="a repository (GUN), or a pattern of cached ones (registry.example.com/**)"
    )
    forget.add_argument(
        "--all",
        action="store_true",
        help="forget every cached repository the pattern matches (needed when it matches more "
        "than one: each then trusts a first root again)",
    )
    forget.add_argument(
        "--pin",
        metavar="KEY_ID",
        action="append",
        help="trust the root the server serves now only if this root key ID signs it (repeat "
        "for a root whose threshold needs several keys)",
    )
    _add_state_dir_option(forget)
    add_config_option(forget)
    forget.set_defaults(handler=_forget_root)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        status: int = args.handler(args)
    except (TrustError, InvalidReference, ConfigError) as error:
        return _fail(str(error), status_for(error))
    return status


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if days < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return days


if __name__ == "__main__":  # pragma: no cover
    sys.exit(trustctl_main())
