"""Reading the config file into ``trustd.config.model.Config``, and advice on a valid one.

``load_config`` turns TOML into frozen, validated objects or raises one ``ConfigError`` naming the
file, the key path and what is wrong (one line in reality)::

    /etc/trustd/trustd.toml: policy[2].mode: must be one of "enforce", "audit", "off"
    (got "enforced")

TOML syntax errors name the line and column instead. Nothing here touches the network.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from trustd.config.model import (
    DEFAULT_RULE,
    DOCKER_HUB_NOTARY,
    DOCKER_HUB_NOTARY_END,
    Config,
    Mode,
)
from trustd.config.schema import Where, read_table, show
from trustd.errors import ConfigError
from trustd.formats.base import FormatName
from trustd.names.reference import DEFAULT_REGISTRY


def load_config(path: Path | str) -> Config:
    """Read and validate the config file at ``path``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str, base_dir: Path | None = None) -> Config:
    """Validate TOML ``text``; ``source`` names it in errors, relative paths resolve against
    ``base_dir`` (default: the directory of ``source``)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: {_describe_syntax_error(error, text)}") from None
    if base_dir is None:
        base_dir = Path(source).parent
    return read_table(Config, data, Where(source, Path(os.path.abspath(base_dir))))


_TOML_POSITION = re.compile(r"^(?P<message>.*?) \(at line (?P<line>\d+), column (?P<column>\d+)\)$")
_TOML_AT_END = " (at end of document)"


def _describe_syntax_error(error: tomllib.TOMLDecodeError, text: str) -> str:
    """``line L, column C: invalid TOML: ...`` from tomllib's message."""
    message = str(error)
    found = _TOML_POSITION.match(message)
    if found is not None:
        message, line, column = found["message"], int(found["line"]), int(found["column"])
    elif message.endswith(_TOML_AT_END):
        message = message.removesuffix(_TOML_AT_END)
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    else:
        return f"invalid TOML: {message}"
    return f"line {line}, column {column}: invalid TOML: {message[:1].lower()}{message[1:]}"


# --- advice on a valid config ---------------------------------------------------------------------


def config_warnings(config: Config) -> list[str]:
    """Things a valid config does that are probably not meant (``trustd check-config`` prints
    them, the daemon logs them)."""
    warnings = []
    mode = config.server.socket_mode
    if mode & 0o002:
        warnings.append(
            f"server.socket_mode {mode:04o} lets every local user connect to the CRI socket "
            f"{config.server.socket}, through which the node's images are pulled, listed and "
            'removed; use "0660" (root and the socket\'s group)'
        )
    if not any(server.registry == DEFAULT_REGISTRY for server in config.notary):
        verifying = _rules_verifying_registry(config, DEFAULT_REGISTRY)
        if verifying:
            warnings.append(
                f"{', '.join(verifying)} verif{'ies' if len(verifying) == 1 else 'y'} "
                f"{DEFAULT_REGISTRY} images, but no [[notary]] entry is configured for "
                f"{DEFAULT_REGISTRY}: trustd would ask {DOCKER_HUB_NOTARY}, which Docker shuts "
                f"down on {DOCKER_HUB_NOTARY_END} (the Official Images' trust data already fails "
                "to verify). Sign the images you use in your own notary-server (a [[notary]] "
                f'entry with registry = "{DEFAULT_REGISTRY}", or mirror them into your registry), '
                'or exempt them knowingly; see docs/operations.md, "Docker Hub images"'
            )
    return warnings


def _rules_verifying_registry(config: Config, registry: str) -> list[str]:
    """Labels of the rules that verify (enforce or audit) Notary v1 signatures of some
    repository of ``registry`` (a rule requiring only Notation or cosign never asks Notary)."""
    found = [
        f"{rule.source} ({show(rule.match)}, {rule.mode})"
        for rule in config.policy
        if rule.mode is not Mode.OFF
        and FormatName.NOTARY_V1 in rule.signatures.formats
        and _may_match_registry(rule.match, registry)
    ]
    # A name of the registry no rule and no exemption names falls to the default enforce rule.
    probes = (f"{registry}/library/trustd-probe", f"{registry}/trustd-probe/trustd-probe")
    if any(
        config.rule_for(name) is DEFAULT_RULE
        and not any(
            exemption.tag is None and exemption.repository.matches(name)
            for exemption in config.exempt
        )
        for name in probes
    ):
        found.append("the default rule (enforce)")
    return found


def _may_match_registry(pattern: str, registry: str) -> bool:
    """Whether a repository glob can match a name on ``registry`` (its first component)."""
    first = pattern.split("/", 1)[0]
    if "**" in first:
        return True  # "**" crosses "/": the registry is whatever it spans
    regex = "".join(
        "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char) for char in first
    )
    return re.fullmatch(regex, registry) is not None
