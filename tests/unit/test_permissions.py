"""Warnings when others can change the config or trust anchors, or read trustd's secrets.

Real files with real modes and owners (the suite runs as root, so chown works; without it the
owner cases are skipped).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from trustd.config.load import load_config
from trustd.config.permissions import permission_warnings
from trustd.programs.trustd_command import main as trustd_main
from trustd.service.daemon import _log_config_warnings

OTHER_UID = 4242  # no such user needed: a number is an owner
OTHER_GID = 4243

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    etc.chmod(0o755)
    files = {
        "etc": etc,
        "password": etc / "notary-password",
        "key": etc / "client.key",
        "cert": etc / "client.crt",
        "ca": etc / "notary-ca.crt",
        "pin_ca": etc / "pin-ca.crt",
        "state": tmp_path / "state",
    }
    for name in ("password", "key"):
        files[name].write_text("secret\n")
        files[name].chmod(0o600)
    for name in ("cert", "ca", "pin_ca"):
        files[name].write_text("-----BEGIN CERTIFICATE-----\n")
        files[name].chmod(0o644)
    files["state"].mkdir(mode=0o700)
    config = etc / "trustd.toml"
    config.write_text(
        f'[server]\nstate_dir = "{files["state"]}"\nverifier_socket = ""\n'
        "[[notary]]\n"
        'registry = "registry.example.com"\n'
        'url = "https://notary.example.com"\n'
        f'ca = "{files["ca"]}"\n'
        f'client_cert = "{files["cert"]}"\n'
        f'client_key = "{files["key"]}"\n'
        'username = "puller"\n'
        f'password_file = "{files["password"]}"\n'
        "[trust_pinning.ca]\n"
        f'"registry.example.com/team/" = "{files["pin_ca"]}"\n'
    )
    config.chmod(0o644)
    files["config"] = config
    return files


def warnings_for(node: dict[str, Path]) -> list[str]:
    return permission_warnings(load_config(node["config"]))


def test_a_tidy_node_has_nothing_to_say(node: dict[str, Path]) -> None:
    assert warnings_for(node) == []


def test_others_who_can_change_the_config(node: dict[str, Path]) -> None:
    node["config"].chmod(0o666)
    assert warnings_for(node) == [
        f"the config file {node['config']} has mode 0666: every user can change it; "
        f"chmod go-w {node['config']} (and chown root if needed)"
    ]
    node["config"].chmod(0o644)
    node["etc"].chmod(0o777)
    assert warnings_for(node) == [
        f"the directory {node['etc']} of the config file has mode 0777: every user can write "
        f"in it, so the config can be replaced; chmod go-w {node['etc']} (and chown root if "
        "needed)"
    ]
    node["etc"].chmod(0o1777)  # sticky: others cannot replace root's file
    assert warnings_for(node) == []


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        (0o644, "has mode 0644: every user can read it"),
        (0o606, "has mode 0606: every user can read and change it"),
        (0o602, "has mode 0602: every user can change it"),
        (0o640, None),  # root's group
    ],
)
def test_secrets_others_can_read(node: dict[str, Path], mode: int, says: str | None) -> None:
    node["password"].chmod(mode)
    node["key"].chmod(mode)
    expected = (
        [
            f"notary[0].password_file {node['password']} {says}; chmod 600 {node['password']} "
            "(and chown root if needed)",
            f"notary[0].client_key {node['key']} {says}; chmod 600 {node['key']} (and chown root "
            "if needed)",
        ]
        if says
        else []
    )
    assert warnings_for(node) == expected


@needs_root
def test_a_group_other_than_roots_counts(node: dict[str, Path]) -> None:
    os.chown(node["password"], 0, OTHER_GID)
    node["password"].chmod(0o640)
    os.chown(node["config"], 0, OTHER_GID)
    node["config"].chmod(0o664)
    found = warnings_for(node)
    assert len(found) == 2
    assert f"has mode 0664: gid {OTHER_GID} can change it" in found[0]
    assert f"has mode 0640: gid {OTHER_GID} can read it" in found[1]
    node["config"].chmod(0o644)  # group may read the config: it holds no secret
    assert len(warnings_for(node)) == 1


@needs_root
def test_files_owned_by_another_user(node: dict[str, Path]) -> None:
    os.chown(node["config"], OTHER_UID, 0)
    os.chown(node["key"], OTHER_UID, 0)
    found = warnings_for(node)
    assert (
        f"the config file {node['config']} is owned by uid {OTHER_UID}, who can change it"
        in (found[0])
    )
    assert (
        f"client_key {node['key']} is owned by uid {OTHER_UID}, who can read and change it"
        in (found[1])
    )
    # A user running trustd on their own files is not "another user".
    load = load_config(node["config"])
    assert len(permission_warnings(load, euid=OTHER_UID)) == 0


def test_trust_anchors_and_the_cache(node: dict[str, Path]) -> None:
    node["ca"].chmod(0o666)
    node["pin_ca"].chmod(0o646)
    node["state"].chmod(0o777)
    assert [warning.split(" has mode")[0] for warning in warnings_for(node)] == [
        f"notary[0].ca {node['ca']}",
        f'trust_pinning.ca."registry.example.com/team/" {node["pin_ca"]}',
        f"the trust cache (server.state_dir) {node['state']}",
    ]


def test_check_config_prints_them_and_still_passes(node: dict[str, Path], capsys) -> None:
    node["password"].chmod(0o644)
    assert trustd_main(["check-config", str(node["config"])]) == 0
    err = capsys.readouterr().err
    assert (
        f"trustd: warning: {node['config']}: notary[0].password_file {node['password']} has "
        "mode 0644: every user can read it" in err
    )


def test_the_daemon_logs_them(node: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    node["key"].chmod(0o604)
    with caplog.at_level(logging.WARNING, logger="trustd"):
        _log_config_warnings(load_config(node["config"]))
    assert any(
        f"client_key {node['key']} has mode 0604: every user can read it" in record.getMessage()
        for record in caplog.records
    )
