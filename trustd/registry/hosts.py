"""Where a registry is reached, as containerd's registry host settings say.

containerd's CRI plugin reads ``config_path`` (one directory, or several joined with ``:``): a
directory per registry host (``<host>/hosts.toml``, ``_default/hosts.toml`` for every other
host) listing mirrors (``[host."https://..."]``) tried in file order before the ``server``. trustd
must fetch signatures from the same place containerd pulls from, over the same TLS settings, so
this module reads those files the way containerd does and turns them into ``RegistryEndpoint``s.

``parse_hosts_toml`` and ``endpoints_from_hosts`` are pure; reading the directory is done by
``load_host_directory`` and ``endpoints_for`` / ``endpoint_for``.

Supported, as containerd 1.6-2.x do: ``server`` (default: the registry host itself over HTTPS,
``registry-1.docker.io`` for ``docker.io``, containerd's loopback rules for localhost), the
ordered ``[host."..."]`` tables, ``capabilities``, ``ca`` (a path or a list, relative paths
against the host directory), ``client`` (a path, a list of paths, or a list of [cert, key]
pairs), ``skip_verify``, ``[header]``, ``override_path``, ``dial_timeout``, ``proxy``; the
Docker certificate-file layout (``*.crt``, ``*.cert``/``*.key``) when a host directory has no
``hosts.toml``; the directory names ``host_port_``, ``host:port``, ``_default``; and an
``http://`` host with TLS settings tried over HTTPS first, as containerd's HTTP fallback does.
Keys trustd does not know (``dial_addr`` and newer ones) are reported, not obeyed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import posixpath
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trustd.errors import ConfigError, InvalidReference
from trustd.registry.errors import HostsConfigError

log = logging.getLogger(__name__)

PULL, RESOLVE, PUSH = "pull", "resolve", "push"
ALL_CAPABILITIES: frozenset[str] = frozenset({PULL, RESOLVE, PUSH})
# What trustd's reads need of a host: resolving tags and reading manifests, blobs, referrers.
READ_CAPABILITIES: frozenset[str] = frozenset({PULL, RESOLVE})

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
HOSTS_FILE = "hosts.toml"
DEFAULT_DIRECTORY = "_default"

_KNOWN_HOST_KEYS = frozenset(
    ("capabilities", "ca", "client", "skip_verify", "header", "override_path", "dial_timeout")
) | {"proxy"}
_KNOWN_TOP_KEYS = _KNOWN_HOST_KEYS | {"server", "host"}
# A registry host as image references name it: a DNS name or IPv4 address, or a bracketed IPv6
# address, with an optional port. Anything else (a slash, "..") must never become a path.
_REGISTRY_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


@dataclass(frozen=True)
class ClientCertificate:
    """A TLS client certificate; ``key`` None: the private key is in the certificate file."""

    cert: Path
    key: Path | None = None


@dataclass(frozen=True)
class RegistryEndpoint:
    """How to reach one registry host: the API root URL and the TLS and HTTP settings for it.

    ``registry`` is the host as image references name it (``docker.io``, ``127.0.0.1:5000``);
    ``url`` the API root the requests go to (``https://registry-1.docker.io/v2``: scheme, host,
    and the path the repository names are appended to). Built from hosts.toml by
    ``endpoint_for``, or directly (``from_server``) for settings trustd's own config gives.
    """

    registry: str
    url: str
    capabilities: frozenset[str] = ALL_CAPABILITIES
    ca_files: tuple[Path, ...] = ()  # added to the system's CAs, as containerd does
    client_certificates: tuple[ClientCertificate, ...] = ()  # the first is presented
    verify: bool = True  # False: skip_verify (no certificate or host name check)
    # ``url`` is https but the operator wrote http with TLS settings (or it is a defaulted
    # loopback host): when the server answers the TLS handshake in plain HTTP, use http.
    http_fallback: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    proxy: str | None = None  # None: the environment's HTTP(S)_PROXY / NO_PROXY
    dial_timeout: float | None = None  # seconds for the TCP connect, within the deadline
    source: str = "defaults"  # where these settings come from, for messages

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"registry endpoint {self.url!r} for {self.registry} ({self.source}) "
                "is not an http:// or https:// URL with a host"
            )
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ConfigError(
                f"registry endpoint {self.url!r} for {self.registry} ({self.source}) must not "
                "carry a query, a fragment or user information"
            )
        if self.url.endswith("/"):
            object.__setattr__(self, "url", self.url.rstrip("/"))
        if self.http_fallback and parts.scheme != "https":
            raise ConfigError(f"registry endpoint {self.url!r}: HTTP fallback needs an https URL")
        unknown = self.capabilities - ALL_CAPABILITIES
        if unknown:
            raise ConfigError(
                f"registry endpoint {self.url!r} ({self.source}): unknown capabilities "
                f"{sorted(unknown)}"
            )

    @classmethod
    def from_server(
        cls,
        registry: str,
        server: str,
        *,
        override_path: bool = False,
        **settings: Any,
    ) -> RegistryEndpoint:
        """An endpoint from a server address as hosts.toml writes one: ``host``, ``https://host``
        or ``http://host:5000/prefix``; ``/v2`` is appended unless ``override_path``."""
        scheme, host, path = _split_server(server, override_path, settings.get("source", "?"))
        return cls(registry, f"{scheme}://{host}{path}", **settings)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        """``host[:port]`` of the URL."""
        return urlsplit(self.url).netloc

    @property
    def hostname(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def plain_http(self) -> bool:
        """The operator chose plain HTTP for this host (or a fallback to it is allowed)."""
        return self.scheme == "http" or self.http_fallback

    @property
    def namespace(self) -> str | None:
        """The ``ns`` query parameter containerd adds when this host is not the registry itself
        (a mirror), naming the registry; None for the registry's own host."""
        if self.host == self.registry:
            return None
        if self.registry == DOCKER_HUB and self.host == DOCKER_HUB_API_HOST:
            return None
        return self.registry

    def describe(self) -> str:
        """``registry`` and where it is reached, for messages."""
        if self.namespace is None:
            return f"registry {self.registry} ({self.url})"
        return f"registry {self.registry} through {self.url}"


@dataclass(frozen=True)
class HostEntry:
    """One host of a hosts.toml: a ``[host."..."]`` table, or the top level (the server)."""

    scheme: str = ""  # "" with host "": the server was not given (defaults apply)
    host: str = ""
    path: str = ""
    capabilities: frozenset[str] = ALL_CAPABILITIES
    ca: tuple[Path, ...] | None = None  # None: not set (differs from an empty list)
    client: tuple[ClientCertificate, ...] | None = None
    skip_verify: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()
    dial_timeout: float | None = None
    proxy: str | None = None

    @property
    def tls_configured(self) -> bool:
        return self.ca is not None or self.client is not None or self.skip_verify is not None


@dataclass(frozen=True)
class HostsFile:
    """A parsed hosts.toml (or the certificate files of a directory without one)."""

    source: str
    mirrors: tuple[HostEntry, ...] = ()
    server: HostEntry = field(default_factory=HostEntry)
    ignored_keys: tuple[str, ...] = ()


# --- parsing (pure) ------------------------------------------------------------------------------


def parse_hosts_toml(text: str, base_dir: Path, source: str) -> HostsFile:
    """Parse a hosts.toml; relative paths are taken against ``base_dir`` (its directory).

    Raises HostsConfigError naming ``source`` and the key for anything containerd would refuse.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise HostsConfigError(f"{source}: not valid TOML: {error}") from None
    ignored = [key for key in document if key not in _KNOWN_TOP_KEYS]
    hosts = document.get("host", {})
    if not isinstance(hosts, dict):
        raise HostsConfigError(f"{source}: 'host' must be a table of host tables")
    mirrors = []
    # tomllib keeps tables in the order they first appear: containerd's order of trying them.
    for name, table in hosts.items():
        where = f"{source}: [host.{name!r}]"
        if not isinstance(table, dict):
            raise HostsConfigError(f"{where} must be a table")
        ignored.extend(f"host.{name}.{key}" for key in table if key not in _KNOWN_HOST_KEYS)
        mirrors.append(_host_entry(name, table, base_dir, where))
    server = document.get("server", "")
    if not isinstance(server, str):
        raise HostsConfigError(f"{source}: 'server' must be a string")
    top = {key: value for key, value in document.items() if key in _KNOWN_HOST_KEYS}
    return HostsFile(
        source=source,
        mirrors=tuple(mirrors),
        server=_host_entry(server, top, base_dir, f"{source}: server"),
        ignored_keys=tuple(ignored),
    )


def _host_entry(server: str, table: Mapping[str, Any], base_dir: Path, where: str) -> HostEntry:
    override_path = table.get("override_path", False)
    if not isinstance(override_path, bool):
        raise HostsConfigError(f"{where}: 'override_path' must be true or false")
    scheme = host = path = ""
    if server:
        scheme, host, path = _split_server(server, override_path, where)
    skip_verify = table.get("skip_verify")
    if skip_verify is not None and not isinstance(skip_verify, bool):
        raise HostsConfigError(f"{where}: 'skip_verify' must be true or false")
    proxy = table.get("proxy")
    if proxy is not None:
        proxy = _proxy(proxy, where)
    return HostEntry(
        scheme=scheme,
        host=host,
        path=path,
        capabilities=_capabilities(table.get("capabilities"), where),
        ca=_ca_files(table.get("ca"), base_dir, where),
        client=_client_certificates(table.get("client"), base_dir, where),
        skip_verify=skip_verify,
        headers=_headers(table.get("header"), where),
        dial_timeout=_dial_timeout(table.get("dial_timeout"), where),
        proxy=proxy,
    )


def _split_server(server: str, override_path: bool, where: str) -> tuple[str, str, str]:
    """(scheme, host[:port], API root path) of a hosts.toml server or host key."""
    if not server.startswith("http"):
        server = "https://" + server
    parts = urlsplit(server)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.netloc.endswith(":")
        or "://" in server[len(parts.scheme) + 3 :]
    ):
        raise HostsConfigError(f"{where}: {server!r} is not an http:// or https:// host")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise HostsConfigError(f"{where}: {server!r} must be a plain scheme://host[:port]/path")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise HostsConfigError(f"{where}: {server!r} has an invalid port") from None
    path = parts.path
    if path:
        path = posixpath.normpath(path)
        if path == "/":
            path = ""
        if not path.endswith("/v2") and not override_path:
            path += "/v2"
    elif not override_path:
        path = "/v2"
    return parts.scheme, parts.netloc, path


def _capabilities(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return ALL_CAPABILITIES
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise HostsConfigError(f"{where}: 'capabilities' must be a list of strings")
    if not value:
        return ALL_CAPABILITIES  # containerd: an empty list means every capability
    capabilities = {item.lower() for item in value}
    unknown = capabilities - ALL_CAPABILITIES
    if unknown:
        raise HostsConfigError(
            f"{where}: unknown capability {sorted(unknown)[0]!r} (pull, resolve, push)"
        )
    return frozenset(capabilities)


def _path(value: str, base_dir: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def _ca_files(value: Any, base_dir: Path, where: str) -> tuple[Path, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (_path(value, base_dir),)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(_path(item, base_dir) for item in value)
    raise HostsConfigError(f"{where}: 'ca' must be a path or a list of paths")


def _client_certificates(
    value: Any, base_dir: Path, where: str
) -> tuple[ClientCertificate, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (ClientCertificate(_path(value, base_dir)),)
    if not isinstance(value, list):
        raise HostsConfigError(f"{where}: 'client' must be a path or a list")
    pairs = []
    for item in value:
        if isinstance(item, str):
            pairs.append(ClientCertificate(_path(item, base_dir)))
        elif (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(part, str) for part in item)
            and item[0]
        ):
            key = _path(item[1], base_dir) if item[1] else None
            pairs.append(ClientCertificate(_path(item[0], base_dir), key))
        else:
            raise HostsConfigError(
                f"{where}: each 'client' entry must be a path or a [certificate, key] pair"
            )
    return tuple(pairs)


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise HostsConfigError(f"{where}: 'header' must be a table")
    headers = []
    for name, content in value.items():
        if isinstance(content, str):
            headers.append((name, content))
        elif isinstance(content, list) and all(isinstance(item, str) for item in content):
            headers.extend((name, item) for item in content)
        else:
            raise HostsConfigError(
                f"{where}: header {name!r} must be a string or a list of strings"
            )
        if any(char in name + "".join(map(str, content)) for char in "\r\n"):
            raise HostsConfigError(f"{where}: header {name!r} contains a line break")
    return tuple(headers)


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration (``1s``, ``500ms``, ``1m30s``); ValueError if it is not one."""
    if text == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(f"{text!r} is not a duration such as 1s, 500ms or 1m30s")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0:
        raise ValueError("an empty duration")
    return total


def _dial_timeout(value: Any, where: str) -> float | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HostsConfigError(f"{where}: 'dial_timeout' must be a duration string such as '1s'")
    try:
        seconds = parse_go_duration(value)
    except ValueError as error:
        raise HostsConfigError(f"{where}: 'dial_timeout': {error}") from None
    return seconds if seconds > 0 else None


def _proxy(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise HostsConfigError(f"{where}: 'proxy' must be a URL")
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https", "socks5", "socks5h")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise HostsConfigError(
            f"{where}: 'proxy' must be an http, https, socks5 or socks5h URL without a path"
        )
    return value


# --- from the parsed file to endpoints (pure) ----------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address, with or without a port (containerd's rule)."""
    hostname = urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _port(host: str) -> str:
    try:
        port = urlsplit(f"//{host}").port
    except ValueError:
        return ""
    return "" if port is None else str(port)


def _default_server(registry: str, declared: HostEntry) -> HostEntry:
    """The server entry with containerd's defaults for a server hosts.toml did not name."""
    scheme, host, skip_verify = "https", registry, declared.skip_verify
    if registry == DOCKER_HUB:
        host = DOCKER_HUB_API_HOST
    elif is_loopback_host(registry):
        port = _port(registry)
        # Loopback registries are commonly plain HTTP on a high port: containerd tries HTTPS
        # without verification and falls back to HTTP there (see endpoints_from_hosts).
        scheme = "https" if port in ("", "443") else "http"
        if port != "80":
            skip_verify = True
    return HostEntry(
        scheme=scheme,
        host=host,
        path="/v2",
        capabilities=ALL_CAPABILITIES,
        ca=declared.ca,
        client=declared.client,
        skip_verify=skip_verify,
        headers=declared.headers,
        dial_timeout=declared.dial_timeout,
        proxy=declared.proxy,
    )


def endpoints_from_hosts(registry: str, hosts: HostsFile | None) -> tuple[RegistryEndpoint, ...]:
    """Every host containerd would use for ``registry``, in the order it tries them: the
    mirrors of the hosts.toml, then the server (``hosts`` None: no settings, the defaults)."""
    hosts = hosts or HostsFile(source="defaults")
    server = hosts.server
    if not server.host:
        server = _default_server(registry, server)
    endpoints = []
    for entry in (*hosts.mirrors, server):
        scheme, fallback = entry.scheme, False
        # containerd: an http host with TLS settings, unless on port 80, is tried over HTTPS
        # first and falls back to HTTP when the server answers in plain HTTP.
        if scheme == "http" and entry.tls_configured and _port(entry.host) != "80":
            scheme, fallback = "https", True
        endpoints.append(
            RegistryEndpoint(
                registry=registry,
                url=f"{scheme}://{entry.host}{entry.path}",
                capabilities=entry.capabilities,
                ca_files=entry.ca or (),
                client_certificates=entry.client or (),
                verify=not entry.skip_verify,
                http_fallback=fallback,
                headers=entry.headers,
                proxy=entry.proxy,
                dial_timeout=entry.dial_timeout,
                source=hosts.source,
            )
        )
    return tuple(endpoints)


def choose_endpoint(endpoints: Sequence[RegistryEndpoint]) -> RegistryEndpoint:
    """The host trustd reads from: the first that may both pull and resolve tags (resolving is
    the trusted step containerd only asks of such hosts), else the server (the last)."""
    if not endpoints:
        raise ValueError("no registry endpoints to choose from")
    for endpoint in endpoints:
        if endpoint.capabilities >= READ_CAPABILITIES:
            return endpoint
    return endpoints[-1]


# --- reading the directory -----------------------------------------------------------------------


def check_registry_host(registry: str) -> str:
    """``registry`` if it is a host[:port] as image references name one (never a path)."""
    if not _REGISTRY_HOST.match(registry):
        raise InvalidReference(f"{registry!r} is not a registry host name")
    return registry


def host_directory_names(registry: str) -> tuple[str, ...]:
    """Directory names containerd looks for under each config_path root, in order."""
    check_registry_host(registry)
    names = []
    colon = registry.rfind(":")
    if colon > 0 and not registry.endswith("]"):
        names.append(f"{registry[:colon]}_{registry[colon + 1 :]}_")
    names += [registry, DEFAULT_DIRECTORY]
    return tuple(names)


def config_roots(
    config_path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None,
) -> tuple[Path, ...]:
    """The directories of a ``config_path`` (``:``-separated, as containerd splits it)."""
    if config_path is None:
        return ()
    if isinstance(config_path, str):
        return tuple(Path(part) for part in config_path.split(os.pathsep) if part)
    if isinstance(config_path, os.PathLike):
        return (Path(config_path),)
    return tuple(Path(part) for part in config_path if str(part))


def find_host_directory(
    registry: str, config_path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None
) -> Path | None:
    """The host directory containerd would use for ``registry``: the first root holding one of
    the names, the names tried in order within each root."""
    names = host_directory_names(registry)
    for root in config_roots(config_path):
        for name in names:
            candidate = root / name
            if candidate.is_dir():
                return candidate
    return None


def load_host_directory(directory: Path) -> HostsFile:
    """The settings in a host directory: its hosts.toml, or else Docker's certificate files.

    A hosts.toml containerd cannot parse makes containerd log an error and use the certificate
    files instead; trustd does the same (logged as a warning) so both reach the same host.
    """
    hosts_file = directory / HOSTS_FILE
    try:
        text = hosts_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as error:
        raise HostsConfigError(f"{hosts_file}: cannot be read: {error}") from None
    if text:
        try:
            return parse_hosts_toml(text, directory, str(hosts_file))
        except HostsConfigError as error:
            log.warning(
                "%s; using the certificate files of %s instead, as containerd does",
                error,
                directory,
            )
    return certificate_files(directory)


def certificate_files(directory: Path) -> HostsFile:
    """Docker's certs.d layout: ``*.crt`` CA files, ``*.cert`` client certificates with the
    ``*.key`` of the same name (when there is one)."""
    try:
        names = sorted(entry.name for entry in directory.iterdir() if not entry.is_dir())
    except FileNotFoundError:
        names = []
    except OSError as error:
        raise HostsConfigError(f"{directory}: cannot be listed: {error}") from None
    cas = tuple(directory / name for name in names if name.endswith(".crt"))
    clients = tuple(
        ClientCertificate(
            directory / name,
            directory / (name[: -len(".cert")] + ".key")
            if (name[: -len(".cert")] + ".key") in names
            else None,
        )
        for name in names
        if name.endswith(".cert")
    )
    return HostsFile(
        source=f"{directory} (certificate files)",
        server=HostEntry(ca=cas or None, client=clients or None),
    )


def endpoints_for(
    registry: str, config_path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None
) -> tuple[RegistryEndpoint, ...]:
    """Every host containerd would try for ``registry`` under ``config_path``, in order."""
    directory = find_host_directory(registry, config_path)
    hosts = load_host_directory(directory) if directory is not None else None
    if hosts is not None and hosts.ignored_keys:
        log.warning(
            "%s: trustd does not apply %s; it reaches the registry without them",
            hosts.source,
            ", ".join(hosts.ignored_keys),
        )
    return endpoints_from_hosts(registry, hosts)


def endpoint_for(
    registry: str, config_path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None
) -> RegistryEndpoint:
    """Where trustd reads ``registry``'s manifests, blobs and referrers on this node: the first
    host with pull and resolve capabilities, else the server (with containerd's defaults:
    ``https://<registry>/v2``, ``https://registry-1.docker.io/v2`` for docker.io)."""
    return choose_endpoint(endpoints_for(registry, config_path))
