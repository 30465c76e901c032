"""containerd's hosts.toml, read the way containerd reads it (docs/hosts.md, config/hosts.go)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from trustd.errors import ConfigError, InvalidReference
from trustd.registry.errors import HostsConfigError
from trustd.registry.hosts import (
    ALL_CAPABILITIES,
    ClientCertificate,
    RegistryEndpoint,
    choose_endpoint,
    endpoint_for,
    endpoints_for,
    endpoints_from_hosts,
    find_host_directory,
    host_directory_names,
    parse_go_duration,
    parse_hosts_toml,
)

BASE = Path("/etc/containerd/certs.d/registry.example.com")


def parse(text: str) -> tuple[RegistryEndpoint, ...]:
    return endpoints_from_hosts("registry.example.com", parse_hosts_toml(text, BASE, "hosts.toml"))


def test_no_settings_means_https_to_the_registry_itself() -> None:
    (endpoint,) = endpoints_from_hosts("registry.example.com:5000", None)
    assert endpoint.url == "https://registry.example.com:5000/v2"
    assert endpoint.verify and not endpoint.http_fallback and endpoint.namespace is None
    assert endpoint.capabilities == ALL_CAPABILITIES


def test_docker_hub_is_reached_at_registry_1() -> None:
    (endpoint,) = endpoints_from_hosts("docker.io", None)
    assert endpoint.url == "https://registry-1.docker.io/v2"
    assert endpoint.namespace is None  # not a mirror: no ns= parameter


@pytest.mark.parametrize(
    ("registry", "url", "verify", "fallback"),
    [
        # containerd: loopback on a high port is tried over HTTPS unverified, then plain HTTP.
        ("127.0.0.1:5000", "https://127.0.0.1:5000/v2", False, True),
        ("localhost:5000", "https://localhost:5000/v2", False, True),
        ("[::1]:5000", "https://[::1]:5000/v2", False, True),
        ("localhost", "https://localhost/v2", False, False),
        ("localhost:443", "https://localhost:443/v2", False, False),
        ("127.0.0.1:80", "http://127.0.0.1:80/v2", True, False),
        ("10.0.0.1:5000", "https://10.0.0.1:5000/v2", True, False),
    ],
)
def test_loopback_defaults(registry: str, url: str, verify: bool, fallback: bool) -> None:
    (endpoint,) = endpoints_from_hosts(registry, None)
    assert (endpoint.url, endpoint.verify, endpoint.http_fallback) == (url, verify, fallback)


def test_plain_http_server() -> None:
    (endpoint,) = parse('server = "http://registry.example.com:5000"')
    assert endpoint.url == "http://registry.example.com:5000/v2"
    assert endpoint.plain_http and not endpoint.http_fallback


def test_http_host_with_tls_settings_tries_https_first() -> None:
    (endpoint,) = parse('server = "http://registry.example.com:5000"\nskip_verify = true')
    assert endpoint.url == "https://registry.example.com:5000/v2"
    assert endpoint.http_fallback and not endpoint.verify
    (on_port_80,) = parse('server = "http://registry.example.com:80"\nca = "ca.pem"')
    assert on_port_80.url == "http://registry.example.com:80/v2" and not on_port_80.http_fallback


def test_mirrors_come_first_in_file_order_and_carry_their_own_settings() -> None:
    endpoints = parse(
        """
server = "https://registry.example.com"
ca = "/etc/ssl/server-ca.pem"

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]

[host."https://mirror.internal/prefix"]
  capabilities = ["pull", "resolve"]
  ca = ["mirror-ca.pem", "/abs/other.pem"]
  client = [["client.cert", "client.key"], ["both.pem", ""]]
  skip_verify = false
  dial_timeout = "1m30s"
  [host."https://mirror.internal/prefix".header]
    x-custom = ["a", "b"]
    x-other = "c"

[host."https://public-mirror.example.com".header]
  x-late = "subtable after another host keeps the first order"
"""
    )
    assert [e.url for e in endpoints] == [
        "https://public-mirror.example.com/v2",
        "https://mirror.internal/prefix/v2",
        "https://registry.example.com/v2",
    ]
    public, internal, server = endpoints
    assert public.capabilities == {"pull"}
    assert public.headers == (("x-late", "subtable after another host keeps the first order"),)
    assert internal.capabilities == {"pull", "resolve"}
    assert internal.ca_files == (BASE / "mirror-ca.pem", Path("/abs/other.pem"))
    assert internal.client_certificates == (
        ClientCertificate(BASE / "client.cert", BASE / "client.key"),
        ClientCertificate(BASE / "both.pem", None),
    )
    assert internal.verify and internal.dial_timeout == 90.0
    assert internal.headers == (("x-custom", "a"), ("x-custom", "b"), ("x-other", "c"))
    assert internal.namespace == "registry.example.com"  # a mirror gets ?ns=
    assert server.ca_files == (Path("/etc/ssl/server-ca.pem"),)
    assert server.capabilities == ALL_CAPABILITIES and server.namespace is None
    # trustd reads from the first host trusted to resolve tags, not the pull-only mirror.
    assert choose_endpoint(endpoints) is internal


def test_without_a_resolving_mirror_the_server_is_chosen() -> None:
    endpoints = parse('[host."https://cache.example.com"]\ncapabilities = ["pull"]')
    assert choose_endpoint(endpoints).url == "https://registry.example.com/v2"


def test_default_server_keeps_top_level_tls_settings() -> None:
    (endpoint,) = parse('ca = "ca.pem"\nclient = "client.pem"')
    assert endpoint.url == "https://registry.example.com/v2"
    assert endpoint.ca_files == (BASE / "ca.pem",)
    assert endpoint.client_certificates == (ClientCertificate(BASE / "client.pem"),)


def test_server_without_scheme_and_path_rules() -> None:
    assert parse('server = "mirror.example.com"')[0].url == "https://mirror.example.com/v2"
    assert parse('server = "https://m.example.com/v2/"')[0].url == "https://m.example.com/v2"
    assert parse('server = "https://m.example.com/a/b"')[0].url == "https://m.example.com/a/b/v2"
    overridden = parse('server = "https://m.example.com/api/x"\noverride_path = true')
    assert overridden[0].url == "https://m.example.com/api/x"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server = 'ftp://x'", "ftp://x"),
        ('capabilities = ["pull", "fly"]', "fly"),
        ("capabilities = 'pull'", "capabilities"),
        ("ca = 3", "ca"),
        ('client = [["a", "b", "c"]]', "client"),
        ("skip_verify = 'yes'", "skip_verify"),
        ('dial_timeout = "soon"', "dial_timeout"),
        ('proxy = "http://proxy:3128/path"', "proxy"),
        ("[header]\nx = 1", "header"),
        ('server = "https://x.example.com:99999"', "port"),
        ("host = 3", "host"),
        ("not toml at all = = ", "TOML"),
    ],
)
def test_malformed_settings_name_the_file_and_key(text: str, key: str) -> None:
    with pytest.raises(HostsConfigError) as caught:
        parse_hosts_toml(text, BASE, "/etc/containerd/certs.d/x/hosts.toml")
    assert "/etc/containerd/certs.d/x/hosts.toml" in str(caught.value)
    assert key in str(caught.value)


def test_unknown_keys_are_reported() -> None:
    hosts = parse_hosts_toml(
        'dial_addr = "unix:///run/x.sock"\n[host."https://m"]\nfuture = 1', BASE, "f"
    )
    assert hosts.ignored_keys == ("dial_addr", "host.https://m.future")


def test_go_durations() -> None:
    assert parse_go_duration("1s") == 1.0
    assert parse_go_duration("500ms") == 0.5
    assert parse_go_duration("1h2m3.5s") == 3723.5
    assert parse_go_duration("0") == 0.0
    for bad in ("", "1", "s", "1x", "-1s", "1s "):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


def test_directory_names_in_containerd_order() -> None:
    assert host_directory_names("r.example.com:5000") == (
        "r.example.com_5000_",
        "r.example.com:5000",
        "_default",
    )
    assert host_directory_names("docker.io") == ("docker.io", "_default")
    for bad in ("../etc", "a/b", "", "host:port:x", ".."):
        with pytest.raises(InvalidReference):
            host_directory_names(bad)


def test_endpoint_for_reads_the_directory(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    (second / "127.0.0.1:5000").mkdir(parents=True)
    (second / "127.0.0.1:5000" / "hosts.toml").write_text(
        'server = "http://127.0.0.1:5000"\n'
        '[host."http://127.0.0.1:5000"]\ncapabilities = ["pull", "resolve"]\n'
    )
    config_path = f"{first}:{second}"
    endpoint = endpoint_for("127.0.0.1:5000", config_path)
    assert endpoint.url == "http://127.0.0.1:5000/v2" and not endpoint.http_fallback
    assert endpoint.source == str(second / "127.0.0.1:5000" / "hosts.toml")
    # An earlier root's _default wins over a later root's host directory (containerd's order).
    (first / "_default").mkdir(parents=True)
    (first / "_default" / "hosts.toml").write_text('server = "https://mirror.example.com"')
    assert find_host_directory("127.0.0.1:5000", config_path) == first / "_default"
    assert endpoint_for("127.0.0.1:5000", config_path).url == "https://mirror.example.com/v2"
    # The host_port_ spelling is looked for first within a root.
    (first / "127.0.0.1_5000_").mkdir()
    (first / "127.0.0.1_5000_" / "hosts.toml").write_text('server = "http://127.0.0.1:5000"')
    assert find_host_directory("127.0.0.1:5000", config_path) == first / "127.0.0.1_5000_"
    assert endpoint_for("other.example.com", config_path).url == "https://mirror.example.com/v2"
    assert endpoint_for("other.example.com", None).url == "https://other.example.com/v2"


def test_certificate_files_without_hosts_toml(tmp_path: Path) -> None:
    directory = tmp_path / "registry.example.com"
    directory.mkdir()
    for name in ("ca.crt", "client.cert", "client.key", "lone.cert", "notes.txt"):
        (directory / name).write_text("x")
    (endpoint,) = endpoints_for("registry.example.com", tmp_path)
    assert endpoint.url == "https://registry.example.com/v2"
    assert endpoint.ca_files == (directory / "ca.crt",)
    assert endpoint.client_certificates == (
        ClientCertificate(directory / "client.cert", directory / "client.key"),
        ClientCertificate(directory / "lone.cert", None),
    )


def test_a_broken_hosts_toml_falls_back_like_containerd(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "registry.example.com"
    directory.mkdir()
    (directory / "hosts.toml").write_text('server = "https://mirror"\ncapabilities = ["x"]')
    (directory / "ca.crt").write_text("x")
    with caplog.at_level(logging.WARNING):
        endpoint = endpoint_for("registry.example.com", tmp_path)
    assert endpoint.url == "https://registry.example.com/v2"
    assert endpoint.ca_files == (directory / "ca.crt",)
    assert "unknown capability 'x'" in caplog.text and str(directory) in caplog.text


def test_explicit_endpoint() -> None:
    endpoint = RegistryEndpoint.from_server(
        "registry.example.com", "http://10.1.2.3:5000", source="trustd.toml"
    )
    assert endpoint.url == "http://10.1.2.3:5000/v2"
    assert endpoint.namespace == "registry.example.com"
    with pytest.raises(ConfigError, match=r"trustd\.toml"):
        RegistryEndpoint("r", "ftp://x", source="trustd.toml")
    with pytest.raises(ConfigError):
        RegistryEndpoint("r", "https://user:pw@x/v2")
