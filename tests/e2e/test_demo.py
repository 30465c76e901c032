"""The README's "run it" command walks through its story on the real stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_walk_through(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--exit", "--workdir", str(tmp_path / "demo")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    steps = out.split("\n1. ")[1]
    signed, unsigned, unsigned_tag, attack = steps.split("\n\n")[:4]
    assert "ALLOWED" in signed
    assert "/demo/hello:1.0 (the signed digest was pulled)" in signed  # containerd lists the tag
    denied = "DENIED  rpc error: code = UNKNOWN desc = SignatureValidationFailed: trustd: no trust"
    assert denied in unsigned
    assert "trustd: tag 2.0 is not signed in" in unsigned_tag
    assert "trustd pulled the signed sha256:" in attack and ": yes" in attack
    assert "is not a signed target of" in attack
    audit = [
        json.loads(line) for line in (tmp_path / "demo" / "audit.log").read_text().splitlines()
    ]
    pulls = [(entry["verdict"], entry["error"]) for entry in audit if entry["action"] == "pull"]
    assert pulls == [
        ("allow", None),
        ("deny", "NoTrustData"),
        ("deny", "TagNotSigned"),
        ("allow", None),
        ("deny", "DigestNotSigned"),
    ]
