"""The node-wide configuration file (``/etc/trustd/trustd.toml``), version 1: its objects, each key
declared once.

Every key is one ``setting`` line of the frozen object it fills: its name, the kind of value it
takes (type, checks, conversion) and its default (see ``trustd.config.schema``). Reading the file
(``trustd.config.load.load_config``) walks these declarations; every section is optional and
defaults to a production setting, and unknown keys are errors at every level, so that a misspelt
key in a security policy is never ignored. Relative paths are resolved against the directory of
the config file; files the config names (CA bundles, client certificates, password files) must
exist when it is loaded.

``docs/config.md`` documents every key (a test compares it with these declarations).

Adding a key is one line in the class of its table, plus its row in ``docs/config.md``::

    class ServerConfig(Table):
        max_pulls: int = setting(integer(check=within(1, 64)), default=8)       # a scalar
        keys_dir: Path = setting(path(), default=Path("/etc/trustd/keys"))      # a path
        ca: Path | None = setting(existing_file(), default=None)                # a file that exists
        formats: tuple[Format, ...] = setting(                                  # an array
            string_list(choice(Format), at_least_one="must name a format", unique=True),
            default=(Format.NOTARY,),
        )

    class Config(Table):
        limits: LimitsConfig = setting(table(LimitsConfig), default=LimitsConfig())  # [limits]
        cosign_key: tuple[CosignKey, ...] = setting(                          # [[cosign_key]]
            tables(CosignKey, unique="name"), default=()
        )

A new table is a new ``Table`` subclass declared the same way; a key without ``default`` is
required; a kind the schema lacks is a function ``(value: object, where: Where) -> T`` that
raises ``where.error(problem)``; a rule between keys goes into the table's ``check_keys`` (or
``Config.check_keys`` across tables, with ``where.key("policy").item(0).key("x")`` for its place).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from trustd.config import paths
from trustd.config.schema import (
    Check,
    Table,
    Where,
    accepted_by,
    boolean,
    byte_count,
    choice,
    derived,
    existing_file,
    file_mode,
    integer,
    mapping,
    parsed,
    path,
    path_or_none,
    seconds,
    setting,
    show,
    string,
    string_list,
    table,
    tables,
    toml_key,
    within,
)
from trustd.formats.base import (
    NOTARY_V1_ONLY,
    Combination,
    FormatName,
    SignatureRequirement,
)
from trustd.formats.notary.key_ids import ROOT_KEY_ID_FORM, is_key_id
from trustd.names.patterns import (
    GunPattern,
    RepositoryPattern,
    TagPattern,
    check_gun_prefix,
    longest_gun_prefix,
    most_specific_gun_pattern,
)
from trustd.names.reference import DEFAULT_REGISTRY, Reference, parse_registry
from trustd.net.listen import InvalidListenAddress, parse_listen_address

CONFIG_VERSION = 1
DOCKER_HUB_NOTARY = "https://notary.docker.io"
DOCKER_HUB_NOTARY_END = "2026-12-08"
DEFAULT_ROLES = ("targets/releases", "targets")  # docker's search order with content trust
MEBIBYTE = 1024 * 1024
DEFAULT_VERIFIER_SOCKET = Path(paths.DEFAULT_VERIFIER_SOCKET)
# Longer windows delay revocation by as long; an hour is far past any sensible setting.
MAX_FRESHNESS_WINDOW = 3600.0
MAX_WARNING_DAYS = 3650  # root metadata lives 10 years; anything longer is a unit mistake
MAX_RETRIES = 10


class Mode(StrEnum):
    ENFORCE = "enforce"  # admit only verified images
    AUDIT = "audit"  # verify and record, admit anyway
    OFF = "off"  # do not verify


class OfflinePolicy(StrEnum):
    """What a rule does when its Notary server cannot be reached."""

    CACHED = "cached"  # notary's own behaviour: use cached trust data that verifies, unexpired
    DENY = "deny"  # fail closed on any outage


# --- checks of single keys ------------------------------------------------------------------------


def _containerd_problem(address: str) -> str | None:
    if address.startswith("unix:///") and len(address) > len("unix:///"):
        return None
    return f"must be unix:// followed by an absolute socket path (got {show(address)})"


_CONTAINERD_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


def _namespace_problem(namespace: str) -> str | None:
    if _CONTAINERD_NAMESPACE.fullmatch(namespace) and len(namespace) <= 76:
        return None
    return (
        "must be letters and digits separated by '.', '_' or '-', at most 76 characters "
        f"(got {show(namespace)})"
    )


def _group_or_none(value: object, where: Where) -> str | None:
    """A group of the node's group database, by name; "" for none."""
    if not isinstance(value, str):
        raise where.error(f'must be a group name, or "" for none (got {show(value)})')
    if not value:
        return None
    import grp

    try:
        grp.getgrnam(value)
    except KeyError:
        raise where.error(f"no group {show(value)} on this node (getent group {value})") from None
    return value


def _warning_days(value: object, where: Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(f"must be a whole number of days (got {show(value)})")
    if not 0 <= value <= MAX_WARNING_DAYS:
        raise where.error(
            f"must be from 0 (never warn) to {MAX_WARNING_DAYS} days (got {value}; the value is "
            "in days, not seconds)"
        )
    return value


def _listen_problem(listen: str) -> str | None:
    if not listen:
        return None  # disabled
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        if not path.startswith("/") or path.endswith("/"):
            return (
                'a unix socket needs an absolute file path, e.g. "unix:/run/trustd/metrics.sock" '
                f"(got {show(listen)})"
            )
        return None
    try:
        parse_listen_address(listen)
    except InvalidListenAddress as error:
        hint = ' ("" disables metrics)' if error.not_host_port else ""
        return f"{error.problem}{hint} (got {show(listen)})"
    return None


def _registry_problem(registry: str) -> str | None:
    problem = accepted_by(parse_registry)(registry)
    return None if problem is None else f"{problem} (write host[:port] as in image names)"


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"is not a valid URL: {error} (got {show(url)})"
    if parts.scheme != "https":
        problem = "must be an https:// URL (trust data is never fetched over plain HTTP)"
    elif not parts.hostname:
        problem = "has no host"
    elif parts.username is not None or parts.password is not None:
        problem = "must not contain credentials; use username and password_file"
    elif parts.query or parts.fragment:
        problem = "must not have a query or fragment"
    elif port == 0:
        problem = "port must be a number from 1 to 65535"
    else:
        return None
    return f"{problem} (got {show(url)})"


_URL = string(empty=False, check=_url_problem)


def _notary_url(value: object, where: Where) -> str:
    return _URL(value, where).rstrip("/")


def _root_key_id_problem(key_id: str) -> str | None:
    return None if is_key_id(key_id) else f"must be {ROOT_KEY_ID_FORM} (got {show(key_id)})"


_ROLE = re.compile(r"targets(?:/[A-Za-z0-9_.-]+)*")


def _role(*, top_level: bool) -> Check[str]:
    """``targets/<name>`` (and ``targets`` itself when ``top_level``)."""
    expected = '"targets" or "targets/<name>"' if top_level else '"targets/<name>"'

    def check(role: str) -> str | None:
        valid = _ROLE.fullmatch(role) is not None and not any(
            part in (".", "..") for part in role.split("/")
        )
        if valid and (top_level or role != "targets"):
            return None
        return f"must be {expected} (got {show(role)})"

    return check


def _version_problem(version: int) -> str | None:
    return None if version == CONFIG_VERSION else f"must be {CONFIG_VERSION} (got {version})"


# --- the configuration objects --------------------------------------------------------------------


class ServerConfig(Table):
    socket: Path = setting(path(), default=Path("/run/trustd/cri.sock"))
    containerd: str = setting(
        string(check=_containerd_problem), default="unix:///run/containerd/containerd.sock"
    )
    containerd_namespace: str = setting(string(check=_namespace_problem), default="k8s.io")
    state_dir: Path = setting(path(), default=Path("/var/lib/trustd"))
    pull_timeout: float = setting(seconds(), default=600.0)
    shutdown_grace: float = setting(seconds(zero=True), default=30.0)
    socket_mode: int = setting(file_mode(), default=0o660)
    # Lookups of one repository within this many seconds of a verified refresh reuse it
    # (kubelet's ImageStatus, PullImage, ImageStatus for one container start); 0 = always fetch.
    freshness_window: float = setting(
        seconds(
            zero=True,
            at_most=MAX_FRESHNESS_WINDOW,
            because="a re-signed or removed tag is seen only that much later",
        ),
        default=1.0,
    )
    # Warn this many days before trust data or a root certificate expires (0: never warn).
    expiry_warning_days: int = setting(_warning_days, default=30)
    # Where containerd's image-verifier hook (trustd.programs.image_verifier) asks the daemon;
    # None ("" in the file): not served.
    verifier_socket: Path | None = setting(path_or_none(), default=DEFAULT_VERIFIER_SOCKET)
    # Besides root (and the daemon's own user), members of this group may ask on the verifier
    # socket (trustctl verify); None ("" in the file): root only.
    verifier_group: str | None = setting(_group_or_none, default=None)

    def check_keys(self, where: Where) -> None:
        if self.verifier_socket == self.socket:
            raise where.key("verifier_socket").error(f"must not be server.socket ({self.socket})")
        containerd = _normal(self.containerd_socket)
        for key, value in (("socket", self.socket), ("verifier_socket", self.verifier_socket)):
            if value is not None and _normal(value) == containerd:
                raise where.key(key).error(
                    f"must not be containerd's socket ({self.containerd_socket}, server.containerd)"
                    ": trustd would remove it and listen in containerd's place"
                )

    @property
    def containerd_socket(self) -> Path:
        """The filesystem path of the containerd socket (``containerd`` without ``unix://``)."""
        return Path(self.containerd.removeprefix("unix://"))


def _normal(path: Path) -> str:
    return os.path.normpath(path)


class AuditConfig(Table):
    # None ("" in the file): no audit file
    file: Path | None = setting(path_or_none(), default=Path("/var/log/trustd/audit.log"))
    stdout: bool = setting(boolean(), default=True)


class MetricsConfig(Table):
    # "" disables the metrics endpoint
    listen: str = setting(string(check=_listen_problem), default="127.0.0.1:9879")

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to listen on (IPv6 without brackets), or None when disabled."""
        if not self.listen or self.listen.startswith("unix:"):
            return None
        return parse_listen_address(self.listen)


class NotaryServer(Table):
    """The Notary server holding the trust data of one registry's repositories."""

    REFUSED_KEYS: ClassVar[dict[str, str]] = {
        "password": "passwords are never read from the config file; put it in a file readable "
        "only by trustd and set password_file",
    }

    registry: str = setting(string(empty=False, check=_registry_problem))
    url: str = setting(_notary_url)  # without a trailing "/"
    client_cert: Path | None = setting(existing_file(), default=None)
    client_key: Path | None = setting(existing_file(), default=None)
    username: str | None = setting(string(empty=False), default=None)
    password_file: Path | None = setting(existing_file(), default=None)
    ca: Path | None = setting(existing_file(), default=None)  # None: the system's CAs
    timeout: float = setting(seconds(), default=10.0)
    max_metadata_bytes: int = setting(byte_count(), default=16 * MEBIBYTE)
    root_max_bytes: int = setting(byte_count(), default=MEBIBYTE)
    timestamp_max_bytes: int = setting(byte_count(), default=64 * 1024)
    # Further attempts after a transient failure (reset, timeout, 502-504).
    retries: int = setting(integer(check=within(0, MAX_RETRIES)), default=2)
    # "notary[0]" when configured; for messages
    source: str = derived(lambda where: where.path, default="default")

    def check_keys(self, where: Where) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            missing = "client_key" if self.client_key is None else "client_cert"
            present = "client_cert" if self.client_key is None else "client_key"
            raise where.key(missing).error(f"is required when {present} is set")
        if self.password_file is not None and self.username is None:
            raise where.key("username").error("is required when password_file is set")
        if self.username is not None and self.password_file is None:
            raise where.key("password_file").error("is required when username is set")


@dataclass(frozen=True)
class PinningRule:
    """How the first root of one GUN is trusted (notary's trust pinning, resolved for the GUN)."""

    root_key_ids: tuple[str, ...]
    ca_file: Path | None
    allow_tofu: bool
    source: str  # the config entry it came from, for messages


class TrustPinningConfig(Table):
    disable_tofu: bool = setting(boolean(), default=False)
    # GUN or "prefix*" -> the root key IDs pinned for it
    certs: tuple[tuple[GunPattern, tuple[str, ...]], ...] = setting(
        mapping(
            GunPattern,
            string_list(
                string(check=_root_key_id_problem),
                at_least_one="must list at least one root key ID",
            ),
        ),
        default=(),
    )
    # GUN prefix -> the CA bundle its first root's certificate must chain to
    ca: tuple[tuple[str, Path], ...] = setting(
        mapping(check_gun_prefix, existing_file()), default=()
    )

    def rule_for(self, gun: str) -> PinningRule:
        """notary's precedence: pinned key IDs (exact GUN, then longest ``prefix*``), then the
        CA of the longest matching prefix, then trust on first use unless it is disabled."""
        key_ids = dict(self.certs)
        pattern = most_specific_gun_pattern(gun, key_ids)
        if pattern is not None:
            source = f"trust_pinning.certs.{toml_key(pattern.text)}"
            return PinningRule(key_ids[pattern], None, allow_tofu=False, source=source)
        ca_files = dict(self.ca)
        prefix = longest_gun_prefix(gun, ca_files)
        if prefix is not None:
            source = f"trust_pinning.ca.{toml_key(prefix)}"
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

    @classmethod
    def parse(cls, text: str) -> ExemptPattern:
        """Raises InvalidPattern."""
        repository_text, tag_text = text, None
        colon = text.rfind(":")
        if colon > text.rfind("/"):  # a ":" after the last "/" starts the tag pattern
            repository_text, tag_text = text[:colon], text[colon + 1 :]
        return cls(
            text=text,
            repository=RepositoryPattern(repository_text),
            tag=TagPattern(tag_text) if tag_text is not None else None,
        )

    def matches(self, reference: Reference) -> bool:
        if not self.repository.matches(reference.repository):
            return False
        if self.tag is None:
            return True
        return reference.tag is not None and self.tag.matches(reference.tag)


def _signature_requirement(value: object, where: Where) -> SignatureRequirement:
    """``"notation"``, or ``{ any_of = [...] }`` / ``{ all_of = [...] }`` of format names."""
    names = ", ".join(f'"{name.value}"' for name in FormatName)
    if isinstance(value, str):
        return SignatureRequirement((_format_name(value, where, names),))
    if not isinstance(value, dict) or len(value) != 1:
        raise where.error(
            f"must be a format name ({names}) or a table with one key, any_of or all_of, "
            f"listing format names (got {show(value)})"
        )
    [(key, listed)] = value.items()
    try:
        combination = Combination(key)
    except ValueError:
        raise where.error(f"unknown key {toml_key(key)}: use any_of or all_of") from None
    inner = where.key(key)
    if not isinstance(listed, list) or not listed:
        raise inner.error(f"must be a non-empty array of format names (got {show(listed)})")
    formats = tuple(_format_name(item, inner, names) for item in listed)
    if len(set(formats)) != len(formats):
        raise inner.error("names a format more than once")
    return SignatureRequirement(formats, combination)


def _format_name(value: object, where: Where, names: str) -> FormatName:
    if isinstance(value, str):
        try:
            return FormatName(value)
        except ValueError:
            pass
    raise where.error(f"unknown signature format {show(value)} (known: {names})")


class CosignRule(Table):
    """A rule's ``[policy.cosign]``: the public keys its cosign signatures must verify with."""

    keys: tuple[Path, ...] = setting(
        string_list(
            existing_file(), at_least_one="must name at least one public key file", unique=True
        )
    )
    # How many distinct keys of ``keys`` must have signed the digest.
    threshold: int = setting(integer(check=within(1, 64)), default=1)
    # Rekor's public keys: when set, a classic signature counts only with a Rekor signed entry
    # timestamp (the ``dev.sigstore.cosign/bundle`` annotation) one of them verifies, offline.
    rekor_public_keys: tuple[Path, ...] = setting(
        string_list(existing_file(), unique=True), default=()
    )

    def check_keys(self, where: Where) -> None:
        if self.threshold > len(self.keys):
            raise where.key("threshold").error(
                f"is {self.threshold}, more than the {len(self.keys)} key(s) in keys"
            )


class PolicyRule(Table):
    """One ``[[policy]]`` entry, or the built-in default (``index`` None)."""

    match: str = setting(string(empty=False, check=accepted_by(RepositoryPattern)))
    mode: Mode = setting(choice(Mode), default=Mode.ENFORCE)
    roles: tuple[str, ...] = setting(
        string_list(
            string(check=_role(top_level=True)),
            at_least_one="must name at least one role",
            unique=True,
        ),
        default=DEFAULT_ROLES,
    )
    signers: tuple[str, ...] = setting(
        string_list(string(check=_role(top_level=False)), unique=True), default=()
    )
    require_signed_digests: bool = setting(boolean(), default=True)
    offline: OfflinePolicy = setting(choice(OfflinePolicy), default=OfflinePolicy.CACHED)
    # Seconds; cached data older than this is not used.
    max_offline_age: float | None = setting(seconds(), default=None)
    # Which signature formats must verify: one format, or any_of / all_of several.
    signatures: SignatureRequirement = setting(_signature_requirement, default=NOTARY_V1_ONLY)
    # The keys cosign signatures must verify with, where ``signatures`` names cosign.
    cosign: CosignRule | None = setting(table(CosignRule), default=None)
    # Position in the [[policy]] array; None for the default rule.
    index: int | None = derived(lambda where: where.index, default=None)
    pattern: RepositoryPattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", RepositoryPattern(self.match))

    def check_keys(self, where: Where) -> None:
        if FormatName.COSIGN in self.signatures.formats and self.cosign is None:
            raise where.key("signatures").error(
                "names cosign, but the rule has no [policy.cosign] keys to verify with"
            )

    def matches(self, repository: str) -> bool:
        return self.pattern.matches(repository)

    @property
    def source(self) -> str:
        return "default rule" if self.index is None else f"policy[{self.index}]"


DEFAULT_RULE = PolicyRule(match="**")


class RegistryConfig(Table):
    """``[registry]``: how trustd reads signatures stored in registries (Notation, cosign)."""

    # containerd's hosts.toml directories (its registry config_path): where each registry is
    # reached and with which TLS settings, as containerd reaches it.
    hosts_dirs: tuple[Path, ...] = setting(
        string_list(path(), unique=True), default=(Path("/etc/containerd/certs.d"),)
    )
    # Seconds for a whole request (connection, headers and body), and never past the call's.
    timeout: float = setting(seconds(at_most=300, because="a pull waits for it"), default=10.0)
    max_manifest_bytes: int = setting(byte_count(), default=4 * 1024 * 1024)
    max_signature_bytes: int = setting(byte_count(), default=4 * 1024 * 1024)


class NotationConfig(Table):
    """``[notation]``: the Notation trust policy and trust store, as the notation CLI keeps them."""

    # A directory holding trustpolicy.oci.json (or trustpolicy.json) and truststore/x509/;
    # None ("" in the file): Notation signatures cannot be verified on this node.
    config_dir: Path | None = setting(path_or_none(), default=None)


class Config(Table):
    """The whole file."""

    version: int = setting(integer(check=_version_problem), default=CONFIG_VERSION)
    server: ServerConfig = setting(table(ServerConfig), default=ServerConfig())
    audit: AuditConfig = setting(table(AuditConfig), default=AuditConfig())
    metrics: MetricsConfig = setting(table(MetricsConfig), default=MetricsConfig())
    notary: tuple[NotaryServer, ...] = setting(tables(NotaryServer, unique="registry"), default=())
    trust_pinning: TrustPinningConfig = setting(
        table(TrustPinningConfig), default=TrustPinningConfig()
    )
    exempt: tuple[ExemptPattern, ...] = setting(
        string_list(parsed(ExemptPattern.parse)), default=()
    )
    policy: tuple[PolicyRule, ...] = setting(tables(PolicyRule), default=())
    registry: RegistryConfig = setting(table(RegistryConfig), default=RegistryConfig())
    notation: NotationConfig = setting(table(NotationConfig), default=NotationConfig())
    # The file it was read from.
    source: Path | None = derived(lambda where: Path(where.source), default=None)

    def check_keys(self, where: Where) -> None:
        self._check_metrics_socket(where)
        if self.notation.config_dir is not None:
            return
        for index, rule in enumerate(self.policy):
            if FormatName.NOTATION in rule.signatures.formats:
                raise (
                    where.key("policy")
                    .item(index)
                    .key("signatures")
                    .error("names notation, but [notation] config_dir is not set")
                )

    def _check_metrics_socket(self, where: Where) -> None:
        if not self.metrics.listen.startswith("unix:"):
            return
        metrics = os.path.normpath(self.metrics.listen.removeprefix("unix:"))
        server = self.server
        for key, socket in (
            ("server.socket", server.socket),
            ("server.verifier_socket", server.verifier_socket),
            ("server.containerd", server.containerd_socket),
        ):
            if socket is not None and _normal(socket) == metrics:
                raise (
                    where.key("metrics")
                    .key("listen")
                    .error(f"must not be the socket of {key} ({socket})")
                )

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
