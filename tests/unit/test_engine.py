"""The one engine factory (trustd.service.engine) and its one rule for an audit log that cannot be
opened, as the daemon, the image verifier judging in its own process and trustctl follow it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trustd.config.load import load_config
from trustd.formats.notary.store import MetadataStore
from trustd.policy.engine import Decision, Verdict
from trustd.programs import image_verifier
from trustd.programs.trustctl_commands import trustctl_main
from trustd.service.engine import Audit, AuditLogUnavailable, build_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
GOOD = "sha256:" + "a" * 64
EXEMPT = "registry.example.com/exempt/app:1"  # judged without asking any Notary server
GUN = "registry.example.com/team/app"


def write_config(directory: Path, audit_file: Path | None, stdout: bool = False) -> Path:
    config = directory / "trustd.toml"
    config.write_text(
        'exempt = ["registry.example.com/exempt/*:*"]\n'
        f'[server]\nstate_dir = "{directory / "state"}"\nverifier_socket = ""\n'
        # Nothing of the machine's: a daemon that started anyway would listen in this directory.
        f'socket = "{directory / "cri.sock"}"\n'
        f'containerd = "unix://{directory / "no-containerd.sock"}"\n'
        f'[audit]\nfile = "{audit_file or ""}"\nstdout = {"true" if stdout else "false"}\n'
    )
    return config


def unopenable(directory: Path) -> Path:
    """An audit.file that cannot be opened, even by root: it is a directory."""
    path = directory / "audit.log"
    path.mkdir()
    return path


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the factory ---------------------------------------------------------------------------------


def test_the_daemons_engine_records_every_decision_and_hands_it_on(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    audit = tmp_path / "log" / "audit.log"
    config = load_config(write_config(tmp_path, audit, stdout=True))
    seen: list[Decision] = []
    with build_engine(config, audit=Audit.DECISIONS, observers=(seen.append,)) as engine:
        decision = engine.policy.judge_resolved(EXEMPT, GOOD)
        assert engine.trust.updater.store.state_dir == tmp_path / "state"
    assert decision.verdict is Verdict.ALLOW and seen == [decision]
    [record] = records(audit)
    assert (record["action"], record["image"], record["mode"]) == ("verify", EXEMPT, "exempt")
    assert json.loads(capfd.readouterr().out) == record  # audit.stdout: the journal's copy


def test_the_verifiers_engine_records_to_the_file_only(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    audit = tmp_path / "audit.log"
    config = load_config(write_config(tmp_path, audit, stdout=True))
    with build_engine(config, audit=Audit.DECISIONS_TO_FILE) as engine:
        engine.policy.judge_resolved(EXEMPT, GOOD)
    assert len(records(audit)) == 1
    assert capfd.readouterr().out == ""  # stdout is the line containerd reports


def test_queries_and_records_do_not_audit_decisions(tmp_path: Path) -> None:
    audit = tmp_path / "log" / "audit.log"
    config = load_config(write_config(tmp_path, audit))
    other_state = tmp_path / "elsewhere"
    with build_engine(config, state_dir=other_state) as engine:  # Audit.NONE
        assert engine.audit is None
        engine.policy.judge_resolved(EXEMPT, GOOD)
        assert engine.trust.updater.store.state_dir == other_state
    assert not audit.parent.exists()  # never even opened
    with build_engine(config, audit=Audit.RECORDS) as engine:
        engine.policy.judge_resolved(EXEMPT, GOOD)
        assert engine.audit is not None
        engine.audit.write_line('{"action":"forget-root"}\n')
    assert records(audit) == [{"action": "forget-root"}]


def test_no_audit_file_configured(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, audit_file=None))
    assert config.audit.file is None
    assert not config.audit.stdout
    for audit in Audit:
        with build_engine(config, audit=audit) as engine:
            if audit is Audit.DECISIONS:
                # The daemon's: it writes nowhere, until a reload gives it a file.
                assert engine.audit is not None
                assert (engine.audit.path, engine.audit.stdout) == (None, False)
            else:
                assert engine.audit is None
            assert engine.policy.judge_resolved(EXEMPT, GOOD).allowed


# --- the rule: an audit log that cannot be opened ------------------------------------------------


def test_an_unopenable_audit_log_stops_every_engine_that_records(tmp_path: Path) -> None:
    path = unopenable(tmp_path)
    config_path = write_config(tmp_path, path)
    config = load_config(config_path)
    for audit in (Audit.DECISIONS, Audit.DECISIONS_TO_FILE, Audit.RECORDS):
        with pytest.raises(AuditLogUnavailable) as raised:
            build_engine(config, audit=audit)
        assert str(raised.value) == (
            f"cannot open the audit log {path} (audit.file in {config_path}): Is a directory"
        )
    # Queries record nothing, so they never open it.
    with build_engine(config) as engine:
        assert engine.policy.judge_resolved(EXEMPT, GOOD).allowed


def test_the_daemon_does_not_start(tmp_path: Path) -> None:
    path = unopenable(tmp_path)
    config = write_config(tmp_path, path)
    result = subprocess.run(
        [sys.executable, "-m", "trustd", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
    )
    assert result.returncode == 1, result
    assert (
        f"ERROR trustd: cannot start: cannot open the audit log {path} (audit.file in {config}): "
        "Is a directory"
    ) in result.stderr


def test_the_verifier_judging_in_its_own_process_blocks_the_pull(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = unopenable(tmp_path)
    config = write_config(tmp_path, path)  # verifier_socket = "": no daemon to ask
    status = image_verifier.main(["-name", EXEMPT, "-digest", GOOD, "-c", str(config)])
    out, _ = capsys.readouterr()
    assert status == image_verifier.EXIT_NOT_JUDGED
    assert out == (
        f"trustd: image verifier: cannot open the audit log {path} (audit.file in {config}): "
        "Is a directory\n"
    )
    # The same node with a usable audit log: judged and recorded.
    path.rmdir()
    assert image_verifier.main(["-name", EXEMPT, "-digest", GOOD, "-c", str(config)]) == 0
    assert [record["image"] for record in records(path)] == [EXEMPT]


def test_trustctl_changes_nothing_it_could_not_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = unopenable(tmp_path)
    config = write_config(tmp_path, path)
    store = MetadataStore(tmp_path / "state")
    store.save(GUN, "root", b"{}")
    assert trustctl_main(["forget-root", GUN, "-c", str(config)]) == 2
    _, err = capsys.readouterr()
    assert err == (
        f"trustctl: cannot open the audit log {path} (audit.file in {config}): Is a directory\n"
    )
    assert store.cached_guns() == [GUN]
    # Queries are answered: they record nothing.
    assert trustctl_main(["explain", EXEMPT, "-c", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "exempt"
