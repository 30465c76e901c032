"""The node-wide configuration file (``/etc/trustd/trustd.toml``), version 1.

``load_config`` turns TOML into frozen, validated objects or raises one ``ConfigError`` naming the
file, the key path and what is wrong (one line in reality)::

    /etc/trustd/trustd.toml: policy[2].mode: must be one of "enforce", "audit", "off"
    (got "enforced")

Unknown keys are errors at every level: a misspelt key in a security policy must not be ignored.
Every section is optional and defaults to a production setting. Relative paths are resolved against
the directory of the config file. Nothing here touches the network; files the config names (CA
bundles, client certificates, password files) must exist when it is loaded.

``docs/config.md`` documents every key.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trustd.errors import ConfigError, InvalidReference
from trustd.formats.base import NOTARY_V1_ONLY, SignatureRequirement
from trustd.names.patterns import (
    GunPattern,
    InvalidPattern,
    RepositoryPattern,
    TagPattern,
    check_gun_prefix,
    longest_gun_prefix,
    most_specific_gun_pattern,
)
from trustd.names.reference import DEFAULT_REGISTRY, Reference, parse_registry

CONFIG_VERSION = 1
DEFAULT_CONFIG_PATH = Path("/etc/trustd/trustd.toml")
DOCKER_HUB_NOTARY = "https://notary.docker.io"
DEFAULT_ROLES = ("targets/releases", "targets")  # docker's search order with content trust
MEBIBYTE = 1024 * 1024
DEFAULT_VERIFIER_SOCKET = Path("/run/trustd/verify.sock")


class Mode(StrEnum):
    ENFORCE = "enforce"  # admit only verified images
    AUDIT = "audit"  # verify and record, admit anyway
    OFF = "off"  # do not verify


class OfflinePolicy(StrEnum):
    """What a rule does when its Notary server cannot be reached."""

    CACHED = "cached"  # notary's own behaviour: use cached trust data that verifies, unexpired
    DENY = "deny"  # fail closed on any outage


# --- the configuration objects --------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    socket: Path = Path("/run/trustd/cri.sock")
    containerd: str = "unix:///run/containerd/containerd.sock"
    containerd_namespace: str = "k8s.io"
    state_dir: Path = Path("/var/lib/trustd")
    pull_timeout: float = 600.0
    shutdown_grace: float = 30.0
    socket_mode: int = 0o660
    # Lookups of one repository within this many seconds of a verified refresh reuse it
    # (kubelet's ImageStatus, PullImage, ImageStatus for one container start); 0 = always fetch.
    freshness_window: float = 1.0
    # Warn this many days before trust data or a root certificate expires (0: never warn).
    expiry_warning_days: int = 30
    # Where containerd's image-verifier hook (trustd.programs.image_verifier) asks the daemon;
    # None: not served.
    verifier_socket: Path | None = DEFAULT_VERIFIER_SOCKET

    @property
    def containerd_socket(self) -> Path:
        """The filesystem path of the containerd socket (``containerd`` without ``unix://``)."""
        return Path(self.containerd.removeprefix("unix://"))


@dataclass(frozen=True)
class AuditConfig:
    file: Path | None = Path("/var/log/trustd/audit.log")  # None: no audit file
    stdout: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9879"  # "" disables the metrics endpoint

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to listen on (IPv6 without brackets), or None when disabled."""
        if not self.listen or self.listen.startswith("unix:"):
            return None
        host, _, port = self.listen.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True)
class NotaryServer:
    """The Notary server holding the trust data of one registry's repositories."""

    registry: str
    url: str
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    timeout: float = 10.0
    max_metadata_bytes: int = 16 * MEBIBYTE
    root_max_bytes: int = MEBIBYTE
    timestamp_max_bytes: int = 64 * 1024
    retries: int = 2  # further attempts after a transient failure (reset, timeout, 502-504)
    source: str = "default"  # "notary[0]" when configured; for messages


@dataclass(frozen=True)
class PinningRule:
    """How the first root of one GUN is trusted (notary's trust pinning, resolved for the GUN)."""

    root_key_ids: tuple[str, ...]
    ca_file: Path | None
    allow_tofu: bool
    source: str  # the config entry it came from, for messages


@dataclass(frozen=True)
class TrustPinningConfig:
    disable_tofu: bool = False
    certs: tuple[tuple[GunPattern, tuple[str, ...]], ...] = ()
    ca: tuple[tuple[str, Path], ...] = ()

    def rule_for(self, gun: str) -> PinningRule:
        """notary's precedence: pinned key IDs (exact GUN, then longest ``prefix*``), then the
        CA of the longest matching prefix, then trust on first use unless it is disabled."""
        key_ids = dict(self.certs)
        pattern = most_specific_gun_pattern(gun, key_ids)
        if pattern is not None:
            source = f"trust_pinning.certs.{_key(pattern.text)}"
            return PinningRule(key_ids[pattern], None, allow_tofu=False, source=source)
        ca_files = dict(self.ca)
        prefix = longest_gun_prefix(gun, ca_files)
        if prefix is not None:
            source = f"trust_pinning.ca.{_key(prefix)}"
            return PinningRule((), ca_files[prefix], allow_tofu=False, source=source)
        if self.disable_tofu:
            return PinningRule((), None, allow_tofu=False, source="trust_pinning.disable_tofu")
        return PinningRule((), None, allow_tofu=True, source="trust on first use")


@dataclass(frozen=True)
class ExemptPattern:
    """An ``exempt`` entry: a repository glob, optionally ``:tag-glob``."""

    text: str
    repository: RepositoryPattern
    tag: TagPattern | None

    def matches(self, reference: Reference) -> bool:
        if not self.repository.matches(reference.repository):
            return False
        if self.tag is None:
            return True
        return reference.tag is not None and self.tag.matches(reference.tag)


@dataclass(frozen=True)
class PolicyRule:
    """One ``[[policy]]`` entry, or the built-in default (``index`` None)."""

    match: str
    mode: Mode = Mode.ENFORCE
    roles: tuple[str, ...] = DEFAULT_ROLES
    signers: tuple[str, ...] = ()
    require_signed_digests: bool = True
    offline: OfflinePolicy = OfflinePolicy.CACHED
    max_offline_age: float | None = None  # seconds; cached data older than this is not used
    signatures: SignatureRequirement = NOTARY_V1_ONLY  # the formats that must verify
    index: int | None = None  # position in the [[policy]] array; None for the default rule
    pattern: RepositoryPattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", RepositoryPattern(self.match))

    def matches(self, repository: str) -> bool:
        return self.pattern.matches(repository)

    @property
    def source(self) -> str:
        return "default rule" if self.index is None else f"policy[{self.index}]"


DEFAULT_RULE = PolicyRule(match="**")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    audit: AuditConfig = AuditConfig()
    metrics: MetricsConfig = MetricsConfig()
    notary: tuple[NotaryServer, ...] = ()
    trust_pinning: TrustPinningConfig = TrustPinningConfig()
    exempt: tuple[ExemptPattern, ...] = ()
    policy: tuple[PolicyRule, ...] = ()
    source: Path | None = None

    def notary_for(self, registry: str) -> NotaryServer:
        """The configured Notary server of ``registry``, or docker's default for it."""
        for server in self.notary:
            if server.registry == registry:
                return server
        url = DOCKER_HUB_NOTARY if registry == DEFAULT_REGISTRY else f"https://{registry}"
        return NotaryServer(registry=registry, url=url)

    def pinning_for(self, gun: str) -> PinningRule:
        return self.trust_pinning.rule_for(gun)

    @property
    def freshness_window(self) -> float:
        return self.server.freshness_window

    def exemption_for(self, reference: Reference) -> tuple[int, str] | None:
        """The first ``exempt`` pattern that matches ``reference``: (its index, its text)."""
        for index, exemption in enumerate(self.exempt):
            if exemption.matches(reference):
                return index, exemption.text
        return None

    def rule_for(self, repository: str) -> PolicyRule:
        """The first ``[[policy]]`` rule matching ``repository``, else the default enforce rule."""
        for rule in self.policy:
            if rule.matches(repository):
                return rule
        return DEFAULT_RULE


# --- advice on a valid config --------------------------------------------------------------------

DOCKER_HUB_NOTARY_END = "2026-12-08"


def config_warnings(config: Config) -> list[str]:
    """Things a valid config does that are probably not meant (``trustd check-config`` prints
    them, the daemon logs them)."""
    warnings = []
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
    """Labels of the rules that verify (enforce or audit) some repository of ``registry``."""
    found = [
        f"{rule.source} ({_show(rule.match)}, {rule.mode})"
        for rule in config.policy
        if rule.mode is not Mode.OFF and _may_match_registry(rule.match, registry)
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


# --- loading --------------------------------------------------------------------------------------


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
    context = _Context(source, Path(os.path.abspath(base_dir)))
    return _parse_document(_Table(data, "", context))


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


def _parse_document(document: _Table) -> Config:
    document.allow(
        "version", "server", "audit", "metrics", "notary", "trust_pinning", "exempt", "policy"
    )
    version = document.integer("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise document.error("version", f"must be {CONFIG_VERSION} (got {version})")
    return Config(
        server=_parse_server(document.table("server")),
        audit=_parse_audit(document.table("audit")),
        metrics=_parse_metrics(document.table("metrics")),
        notary=_parse_notary_servers(document.tables("notary")),
        trust_pinning=_parse_trust_pinning(document.table("trust_pinning")),
        exempt=_parse_exempt(document),
        policy=tuple(
            _parse_rule(rule, index) for index, rule in enumerate(document.tables("policy"))
        ),
        source=document.context.source_path,
    )


def _parse_server(table: _Table) -> ServerConfig:
    table.allow(
        "socket",
        "containerd",
        "containerd_namespace",
        "state_dir",
        "pull_timeout",
        "shutdown_grace",
        "socket_mode",
        "freshness_window",
        "expiry_warning_days",
        "verifier_socket",
    )
    default = ServerConfig()
    containerd = table.string("containerd", default.containerd)
    if not containerd.startswith("unix:///") or len(containerd) == len("unix:///"):
        raise table.error(
            "containerd",
            f"must be unix:// followed by an absolute socket path (got {_show(containerd)})",
        )
    namespace = table.string("containerd_namespace", default.containerd_namespace)
    if not _CONTAINERD_NAMESPACE.fullmatch(namespace) or len(namespace) > 76:
        raise table.error(
            "containerd_namespace",
            "must be letters and digits separated by '.', '_' or '-', at most 76 characters "
            f"(got {_show(namespace)})",
        )
    socket = table.path("socket", default.socket)
    verifier_socket = _parse_verifier_socket(table)
    if verifier_socket == socket:
        raise table.error("verifier_socket", f"must not be server.socket ({socket})")
    return ServerConfig(
        socket=socket,
        containerd=containerd,
        containerd_namespace=namespace,
        state_dir=table.path("state_dir", default.state_dir),
        pull_timeout=table.seconds("pull_timeout", default.pull_timeout),
        shutdown_grace=table.seconds("shutdown_grace", default.shutdown_grace, allow_zero=True),
        socket_mode=_parse_mode_bits(table, "socket_mode", default.socket_mode),
        freshness_window=_parse_freshness_window(table, default.freshness_window),
        expiry_warning_days=_parse_days(table, "expiry_warning_days", default.expiry_warning_days),
        verifier_socket=verifier_socket,
    )


# Longer windows delay revocation by as long; an hour is far past any sensible setting.
_MAX_FRESHNESS_WINDOW = 3600.0


def _parse_freshness_window(table: _Table, default: float) -> float:
    window = table.seconds("freshness_window", default, allow_zero=True)
    if window > _MAX_FRESHNESS_WINDOW:
        raise table.error(
            "freshness_window",
            f"must be at most {_MAX_FRESHNESS_WINDOW:g} seconds: a re-signed or removed tag is "
            f"seen only that much later (got {_show(table.data['freshness_window'])})",
        )
    return window


MAX_WARNING_DAYS = 3650  # root metadata lives 10 years; anything longer is a unit mistake


def _parse_days(table: _Table, key: str, default: int) -> int:
    if key not in table.data:
        return default
    value = table.data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise table.error(key, f"must be a whole number of days (got {_show(value)})")
    if not 0 <= value <= MAX_WARNING_DAYS:
        raise table.error(
            key,
            f"must be from 0 (never warn) to {MAX_WARNING_DAYS} days (got {value}; the value is "
            "in days, not seconds)",
        )
    return value


def _parse_verifier_socket(table: _Table) -> Path | None:
    text = table.string("verifier_socket", str(DEFAULT_VERIFIER_SOCKET))
    return table.context.resolve(text) if text else None


_CONTAINERD_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


def _parse_mode_bits(table: _Table, key: str, default: int) -> int:
    if key not in table.data:
        return default
    value = table.data[key]
    if not isinstance(value, str):
        raise table.error(
            key,
            f'must be a string of octal digits such as "0660" (got {_show(value)}; a TOML '
            "number would be read as decimal)",
        )
    if not re.fullmatch(r"0?[0-7]{3}", value):
        raise table.error(key, f'must be octal permission bits such as "0660" (got {_show(value)})')
    return int(value, 8)


def _parse_audit(table: _Table) -> AuditConfig:
    table.allow("file", "stdout")
    default = AuditConfig()
    file_text = table.string("file", str(default.file))
    return AuditConfig(
        file=table.context.resolve(file_text) if file_text else None,
        stdout=table.boolean("stdout", default.stdout),
    )


def _parse_metrics(table: _Table) -> MetricsConfig:
    table.allow("listen")
    listen = table.string("listen", MetricsConfig().listen)
    if listen:
        problem = _listen_problem(listen)
        if problem is not None:
            raise table.error("listen", f"{problem} (got {_show(listen)})")
    return MetricsConfig(listen=listen)


_HOST_NAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


def _listen_problem(listen: str) -> str | None:
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        if not path.startswith("/") or path.endswith("/"):
            return 'a unix socket needs an absolute file path, e.g. "unix:/run/trustd/metrics.sock"'
        return None
    host, colon, port = listen.rpartition(":")
    if not colon or not host:
        return 'must be host:port, e.g. "127.0.0.1:9879" ("" disables metrics)'
    if not port.isdigit() or not 0 < int(port) < 65536:
        return "port must be a number from 1 to 65535"
    if host.startswith("["):
        if not host.endswith("]"):
            return "IPv6 address must be in brackets, e.g. [::1]:9879"
        import ipaddress  # only for this check; `trustctl` starts quicker without it

        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
        return None
    if ":" in host:
        return "IPv6 address must be in brackets, e.g. [::1]:9879"
    if not _HOST_NAME.fullmatch(host):
        return f"{_show(host)} is not a host name or IPv4 address"
    return None


def _parse_notary_servers(tables: list[_Table]) -> tuple[NotaryServer, ...]:
    servers: list[NotaryServer] = []
    first_index: dict[str, int] = {}
    for index, table in enumerate(tables):
        server = _parse_notary(table, index)
        if server.registry in first_index:
            raise table.error(
                "registry",
                f"{_show(server.registry)} is already configured in "
                f"notary[{first_index[server.registry]}]",
            )
        first_index[server.registry] = index
        servers.append(server)
    return tuple(servers)


def _parse_notary(table: _Table, index: int) -> NotaryServer:
    if "password" in table.data:
        raise table.error(
            "password",
            "passwords are never read from the config file; put it in a file readable only by "
            "trustd and set password_file",
        )
    table.allow(
        "registry",
        "url",
        "ca",
        "client_cert",
        "client_key",
        "username",
        "password_file",
        "timeout",
        "max_metadata_bytes",
        "root_max_bytes",
        "timestamp_max_bytes",
        "retries",
    )
    registry = table.required_string("registry")
    try:
        parse_registry(registry)
    except InvalidReference as error:
        raise table.error("registry", f"{error} (write host[:port] as in image names)") from None
    url = table.required_string("url")
    problem = _url_problem(url)
    if problem is not None:
        raise table.error("url", f"{problem} (got {_show(url)})")

    client_cert = table.existing_file("client_cert")
    client_key = table.existing_file("client_key")
    if (client_cert is None) != (client_key is None):
        missing = "client_key" if client_key is None else "client_cert"
        present = "client_cert" if client_key is None else "client_key"
        raise table.error(missing, f"is required when {present} is set")
    username = table.optional_string("username")
    if username is not None and not username:
        raise table.error("username", "must not be empty")
    password_file = table.existing_file("password_file")
    if password_file is not None and username is None:
        raise table.error("username", "is required when password_file is set")
    if username is not None and password_file is None:
        raise table.error("password_file", "is required when username is set")

    default = NotaryServer(registry="", url="")
    return NotaryServer(
        registry=registry,
        url=url.rstrip("/"),
        ca=table.existing_file("ca"),
        client_cert=client_cert,
        client_key=client_key,
        username=username,
        password_file=password_file,
        timeout=table.seconds("timeout", default.timeout),
        max_metadata_bytes=table.byte_count("max_metadata_bytes", default.max_metadata_bytes),
        root_max_bytes=table.byte_count("root_max_bytes", default.root_max_bytes),
        timestamp_max_bytes=table.byte_count("timestamp_max_bytes", default.timestamp_max_bytes),
        retries=_parse_retries(table, default.retries),
        source=f"notary[{index}]",
    )


_MAX_RETRIES = 10


def _parse_retries(table: _Table, default: int) -> int:
    retries = table.integer("retries", default)
    if not 0 <= retries <= _MAX_RETRIES:
        raise table.error("retries", f"must be from 0 to {_MAX_RETRIES} (got {retries})")
    return retries


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"is not a valid URL: {error}"
    if parts.scheme != "https":
        return "must be an https:// URL (trust data is never fetched over plain HTTP)"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials; use username and password_file"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    if port == 0:
        return "port must be a number from 1 to 65535"
    return None


_KEY_ID = re.compile(r"[a-f0-9]{64}")


def _parse_trust_pinning(table: _Table) -> TrustPinningConfig:
    table.allow("disable_tofu", "certs", "ca")
    certs_table = table.table("certs")
    certs: list[tuple[GunPattern, tuple[str, ...]]] = []
    for gun in certs_table.data:
        try:
            pattern = GunPattern(gun)
        except InvalidPattern as error:
            raise certs_table.error(gun, str(error)) from None
        key_ids = certs_table.string_list(gun, None)
        if not key_ids:
            raise certs_table.error(gun, "must list at least one root key ID")
        for position, key_id in enumerate(key_ids):
            if not _KEY_ID.fullmatch(key_id):
                raise certs_table.error(
                    gun,
                    "must be a root key ID: 64 lowercase hexadecimal characters "
                    f"(got {_show(key_id)})",
                    position,
                )
        certs.append((pattern, tuple(key_ids)))

    ca_table = table.table("ca")
    ca: list[tuple[str, Path]] = []
    for prefix in ca_table.data:
        try:
            check_gun_prefix(prefix)
        except InvalidPattern as error:
            raise ca_table.error(prefix, str(error)) from None
        ca_file = ca_table.existing_file(prefix)
        assert ca_file is not None  # the key is present
        ca.append((prefix, ca_file))

    return TrustPinningConfig(
        disable_tofu=table.boolean("disable_tofu", False),
        certs=tuple(certs),
        ca=tuple(ca),
    )


def _parse_exempt(document: _Table) -> tuple[ExemptPattern, ...]:
    entries = document.string_list("exempt", [])
    exemptions: list[ExemptPattern] = []
    for position, text in enumerate(entries):
        repository_text, tag_text = text, None
        colon = text.rfind(":")
        if colon > text.rfind("/"):  # a ":" after the last "/" starts the tag pattern
            repository_text, tag_text = text[:colon], text[colon + 1 :]
        try:
            exemption = ExemptPattern(
                text=text,
                repository=RepositoryPattern(repository_text),
                tag=TagPattern(tag_text) if tag_text is not None else None,
            )
        except InvalidPattern as error:
            raise document.error("exempt", str(error), position) from None
        exemptions.append(exemption)
    return tuple(exemptions)


_ROLE = re.compile(r"targets(?:/[A-Za-z0-9_.-]+)*")


def _parse_rule(table: _Table, index: int) -> PolicyRule:
    table.allow(
        "match",
        "mode",
        "roles",
        "signers",
        "require_signed_digests",
        "offline",
        "max_offline_age",
    )
    match = table.required_string("match")
    try:
        RepositoryPattern(match)
    except InvalidPattern as error:
        raise table.error("match", str(error)) from None
    mode_text = table.string("mode", Mode.ENFORCE.value)
    try:
        mode = Mode(mode_text)
    except ValueError:
        choices = ", ".join(json.dumps(mode.value) for mode in Mode)
        raise table.error("mode", f"must be one of {choices} (got {_show(mode_text)})") from None

    roles = table.string_list("roles", list(DEFAULT_ROLES))
    if not roles:
        raise table.error("roles", "must name at least one role")
    _check_roles(table, "roles", roles, allow_top_level=True)
    signers = table.string_list("signers", [])
    _check_roles(table, "signers", signers, allow_top_level=False)
    offline_text = table.string("offline", OfflinePolicy.CACHED.value)
    try:
        offline = OfflinePolicy(offline_text)
    except ValueError:
        choices = ", ".join(json.dumps(policy.value) for policy in OfflinePolicy)
        raise table.error(
            "offline", f"must be one of {choices} (got {_show(offline_text)})"
        ) from None
    max_offline_age = None
    if "max_offline_age" in table.data:
        max_offline_age = table.seconds("max_offline_age", 0.0)
    return PolicyRule(
        match=match,
        mode=mode,
        roles=tuple(roles),
        signers=tuple(signers),
        require_signed_digests=table.boolean("require_signed_digests", True),
        offline=offline,
        max_offline_age=max_offline_age,
        index=index,
    )


def _check_roles(table: _Table, key: str, roles: list[str], allow_top_level: bool) -> None:
    seen: set[str] = set()
    for position, role in enumerate(roles):
        valid = _ROLE.fullmatch(role) is not None and not any(
            part in (".", "..") for part in role.split("/")
        )
        if not valid or (role == "targets" and not allow_top_level):
            expected = '"targets" or "targets/<name>"' if allow_top_level else '"targets/<name>"'
            raise table.error(key, f"must be {expected} (got {_show(role)})", position)
        if role in seen:
            raise table.error(key, f"{_show(role)} is listed twice", position)
        seen.add(role)


# --- reading TOML tables with located errors ------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    source: str
    base_dir: Path

    @property
    def source_path(self) -> Path:
        return Path(self.source)

    def resolve(self, text: str) -> Path:
        path = Path(text)
        return path if path.is_absolute() else Path(os.path.normpath(self.base_dir / path))


class _Table:
    """One TOML table and its key path; every accessor checks the type and names the key."""

    def __init__(self, data: Mapping[str, Any], key_path: str, context: _Context) -> None:
        self.data = data
        self.key_path = key_path
        self.context = context

    def error(self, key: str, problem: str, index: int | None = None) -> ConfigError:
        """An error at ``key`` (or its element ``index``) of this table."""
        return ConfigError(f"{self.context.source}: {self._key_path(key, index)}: {problem}")

    def _key_path(self, key: str, index: int | None = None) -> str:
        path = f"{self.key_path}.{_key(key)}" if self.key_path else _key(key)
        return path if index is None else f"{path}[{index}]"

    def allow(self, *keys: str) -> None:
        for key in self.data:
            if key not in keys:
                import difflib  # only for this message; `trustctl` starts quicker without it

                close = difflib.get_close_matches(key, keys, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else ""
                raise self.error(key, f"unknown key (known: {', '.join(keys)}){hint}")

    def _typed(self, key: str, expected: type | tuple[type, ...], description: str) -> Any:
        value = self.data[key]
        if isinstance(value, bool) and bool not in _as_tuple(expected):
            raise self.error(key, f"must be {description} (got {_show(value)})")
        if not isinstance(value, expected):
            raise self.error(key, f"must be {description} (got {_show(value)})")
        return value

    def string(self, key: str, default: str) -> str:
        return self._typed(key, str, "a string") if key in self.data else default

    def optional_string(self, key: str) -> str | None:
        return self._typed(key, str, "a string") if key in self.data else None

    def required_string(self, key: str) -> str:
        if key not in self.data:
            raise self.error(key, "is required")
        value: str = self._typed(key, str, "a string")
        if not value:
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._typed(key, bool, "true or false") if key in self.data else default

    def integer(self, key: str, default: int) -> int:
        return self._typed(key, int, "an integer") if key in self.data else default

    def seconds(self, key: str, default: float, allow_zero: bool = False) -> float:
        if key not in self.data:
            return default
        value = float(self._typed(key, (int, float), "a number of seconds"))
        if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
            bound = "zero or more" if allow_zero else "more than zero"
            raise self.error(key, f"must be {bound} seconds (got {_show(self.data[key])})")
        return value

    def byte_count(self, key: str, default: int) -> int:
        if key not in self.data:
            return default
        value: int = self._typed(key, int, "a number of bytes")
        if value <= 0:
            raise self.error(key, f"must be more than zero bytes (got {value})")
        return value

    def path(self, key: str, default: Path) -> Path:
        if key not in self.data:
            return default
        text: str = self._typed(key, str, "a path")
        if not text:
            raise self.error(key, "must not be empty")
        return self.context.resolve(text)

    def existing_file(self, key: str) -> Path | None:
        if key not in self.data:
            return None
        text: str = self._typed(key, str, "a path")
        if not text:
            raise self.error(key, "must not be empty (leave the key out instead)")
        path = self.context.resolve(text)
        if not path.is_file():
            relative = "" if Path(text).is_absolute() else f" (relative to {self.context.base_dir})"
            raise self.error(key, f"file {path} does not exist{relative}")
        return path

    def string_list(self, key: str, default: list[str] | None) -> list[str]:
        if key not in self.data:
            if default is None:
                raise self.error(key, "is required")
            return default
        values: list[Any] = self._typed(key, list, "an array of strings")
        for position, value in enumerate(values):
            if not isinstance(value, str):
                raise self.error(key, f"must be a string (got {_show(value)})", position)
        return values

    def table(self, key: str) -> _Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table (got {_show(value)})")
        return _Table(value, self._key_path(key), self.context)

    def tables(self, key: str) -> list[_Table]:
        """An array of tables (``[[key]]``), each with its index in the key path."""
        values = self.data.get(key, [])
        if not isinstance(values, list):
            raise self.error(key, f"must be an array of tables, written [[{key}]]")
        tables = []
        for position, value in enumerate(values):
            if not isinstance(value, dict):
                raise self.error(key, f"must be a table (got {_show(value)})", position)
            tables.append(_Table(value, self._key_path(key, position), self.context))
        return tables


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    """A key as written in a TOML key path: bare when it can be, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _show(value: object) -> str:
    """A value as TOML would write it, for "(got ...)"; tables and arrays by kind only."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value[:200] + ("..." if len(value) > 200 else ""))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"  # dates and times
