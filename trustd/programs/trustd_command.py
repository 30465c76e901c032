"""The ``trustd`` command: ``serve`` (the node service) and ``check-config``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trustd.config.load import config_warnings, load_config
from trustd.errors import ConfigError
from trustd.policy.queries import EXIT_OK, EXIT_USAGE
from trustd.programs.options import add_config_option, config_path


def _check_config(args: argparse.Namespace) -> int:
    path = config_path(args.file or args.config)
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"trustd: {error}", file=sys.stderr)
        return EXIT_USAGE
    from trustd.config.permissions import permission_warnings
    from trustd.formats.configured import check_formats

    try:
        formats = check_formats(config)
    except ConfigError as error:
        print(f"trustd: {error}", file=sys.stderr)
        return EXIT_USAGE
    for warning in config_warnings(config) + permission_warnings(config):
        print(f"trustd: warning: {path}: {warning}", file=sys.stderr)
    for line in formats:
        print(f"{path}: {line}")
    rules = len(config.policy)
    print(f"{path}: OK ({len(config.notary)} notary server(s), {rules} policy rule(s))")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from trustd.service.daemon import run_daemon  # the daemon pulls in gRPC; checks do not need it

    return run_daemon(config_path(args.config))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trustd", description="Container image trust daemon.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the CRI ImageService in front of containerd")
    add_config_option(serve)
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file", nargs="?")
    add_config_option(check)
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return _check_config(args)
    return _serve(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
