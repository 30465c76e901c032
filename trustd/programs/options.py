"""The ``-c/--config`` option both ``trustd`` and ``trustctl`` take, and the file it names."""

from __future__ import annotations

import argparse
from pathlib import Path

from trustd.config.paths import CONFIG_VARIABLE, DEFAULT_CONFIG, config_file


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        help=f"config file (default: ${CONFIG_VARIABLE} or {DEFAULT_CONFIG})",
    )


def config_path(argument: str | None) -> Path:
    """The config file: ``-c FILE``, else ``$TRUSTD_CONFIG``, else the default."""
    return Path(config_file(argument))
