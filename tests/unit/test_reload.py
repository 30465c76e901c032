"""``systemctl reload``: every config key either applies on reload or is refused with "needs a
restart", and the table in docs/operations.md says which.

Each key is changed in turn in a real config file, and a real ``Daemon`` (CRI socket, verifier
socket, metrics endpoint, audit log; no containerd or Notary is contacted) reloads it. The list
of keys comes from the declarations (``trustd.config.schema.walk_tables``): a key added without
a decision in ``trustd.service.daemon.RELOAD`` fails here. ``tests/e2e/test_daemon_reload.py``
sends SIGHUP to ``trustd serve`` for a few of them.
"""

from __future__ import annotations

import copy
import grp
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.formats import notation_factory
from tests.unit.formats.test_notation_truststore import store, write_policy
from tests.unit.test_policy import GOOD
from tests.unit.test_verifier import exchange
from trustd.config.load import load_config
from trustd.config.model import Config
from trustd.config.schema import TableKind, TablesKind, declared_keys, walk_tables
from trustd.localapi.wire import parse_verify_pull_answer, verify_pull_frame
from trustd.service.daemon import RELOAD, Daemon, OnReload

OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"
KEY_A = "a" * 64
KEY_B = "b" * 64
NOGROUP = grp.getgrnam("nogroup").gr_gid
JUDGED = "localhost/exempt/app:1"


def leaf_keys() -> list[str]:
    """Every key of the config file that holds a value (not a table), as RELOAD names them."""
    keys = []
    for path, table in walk_tables(Config):
        for key, kind in declared_keys(table):
            if not isinstance(kind, TableKind | TablesKind):
                keys.append(f"{path}.{key}" if path else key)
    return keys


# --- a node's config, written as TOML ------------------------------------------------------------


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def toml_text(document: dict[str, Any]) -> str:
    """Top-level values, then ``[table]`` and ``[[array]]`` sections; deeper tables inline."""
    lines = [f"{key} = {_value(value)}" for key, value in document.items() if _scalar(value)]
    for key, value in document.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]"] + [f"{k} = {_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for entry in value:
                lines += ["", f"[[{key}]]"] + [f"{k} = {_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def _scalar(value: object) -> bool:
    if isinstance(value, dict):
        return False
    return not (isinstance(value, list) and value and isinstance(value[0], dict))


@dataclass
class Node:
    directory: Path
    config: Path
    document: dict[str, Any]

    def file(self, name: str, text: str = "placeholder\n") -> str:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text)
        return str(path)

    def write(self) -> None:
        self.config.write_text(toml_text(self.document))


def base_document(node: Node) -> dict[str, Any]:
    d = node.directory
    return {
        # What judge_once asks about: exempt, so nothing leaves the machine.
        "exempt": ["localhost/exempt/**"],
        "server": {
            "socket": str(d / "cri.sock"),
            "containerd": f"unix://{d / 'containerd.sock'}",  # never contacted here
            "containerd_namespace": "k8s.io",
            "state_dir": str(d / "state"),
            "pull_timeout": 600,
            "shutdown_grace": 30,
            "socket_mode": "0660",
            "freshness_window": 1,
            "expiry_warning_days": 30,
            "verifier_socket": str(d / "verify.sock"),
            "verifier_group": "",
        },
        "audit": {"file": str(d / "audit.log"), "stdout": False},
        "metrics": {"listen": f"unix:{d / 'metrics.sock'}"},
        "notary": [
            {
                "registry": "registry.example.com",
                "url": "https://notary.example.com",
                "client_cert": node.file("client.crt"),
                "client_key": node.file("client.key"),
                "username": "reader",
                "password_file": node.file("password"),
                "ca": node.file("ca.pem"),
                "timeout": 10,
                "max_metadata_bytes": 16777216,
                "root_max_bytes": 1048576,
                "timestamp_max_bytes": 65536,
                "retries": 2,
            }
        ],
        "trust_pinning": {
            "disable_tofu": False,
            "certs": {"docker.io/library/*": [KEY_A]},
            "ca": {"registry.example.com/": node.file("pinning-ca.pem")},
        },
        "policy": [
            {
                "match": "registry.example.com/**",
                "mode": "enforce",
                "roles": ["targets/releases", "targets"],
                "signers": [],
                "require_signed_digests": True,
                "offline": "cached",
                "max_offline_age": 3600,
                "signatures": {"any_of": ["notary-v1", "cosign"]},
                "cosign": {
                    "keys": [node.file("cosign-1.pub"), node.file("cosign-2.pub")],
                    "threshold": 1,
                    "rekor_public_keys": [],
                },
            }
        ],
        "registry": {
            "hosts_dirs": [str(d / "certs.d")],
            "timeout": 10,
            "max_manifest_bytes": 4194304,
            "max_signature_bytes": 4194304,
        },
        "notation": {"config_dir": ""},
    }


def notation_dir(node: Node) -> str:
    directory = node.directory / "notation"
    if not directory.exists():
        directory.mkdir()
        write_policy(directory)
        root = notation_factory.build_chain().root
        from cryptography.hazmat.primitives import serialization

        pem = root.public_bytes(serialization.Encoding.PEM)
        (store(directory) / "root.pem").write_bytes(pem)
    return str(directory)


# --- the daemon ----------------------------------------------------------------------------------


@pytest.fixture
def node() -> Iterator[Node]:
    # Short: a unix socket path has at most 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="trustd-reload-"))
    directory.chmod(0o755)
    node = Node(directory, directory / "trustd.toml", {})
    node.document = base_document(node)
    node.write()
    try:
        yield node
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def daemon(node: Node) -> Iterator[Daemon]:
    running = Daemon(node.config, load_config(node.config))
    running.start()
    try:
        yield running
    finally:
        running.shutdown()


def judge_once(daemon: Daemon, node: Node) -> None:
    """One decision, asked as containerd's verifier asks it: audited like any other."""
    assert daemon.config.server.verifier_socket is not None
    request = verify_pull_frame(str(node.config), JUDGED, GOOD, 5)
    parse_verify_pull_answer(exchange(daemon.config.server.verifier_socket, request))


def scrape(listen: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(listen.removeprefix("unix:"))
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: trustd\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


# --- each key: its new value, and what shows it applied ------------------------------------------

Change = Callable[[Node, dict[str, Any]], None]  # (node, document) -> document changed
Check = Callable[[Daemon, Node], None]


def _set(table: str, key: str, value: Callable[[Node], object] | object) -> Change:
    def change(node: Node, document: dict[str, Any]) -> None:
        target = document[table]
        if isinstance(target, list):
            target = target[0]
        target[key] = value(node) if callable(value) else value

    return change


def _cosign(key: str, value: Callable[[Node], object] | object) -> Change:
    def change(node: Node, document: dict[str, Any]) -> None:
        document["policy"][0]["cosign"][key] = value(node) if callable(value) else value

    return change


def _check_socket_mode(daemon: Daemon, node: Node) -> None:
    assert stat.S_IMODE(os.stat(daemon.config.server.socket).st_mode) == 0o600


def _check_verifier_group(daemon: Daemon, node: Node) -> None:
    assert daemon.config.server.verifier_socket is not None
    status = os.stat(daemon.config.server.verifier_socket)
    assert (stat.S_IMODE(status.st_mode), status.st_gid) == (0o660, NOGROUP)


def _check_pull_timeout(daemon: Daemon, node: Node) -> None:
    assert daemon._server is not None and daemon._verifier_server is not None
    assert daemon._server.service.pull_timeout == 42.0
    assert daemon._verifier_server.pull_timeout == 42.0


def _check_audit_file(daemon: Daemon, node: Node) -> None:
    old, new = node.directory / "audit.log", node.directory / "logs" / "audit-new.log"
    before = old.read_text()
    judge_once(daemon, node)
    assert old.read_text() == before
    [record] = [json.loads(line) for line in new.read_text().splitlines()]
    assert record["image"] == JUDGED


def _check_metrics_listen(daemon: Daemon, node: Node) -> None:
    assert not (node.directory / "metrics.sock").exists()
    answer = scrape(f"unix:{node.directory / 'metrics-new.sock'}")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'trustd_config_reloads_total{result="success"} 1.0' in answer


CHANGES: dict[str, tuple[Change, Check | None]] = {
    # 1 is the only valid version: written out instead of left to its default.
    "version": (lambda node, document: document.update(version=1), None),
    "server.socket": (_set("server", "socket", lambda n: str(n.directory / "cri-new.sock")), None),
    "server.containerd": (_set("server", "containerd", "unix:///run/other/c.sock"), None),
    "server.containerd_namespace": (_set("server", "containerd_namespace", "other"), None),
    "server.state_dir": (_set("server", "state_dir", lambda n: str(n.directory / "s2")), None),
    "server.pull_timeout": (_set("server", "pull_timeout", 42), _check_pull_timeout),
    "server.shutdown_grace": (_set("server", "shutdown_grace", 5), None),
    "server.socket_mode": (_set("server", "socket_mode", "0600"), _check_socket_mode),
    "server.freshness_window": (
        _set("server", "freshness_window", 5),
        lambda daemon, node: _equal(daemon.trust.updater.freshness_window, 5.0),
    ),
    "server.expiry_warning_days": (
        _set("server", "expiry_warning_days", 7),
        lambda daemon, node: _equal(daemon.expiry.warning_days, 7),
    ),
    "server.verifier_socket": (
        _set("server", "verifier_socket", lambda n: str(n.directory / "v2.sock")),
        None,
    ),
    "server.verifier_group": (_set("server", "verifier_group", "nogroup"), _check_verifier_group),
    "audit.file": (
        _set("audit", "file", lambda n: str(n.directory / "logs" / "audit-new.log")),
        _check_audit_file,
    ),
    "audit.stdout": (
        _set("audit", "stdout", True),
        lambda daemon, node: _equal(daemon.engine.audit and daemon.engine.audit.stdout, True),
    ),
    "metrics.listen": (
        _set("metrics", "listen", lambda n: f"unix:{n.directory / 'metrics-new.sock'}"),
        _check_metrics_listen,
    ),
    "notary.registry": (_set("notary", "registry", "other.example.com"), None),
    "notary.url": (_set("notary", "url", "https://notary2.example.com"), None),
    "notary.client_cert": (_set("notary", "client_cert", lambda n: n.file("client2.crt")), None),
    "notary.client_key": (_set("notary", "client_key", lambda n: n.file("client2.key")), None),
    "notary.username": (_set("notary", "username", "writer"), None),
    "notary.password_file": (_set("notary", "password_file", lambda n: n.file("pw2")), None),
    "notary.ca": (_set("notary", "ca", lambda n: n.file("ca2.pem")), None),
    "notary.timeout": (_set("notary", "timeout", 3), None),
    "notary.max_metadata_bytes": (_set("notary", "max_metadata_bytes", 1024), None),
    "notary.root_max_bytes": (_set("notary", "root_max_bytes", 2048), None),
    "notary.timestamp_max_bytes": (_set("notary", "timestamp_max_bytes", 4096), None),
    "notary.retries": (_set("notary", "retries", 0), None),
    "trust_pinning.disable_tofu": (_set("trust_pinning", "disable_tofu", True), None),
    "trust_pinning.certs": (
        _set("trust_pinning", "certs", {"docker.io/library/*": [KEY_B]}),
        None,
    ),
    "trust_pinning.ca": (
        _set("trust_pinning", "ca", lambda n: {"registry.example.com/": n.file("pin2.pem")}),
        None,
    ),
    "exempt": (
        lambda node, document: document["exempt"].append("registry.k8s.io/pause:3.*"),
        None,
    ),
    "policy.match": (_set("policy", "match", "registry.example.com/prod/**"), None),
    "policy.mode": (_set("policy", "mode", "audit"), None),
    "policy.roles": (_set("policy", "roles", ["targets"]), None),
    "policy.signers": (_set("policy", "signers", ["targets/releases"]), None),
    "policy.require_signed_digests": (_set("policy", "require_signed_digests", False), None),
    "policy.offline": (_set("policy", "offline", "deny"), None),
    "policy.max_offline_age": (_set("policy", "max_offline_age", 60), None),
    "policy.signatures": (_set("policy", "signatures", "cosign"), None),
    "policy.cosign.keys": (_cosign("keys", lambda n: [n.file("cosign-3.pub")]), None),
    "policy.cosign.threshold": (_cosign("threshold", 2), None),
    "policy.cosign.rekor_public_keys": (
        _cosign("rekor_public_keys", lambda n: [n.file("rekor.pub")]),
        None,
    ),
    "registry.hosts_dirs": (
        _set("registry", "hosts_dirs", lambda n: [str(n.directory / "hosts")]),
        None,
    ),
    "registry.timeout": (_set("registry", "timeout", 3), None),
    "registry.max_manifest_bytes": (_set("registry", "max_manifest_bytes", 65536), None),
    "registry.max_signature_bytes": (_set("registry", "max_signature_bytes", 65536), None),
    "notation.config_dir": (_set("notation", "config_dir", notation_dir), None),
}


def _equal(found: object, expected: object) -> None:
    assert found == expected


def _key_value(config: Config, key: str) -> object:
    """The value of ``key`` in ``config``; in the first entry of an array of tables."""
    value: object = config
    for name in key.split("."):
        value = getattr(value, name)
        if isinstance(value, tuple) and value and hasattr(value[0], "check_keys"):
            value = value[0]
    return value


# --- the tests -----------------------------------------------------------------------------------


def test_every_key_has_a_decision_and_a_change_here() -> None:
    keys = leaf_keys()
    assert sorted(RELOAD) == sorted(keys), "trustd.service.daemon.RELOAD"
    assert sorted(CHANGES) == sorted(keys), "CHANGES above"


@pytest.mark.parametrize("key", leaf_keys())
def test_changing_each_key_applies_or_is_refused_naming_it(
    key: str, node: Node, daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    change, check = CHANGES[key]
    running = daemon.config
    judge_once(daemon, node)  # something already in the audit log
    document = copy.deepcopy(node.document)
    change(node, document)
    assert document != node.document or key == "version"
    node.document = document
    node.write()
    new = load_config(node.config)
    if key != "version":
        assert _key_value(new, key) != _key_value(running, key), "the change changes nothing"

    with caplog.at_level(logging.INFO, logger="trustd"):
        reloaded = daemon.reload()

    if RELOAD[key] is OnReload.RESTART:
        assert not reloaded
        assert daemon.config is running  # all of it, not only the key
        assert daemon.policy.config is running
        [refusal] = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
        assert refusal.startswith(
            f"config reload refused, keeping the running config: {node.config}: {key}: "
            "changing it needs a restart (running: "
        )
        return
    assert reloaded, caplog.text
    assert daemon.config == new
    assert daemon.policy.config is daemon.config  # what the next decision is made by
    assert _key_value(daemon.config, key) == _key_value(new, key)
    if check is not None:
        check(daemon, node)
    judge_once(daemon, node)  # and it still answers


def test_a_reload_that_cannot_be_applied_changes_nothing(
    node: Node, daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    """An audit file that cannot be opened refuses the whole reload: the new policy, the new
    metrics address and the socket mode in the same file are not applied either."""
    running = daemon.config
    (node.directory / "not-a-directory").write_text("")
    node.document["audit"]["file"] = str(node.directory / "not-a-directory" / "audit.log")
    node.document["metrics"]["listen"] = f"unix:{node.directory / 'metrics-new.sock'}"
    node.document["server"]["socket_mode"] = "0600"
    node.document["policy"][0]["mode"] = "off"
    node.write()
    with caplog.at_level(logging.INFO, logger="trustd"):
        assert not daemon.reload()
    assert daemon.config is running and daemon.policy.config is running
    assert f"{node.config}: audit.file: cannot open the audit log" in caplog.text
    assert not (node.directory / "metrics-new.sock").exists()
    assert scrape(f"unix:{node.directory / 'metrics.sock'}").startswith(b"HTTP/1.1 200 ")
    assert stat.S_IMODE(os.stat(node.directory / "cri.sock").st_mode) == 0o660
    judge_once(daemon, node)
    assert len((node.directory / "audit.log").read_text().splitlines()) == 1


def test_a_metrics_address_that_cannot_be_bound_refuses_the_reload(
    node: Node, daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    running = daemon.config
    (node.directory / "a-file").write_text("")
    node.document["metrics"]["listen"] = f"unix:{node.directory / 'a-file' / 'metrics.sock'}"
    node.document["audit"]["file"] = str(node.directory / "audit-new.log")
    node.write()
    with caplog.at_level(logging.INFO, logger="trustd"):
        assert not daemon.reload()
    assert daemon.config is running
    assert f"{node.config}: metrics.listen: cannot listen on unix:{node.directory}" in caplog.text
    assert scrape(f"unix:{node.directory / 'metrics.sock'}").startswith(b"HTTP/1.1 200 ")
    judge_once(daemon, node)  # audited where it was
    assert len((node.directory / "audit.log").read_text().splitlines()) == 1
    assert (
        not (node.directory / "audit-new.log").exists()
        or not (node.directory / "audit-new.log").read_text()
    )


def test_a_broken_notation_config_refuses_the_reload_and_keeps_the_new_metrics_off(
    node: Node, daemon: Daemon
) -> None:
    running = daemon.config
    broken = node.directory / "notation-broken"
    broken.mkdir()
    node.document["notation"]["config_dir"] = str(broken)  # no trust policy in it
    node.document["metrics"]["listen"] = f"unix:{node.directory / 'metrics-new.sock'}"
    node.write()
    assert not daemon.reload()
    assert daemon.config is running
    assert not (node.directory / "metrics-new.sock").exists()
    assert scrape(f"unix:{node.directory / 'metrics.sock'}").startswith(b"HTTP/1.1 200 ")


def test_metrics_move_to_a_port_the_old_endpoint_holds(node: Node) -> None:
    """127.0.0.1:PORT to 0.0.0.0:PORT (every interface): the new address needs the old one's
    port, so the old endpoint is closed first."""
    from tests.stack.ports import free_port

    port = free_port()
    node.document["metrics"]["listen"] = f"127.0.0.1:{port}"
    node.write()
    daemon = Daemon(node.config, load_config(node.config))
    daemon.start()
    try:
        node.document["metrics"]["listen"] = f"0.0.0.0:{port}"
        node.write()
        assert daemon.reload()
        assert daemon._metrics_handle is not None
        assert (daemon._metrics_handle.host, daemon._metrics_handle.port) == ("0.0.0.0", port)
        node.document["metrics"]["listen"] = ""
        node.write()
        assert daemon.reload()
        assert daemon._metrics_handle is None
    finally:
        daemon.shutdown()


# --- docs/operations.md --------------------------------------------------------------------------

_SECTION = re.compile(r"`\[\[?(?P<table>[a-z_.]+)\]\]?`")
_KEY = re.compile(r"`(?P<key>[a-z_]+(?:\.[a-z_]+)*)`")


def documented_reload_table(text: str) -> dict[str, OnReload]:
    """Key -> decision from the table under "## Reloading": a row names keys (`server.socket`)
    or whole tables (`[[notary]]`: every key in it) in its first column."""
    section = text.split("\n## Reloading\n", 1)[1].split("\n## ", 1)[0]
    keys = leaf_keys()
    found: dict[str, OnReload] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names, decision = line.split(" | ")[0:2]
        if decision.startswith("needs a restart"):
            on_reload = OnReload.RESTART
        else:
            assert decision.startswith("applies"), line
            on_reload = OnReload.APPLIES
        named = {match["key"] for match in _KEY.finditer(_SECTION.sub("", names))}
        for table in _SECTION.finditer(names):
            named |= {key for key in keys if key.startswith(table["table"] + ".")}
        for key in named:
            assert found.get(key, on_reload) is on_reload, f"{key} is in two rows"
            found[key] = on_reload
    return found


def test_docs_list_every_key_as_the_daemon_decides() -> None:
    assert documented_reload_table(OPERATIONS.read_text()) == RELOAD
