from __future__ import annotations

import json
import logging
import os
import stat
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from trustd.errors import NotaryUnavailable, TagNotSigned
from trustd.formats.base import SignedDigest
from trustd.names.reference import parse_reference
from trustd.policy.engine import Action, Decision, Verdict
from trustd.service.audit import AuditLog, audit_record

DIGEST = "sha256:" + "ab" * 32


def allowed_decision(image: str = "nginx:1.25") -> Decision:
    reference = parse_reference(image)
    return Decision(
        image=image,
        action=Action.PULL,
        verdict=Verdict.ALLOW,
        mode="enforce",
        reason=f"signed by targets/releases as {DIGEST}",
        reference=reference,
        pull_ref=reference.pinned(DIGEST),
        signed=SignedDigest(
            "notary-v1", reference.repository, "1.25", DIGEST, "targets/releases", size=1234
        ),
        rule="policy[0] 'docker.io/**'",
        latency_seconds=0.0421234,
    )


def denied_decision() -> Decision:
    reference = parse_reference("registry.example.com/app:dev")
    error = TagNotSigned("tag dev is not signed in registry.example.com/app")
    return Decision(
        image="registry.example.com/app:dev",
        action=Action.STATUS,
        verdict=Verdict.DENY,
        mode="enforce",
        reason=str(error),
        reference=reference,
        rule="default (enforce)",
        error=error,
    )


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_allowed_decision_fields() -> None:
    now = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert audit_record(allowed_decision(), now) == {
        "time": "2024-05-06T07:08:09.123Z",
        "action": "pull",
        "image": "nginx:1.25",
        "reference": "docker.io/library/nginx:1.25",
        "gun": "docker.io/library/nginx",
        "digest": DIGEST,
        "size": 1234,
        "role": "targets/releases",
        "format": "notary-v1",
        "signer": "targets/releases",
        "mode": "enforce",
        "verdict": "allow",
        "reason": f"signed by targets/releases as {DIGEST}",
        "error": None,
        "rule": "policy[0] 'docker.io/**'",
        "pull_ref": f"docker.io/library/nginx@{DIGEST}",
        "latency_ms": 42.123,
        "from_cache": False,
        "trust_data_age_s": None,
    }


def test_decisions_from_cached_trust_data_are_marked_with_their_age() -> None:
    record = audit_record(replace(allowed_decision(), cached_age=3599.96))
    assert record["from_cache"] is True
    assert record["trust_data_age_s"] == 3600.0


def test_denied_and_invalid_decisions_have_nulls() -> None:
    record = audit_record(denied_decision())
    assert record["action"] == "status"
    assert record["verdict"] == "deny"
    assert record["digest"] is None
    assert record["pull_ref"] is None
    assert record["error"] == "TagNotSigned"
    assert record["time"].endswith("Z")

    invalid = Decision("UPPER/Case", Action.PULL, Verdict.DENY, "invalid", "bad reference")
    record = audit_record(invalid)
    assert record["reference"] is None
    assert record["gun"] is None
    assert record["image"] == "UPPER/Case"


def test_credentials_in_urls_are_never_written() -> None:
    error = NotaryUnavailable("https://robot:s3cr3t@notary.example.com/v2/ unreachable")
    decision = Decision(
        "registry.example.com/app:1",
        Action.PULL,
        Verdict.DENY,
        "enforce",
        str(error),
        error=error,
    )
    line = json.dumps(audit_record(decision))
    assert "s3cr3t" not in line
    assert "robot" not in line
    assert "https://***@notary.example.com/v2/" in line


def test_hostile_image_names_stay_one_bounded_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, stdout=False)
    image = 'evil\n{"verdict": "allow"}\u2028' + "x" * 100_000
    log(Decision(image, Action.PULL, Verdict.DENY, "invalid", "bad"))
    log.close()
    text = path.read_text()
    assert text.count("\n") == 1
    assert len(text.splitlines()) == 1  # splitlines also splits on U+2028
    assert len(text) < 10_000
    assert read_lines(path)[0]["verdict"] == "deny"


def test_file_is_created_with_parents_and_mode_0640(tmp_path: Path) -> None:
    path = tmp_path / "log" / "trustd" / "audit.log"
    log = AuditLog(path, stdout=False)
    log(allowed_decision())
    log(denied_decision())
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 & ~_umask()
    assert [line["verdict"] for line in read_lines(path)] == ["allow", "deny"]


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"earlier": true}\n')
    log = AuditLog(path, stdout=False)
    log(allowed_decision())
    log.close()
    lines = read_lines(path)
    assert lines[0] == {"earlier": True}
    assert lines[1]["image"] == "nginx:1.25"


def test_line_is_on_disk_before_the_observer_returns(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, stdout=False)
    log(allowed_decision())
    assert len(read_lines(path)) == 1  # read before close: nothing is held in a buffer
    log.close()


def test_reopen_after_rename_writes_to_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    rotated = tmp_path / "audit.log.1"
    log = AuditLog(path, stdout=False)
    log(allowed_decision("nginx:1"))
    path.rename(rotated)
    log(allowed_decision("nginx:2"))  # before reopen: still the renamed file
    log.reopen()
    log(allowed_decision("nginx:3"))
    log.close()
    assert [line["image"] for line in read_lines(rotated)] == ["nginx:1", "nginx:2"]
    assert [line["image"] for line in read_lines(path)] == ["nginx:3"]


def test_failed_reopen_keeps_writing_the_old_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "logs"
    path = directory / "audit.log"
    log = AuditLog(path, stdout=False)
    moved = tmp_path / "moved"
    directory.rename(moved)
    directory.write_text("a file where the directory was")
    with caplog.at_level(logging.ERROR, logger="trustd.service.audit"):
        log.reopen()
    log(allowed_decision())
    log.close()
    assert "cannot reopen the audit log" in caplog.text
    assert len(read_lines(moved / "audit.log")) == 1


def test_write_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(Path("/dev/full"), stdout=False)
    with caplog.at_level(logging.ERROR, logger="trustd.service.audit"):
        log(allowed_decision())
    log.close()
    assert "cannot write the audit log /dev/full" in caplog.text


def test_stdout_copy_is_one_line_per_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog(None, stdout=True)
    log(allowed_decision())
    log(denied_decision())
    out = capsys.readouterr().out
    assert [json.loads(line)["verdict"] for line in out.splitlines()] == ["allow", "deny"]


def test_no_stdout_copy_when_disabled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(tmp_path / "audit.log", stdout=False)
    log(allowed_decision())
    log.close()
    assert capsys.readouterr().out == ""


def test_concurrent_decisions_give_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, stdout=False)
    threads_count, per_thread = 8, 200

    def work(number: int) -> None:
        for index in range(per_thread):
            log(allowed_decision(f"registry.example.com/t{number}/image:{index}"))

    threads = [threading.Thread(target=work, args=(number,)) for number in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    images = [line["image"] for line in read_lines(path)]
    assert len(images) == threads_count * per_thread
    assert len(set(images)) == threads_count * per_thread


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
