"""trustd.toml files for the test stack: one writer for the tests, the demo and the benchmarks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

# (registry host, Notary URL, CA file or None)
NotaryEntry = tuple[str, str, Path | None]


def toml_value(value: str | int | float | bool) -> str:
    """A TOML literal; a JSON string of hosts, URLs and paths is a valid TOML basic string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def trustd_config_text(
    *,
    state_dir: Path,
    notary: Sequence[NotaryEntry],
    policy: str = "",
    containerd_endpoint: str | None = None,
    socket: Path | None = None,
    verifier_socket: Path | None = None,
    server: Mapping[str, str | int | float] | None = None,
    audit_file: Path | None = None,
    metrics_listen: str = "",
    notary_extra: str = "",
    exempt: Sequence[str] = (),
) -> str:
    """A config for the test stack; ``policy`` (TOML text of ``[[policy]]`` tables) is appended.

    ``notary_extra`` (TOML lines such as ``timeout = 5``) goes into every ``[[notary]]`` table.
    ``exempt`` entries (``repository[:tag pattern]``) are pulled without verification.

    Audit goes to ``audit_file`` only (no stdout copy) and metrics are off unless asked for; so
    is the daemon's verifier socket (its default, /run/trustd/verify.sock, is shared by the
    machine).
    """
    # Top-level keys come before the first table, or TOML puts them into it.
    lines = [f"exempt = [{', '.join(toml_value(entry) for entry in exempt)}]", ""] if exempt else []
    lines += ["[server]", f"state_dir = {toml_value(str(state_dir))}"]
    if containerd_endpoint is not None:
        lines.append(f"containerd = {toml_value(containerd_endpoint)}")
    if socket is not None:
        lines.append(f"socket = {toml_value(str(socket))}")
    lines.append(f"verifier_socket = {toml_value(str(verifier_socket or ''))}")
    lines += [f"{key} = {toml_value(value)}" for key, value in (server or {}).items()]
    audit = toml_value(str(audit_file)) if audit_file is not None else '""'
    lines += ["", "[audit]", f"file = {audit}", "stdout = false"]
    lines += ["", "[metrics]", f"listen = {toml_value(metrics_listen)}", ""]
    for registry, url, ca in notary:
        lines += ["[[notary]]", f"registry = {toml_value(registry)}", f"url = {toml_value(url)}"]
        if ca is not None:
            lines.append(f"ca = {toml_value(str(ca))}")
        if notary_extra:
            lines.append(notary_extra.strip("\n"))
        lines.append("")
    return "\n".join(lines) + "\n" + policy
