"""``trustctl forget-root``: a pattern over several repositories needs ``--all``, and the audit
record is written before the change, which is not made if the record cannot be written.

The cache holds real (test-key) roots; the command runs in this process on a real state
directory and audit log. With a Notary, a re-pin and the daemon: tests/e2e/test_lifetime.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.notary_factory import Repo
from trustd.formats.notary.store import MetadataStore
from trustd.programs.trustctl_commands import trustctl_main

GUNS = [f"registry.example.com/team/app{number}" for number in range(7)] + [
    "other.example.com/solo"
]


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Any]:
    state = tmp_path / "state"
    store = MetadataStore(state)
    for gun in GUNS:
        store.save(gun, "root", Repo().root())
    return {"state": state, "store": store, "tmp": tmp_path}


def config(node: dict[str, Any], audit_file: Path | str) -> str:
    path = node["tmp"] / "trustd.toml"
    path.write_text(
        f'[server]\nstate_dir = "{node["state"]}"\nverifier_socket = ""\n'
        f'[audit]\nfile = "{audit_file}"\nstdout = false\n'
    )
    return str(path)


def forget(node: dict[str, Any], audit_file: Path | str, *args: str) -> int:
    return trustctl_main(["forget-root", *args, "-c", config(node, audit_file)])


def records(audit: Path) -> list[dict[str, Any]]:
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines()]


def test_a_pattern_over_several_repositories_needs_all(node: dict[str, Any], capsys) -> None:
    audit = node["tmp"] / "audit.log"
    assert forget(node, audit, "**") == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "trustctl: ** matches 8 cached repositories (other.example.com/solo, "
        "registry.example.com/team/app0, registry.example.com/team/app1, "
        "registry.example.com/team/app2, registry.example.com/team/app3 and 3 more); "
    )
    assert "add --all" in err
    assert node["store"].cached_guns() == sorted(GUNS)
    assert records(audit) == []

    assert forget(node, audit, "registry.example.com/team/*") == 2
    assert node["store"].cached_guns() == sorted(GUNS)

    # A pattern that matches one repository is as good as its name.
    assert forget(node, audit, "other.example.com/**") == 0
    assert "other.example.com/solo" not in node["store"].cached_guns()
    assert [(r["gun"], r["pattern"]) for r in records(audit)] == [
        ("other.example.com/solo", "other.example.com/**")
    ]


def test_with_all_every_match_is_forgotten_and_recorded(node: dict[str, Any], capsys) -> None:
    audit = node["tmp"] / "audit.log"
    assert forget(node, audit, "**", "--all") == 0
    assert node["store"].cached_guns() == []
    written = records(audit)
    assert [r["gun"] for r in written] == sorted(GUNS)
    assert all(r["action"] == "forget-root" and r["pattern"] == "**" for r in written)
    assert all(r["old_root_keys"] and r["new_root_keys"] is None for r in written)
    assert capsys.readouterr().out.count("forgot its trusted root") == len(GUNS)


@pytest.mark.parametrize("where", ["full device", "directory", "under a file"])
def test_no_change_when_the_record_cannot_be_written(
    node: dict[str, Any], where: str, capsys
) -> None:
    if where == "full device":
        audit: Path = Path("/dev/full")  # opens fine, every write fails (ENOSPC)
        if not audit.exists():
            pytest.skip("no /dev/full on this system")
    elif where == "directory":
        audit = node["tmp"] / "audit-dir"
        audit.mkdir()
    else:
        (node["tmp"] / "a-file").write_text("")
        audit = node["tmp"] / "a-file" / "audit.log"
    gun = GUNS[0]
    assert forget(node, audit, gun) == 2
    # A log that cannot be opened stops it before anything is looked at; one that takes no
    # writes (a full device) stops it at the record.
    assert re.match(
        rf"trustctl: cannot (open|write) the audit log {re.escape(str(audit))}[ :]",
        capsys.readouterr().err,
    )
    assert forget(node, audit, "**", "--all") == 2
    err = capsys.readouterr().err
    assert re.match(rf"trustctl: cannot (open|write) the audit log {re.escape(str(audit))}", err)
    assert node["store"].cached_guns() == sorted(GUNS)
    if where == "full device":
        assert "No space left on device" in err
        assert f"nothing changed for {sorted(GUNS)[0]}; nothing changed for the 7 after it" in err


def test_the_record_is_written_before_the_change(
    node: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = node["tmp"] / "audit.log"
    seen: list[tuple[str, list[str]]] = []
    remove = MetadataStore.forget

    def watched(store: MetadataStore, gun: str) -> bool:
        seen.append((gun, [r["gun"] for r in records(audit)]))
        return remove(store, gun)

    monkeypatch.setattr(MetadataStore, "forget", watched)
    assert forget(node, audit, "registry.example.com/team/*", "--all") == 0
    guns = sorted(gun for gun in GUNS if gun.startswith("registry."))
    # When each GUN's files went, the log already had its record (and those before it).
    assert seen == [(gun, guns[: index + 1]) for index, gun in enumerate(guns)]


def test_a_change_that_fails_after_its_record_is_recorded_as_failed(
    node: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    audit = node["tmp"] / "audit.log"

    def broken(store: MetadataStore, gun: str) -> bool:
        raise PermissionError(13, "Permission denied", str(store.root_dir))

    monkeypatch.setattr(MetadataStore, "forget", broken)
    assert forget(node, audit, GUNS[0]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trustctl: cannot change the trust data of {GUNS[0]} in ")
    assert "Permission denied" in err and "forget-root-failed" in err
    assert [(r["action"], r["gun"]) for r in records(audit)] == [
        ("forget-root", GUNS[0]),
        ("forget-root-failed", GUNS[0]),
    ]
    assert "PermissionError" in records(audit)[1]["error"]


def test_audit_off_refuses(node: dict[str, Any], capsys) -> None:
    assert forget(node, "", GUNS[0]) == 2
    assert "audit.file is off" in capsys.readouterr().err
    assert GUNS[0] in node["store"].cached_guns()
