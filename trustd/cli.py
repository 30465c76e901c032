"""Command-line entry points: ``trustd`` (the daemon, config checks) and ``trustctl`` (queries).

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

from trustd.config import Config, load_config
from trustd.errors import ConfigError, InvalidReference, NotaryUnavailable, TrustError
from trustd.notary.client import TrustEngine
from trustd.notary.resolution import RepositoryReport, inspect_repository
from trustd.notary.transport import Credentials
from trustd.policy import verify_reference
from trustd.reference import parse_reference

DEFAULT_CONFIG = Path("/etc/trustd/trustd.toml")

EXIT_OK = 0
EXIT_UNTRUSTED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


def _config_path(argument: str | None) -> Path:
    return Path(argument or os.environ.get("TRUSTD_CONFIG") or DEFAULT_CONFIG)


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", help=f"config file (default: $TRUSTD_CONFIG or {DEFAULT_CONFIG})"
    )


def _fail(message: str, status: int) -> int:
    print(f"trustctl: {message}", file=sys.stderr)
    return status


def _status_for(error: Exception) -> int:
    if isinstance(error, NotaryUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, InvalidReference | ConfigError):
        return EXIT_USAGE
    return EXIT_UNTRUSTED


def _credentials(args: argparse.Namespace) -> Credentials | None:
    if not args.username:
        return None
    password = os.environ.get("TRUSTCTL_PASSWORD", "")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    return Credentials(username=args.username, password=password)


def _engine(config: Config, state_dir: str | None) -> TrustEngine:
    return TrustEngine(config, Path(state_dir) if state_dir else config.server.state_dir)


# --- trustctl ------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args.config))
    reference = parse_reference(args.reference)
    rule = config.rule_for(reference.repository)
    engine = _engine(config, args.state_dir)
    try:
        # trustctl answers "is this signed?", so a digest is checked whatever the rule allows.
        signed = verify_reference(
            engine, reference, rule, _credentials(args), require_signed_digests=True
        )
        assert signed is not None
    finally:
        engine.close()
    if args.json:
        print(
            json.dumps(
                {
                    "reference": str(reference),
                    "gun": reference.repository,
                    "tag": signed.name,
                    "digest": signed.digest,
                    "size": signed.size,
                    "role": signed.role,
                    "pinned": reference.pinned(signed.digest),
                },
                indent=2,
            )
        )
    else:
        print(f"{reference.pinned(signed.digest)}\tsize {signed.size}\tsigned by {signed.role}")
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args.config))
    reference = parse_reference(args.reference)
    engine = _engine(config, args.state_dir)
    try:
        repository = engine.repository(reference.registry, reference.repository, _credentials(args))
    finally:
        engine.close()
    report = inspect_repository(repository)
    if args.json:
        print(json.dumps([_docker_trust_inspect_shape(report)], indent=2))
    else:
        print(_format_report(report))
    return EXIT_OK


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


def trustctl_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="trustctl", description="Query trustd's view of image signatures."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("verify", "print the signed digest of an image reference, or why it is not trusted"),
        ("inspect", "show signed tags, signers and keys of a repository"),
    ):
        command = commands.add_parser(name, help=helptext)
        command.add_argument("reference")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        command.add_argument(
            "--state-dir", help="trust cache directory (default: server.state_dir of the config)"
        )
        command.add_argument("--username", help="registry user for the Notary token service")
        command.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from stdin (else $TRUSTCTL_PASSWORD)",
        )
        _add_config_option(command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler = _verify if args.command == "verify" else _inspect
    try:
        return handler(args)
    except (TrustError, InvalidReference, ConfigError) as error:
        return _fail(str(error), _status_for(error))


# --- trustd --------------------------------------------------------------------------------------


def _check_config(args: argparse.Namespace) -> int:
    path = _config_path(args.file or args.config)
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"trustd: {error}", file=sys.stderr)
        return EXIT_USAGE
    rules = len(config.policy)
    print(f"{path}: OK ({len(config.notary)} notary server(s), {rules} policy rule(s))")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from trustd.daemon import run_daemon  # the daemon pulls in gRPC; queries do not need it

    return run_daemon(_config_path(args.config))


def trustd_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trustd", description="Container image trust daemon.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the CRI ImageService in front of containerd")
    _add_config_option(serve)
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file", nargs="?")
    _add_config_option(check)
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return _check_config(args)
    return _serve(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(trustctl_main())
