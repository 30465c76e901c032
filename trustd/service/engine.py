"""Building the engine that judges images: one factory for the daemon, the image verifier judging
in its own process (``trustd.localapi.server.judge_locally``) and trustctl's commands.

An ``Engine`` is the trust engine (verified trust data, the state directory), the
``PolicyEngine`` over it, and the audit log its decisions go to, if any. What differs between the
programs is only what they audit (``Audit``) and, for the daemon, the metrics it observes.

The rule for an audit log that cannot be opened, the same everywhere: a program that records
decisions or changes opens the audit log (``audit.file``) before it builds anything else, and
does nothing if it cannot. ``build_engine`` raises ``AuditLogUnavailable`` naming the file and
why, and so ``trustd serve`` does not start, the image verifier judging in its own process
blocks the pull with that reason, and ``trustctl forget-root`` changes nothing: no decision or
change is made that the audit log would not show. Queries record nothing and never open it.
Once it is open, a failed write is logged and the decision stands, and a failed reopen (log
rotation) keeps writing the old file (``trustd.service.audit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType

from trustd.config.model import Config
from trustd.errors import ConfigError
from trustd.formats.configured import RegistryFormats
from trustd.formats.notary.engine import TrustEngine
from trustd.formats.notary.view import VerifiedRepository
from trustd.policy.engine import Observer, PolicyEngine
from trustd.service.audit import AuditLog


class Audit(Enum):
    """What an engine records in the audit log."""

    # Nothing: queries (trustctl verify, explain, inspect, expiring) decide nothing.
    NONE = "none"
    # Every decision, to audit.file and, with audit.stdout, standard output: the daemon.
    DECISIONS = "decisions"
    # Every decision, to audit.file only: the image verifier, whose standard output is the line
    # containerd reports.
    DECISIONS_TO_FILE = "decisions to the file"
    # audit.file, open for records the caller writes itself: trustctl forget-root.
    RECORDS = "records"


class AuditLogUnavailable(ConfigError):
    """The audit log the config names cannot be opened; nothing that would be recorded is done."""


@dataclass(frozen=True)
class Engine:
    """A trust engine, the policy over it, and the audit log it writes (None: it writes none)."""

    trust: TrustEngine
    policy: PolicyEngine
    audit: AuditLog | None
    # Notation and cosign, built from the config and rebuilt by policy.reconfigure.
    registry_formats: RegistryFormats | None = None

    def reopen_audit(self) -> None:
        """Open the audit log's path afresh, after log rotation moved the file."""
        if self.audit is not None:
            self.audit.reopen()

    def close(self) -> None:
        self.trust.close()
        if self.registry_formats is not None:
            self.registry_formats.close()
        if self.audit is not None:
            self.audit.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def build_engine(
    config: Config,
    *,
    state_dir: Path | None = None,
    audit: Audit = Audit.NONE,
    observers: Sequence[Observer] = (),
    on_refresh: Callable[[bool], None] | None = None,
    on_verified: Callable[[VerifiedRepository], None] | None = None,
) -> Engine:
    """The engine for ``config``, on ``state_dir`` (default: ``server.state_dir``), recording
    what ``audit`` says, each decision also handed to ``observers``; the caller closes it.

    ``on_refresh(hit)`` and ``on_verified(view)`` are the trust engine's (the daemon's cache
    counter and expiry watch). AuditLogUnavailable when the audit log cannot be opened (see the
    module's rule).
    """
    sink = _open_audit_log(config, audit)
    state = state_dir if state_dir is not None else config.server.state_dir
    registry_formats = RegistryFormats(state)
    try:
        trust = TrustEngine(config, state, on_refresh=on_refresh, on_verified=on_verified)
        try:
            policy = PolicyEngine(config, trust, registry_formats.formats_for)
        except BaseException:
            trust.close()
            raise
    except BaseException:
        registry_formats.close()
        if sink is not None:
            sink.close()
        raise
    if sink is not None and audit in (Audit.DECISIONS, Audit.DECISIONS_TO_FILE):
        policy.add_observer(sink)
    for observer in observers:
        policy.add_observer(observer)
    return Engine(trust, policy, sink, registry_formats)


def _open_audit_log(config: Config, audit: Audit) -> AuditLog | None:
    path = config.audit.file
    stdout = audit is Audit.DECISIONS and config.audit.stdout
    # The daemon's log exists even when it writes nowhere: a reload may give it a file.
    if audit is Audit.NONE or (path is None and not stdout and audit is not Audit.DECISIONS):
        return None
    try:
        return AuditLog(path, stdout=stdout)
    except OSError as error:
        key = f"audit.file in {config.source}" if config.source is not None else "audit.file"
        raise AuditLogUnavailable(
            f"cannot open the audit log {path} ({key}): {error.strerror or error}"
        ) from None
