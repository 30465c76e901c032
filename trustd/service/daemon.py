"""``trustd serve``: process life of the node service.

Wires config, trust engine, policy, audit, metrics, the CRI shim and the socket containerd's image
verifier and ``trustctl verify`` ask (``server.verifier_socket``) together; talks to systemd
(READY, RELOADING, STOPPING, STATUS, WATCHDOG); reloads the config on SIGHUP (a bad new config is
refused and the old one stays in force); drains calls in flight on SIGTERM.

Signals: no Python signal handler runs. SIGHUP, SIGTERM and SIGINT are blocked before any thread
starts (threads inherit the mask, gRPC's included) and the main thread takes them one at a time
with ``sigtimedwait``, which doubles as the tick for watchdog pings and status updates. A handler
would run in the main thread between two bytecodes, possibly while that thread holds a lock the
handler then needs (``threading.Event.set`` did), and the daemon would hang for good.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from cri_shim.containerd import ContainerdClient
from cri_shim.server import RunningServer, serve
from trustd.config.load import config_warnings, load_config
from trustd.config.model import Config
from trustd.config.permissions import permission_warnings
from trustd.errors import ConfigError
from trustd.localapi.server import VerifierSocketServer
from trustd.localapi.wire import TrustctlVerify
from trustd.net.deadline import call_deadline
from trustd.policy.engine import Decision, Verdict
from trustd.policy.queries import VerifyAnswer, verify_answer
from trustd.service.engine import Audit, AuditLogUnavailable, build_engine
from trustd.service.expiry import ExpiryWatch
from trustd.service.metrics import Metrics, MetricsServer
from trustd.service.sdnotify import SystemdNotifier

log = logging.getLogger("trustd")

# What the main loop waits for: SIGHUP reloads, the others stop.
HANDLED_SIGNALS: frozenset[signal.Signals] = frozenset(
    {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
)


@dataclass
class _Counts:
    allowed: int = 0
    denied: int = 0
    audit_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, decision: Decision) -> None:
        with self.lock:
            if decision.verdict is Verdict.DENY:
                self.denied += 1
            elif decision.verdict is Verdict.AUDIT_FAIL:
                self.audit_failures += 1
            else:
                self.allowed += 1

    def summary(self) -> str:
        with self.lock:
            return (
                f"serving; {self.allowed} allowed, {self.denied} denied, "
                f"{self.audit_failures} admitted in audit mode"
            )


class Daemon:
    """One running trustd: build with a loaded config, ``start()``, then ``wait()``."""

    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = SystemdNotifier()
        self.counts = _Counts()
        self.metrics = Metrics()
        self.expiry = ExpiryWatch(config.server.expiry_warning_days, self.metrics.expiry)
        # AuditLogUnavailable: the daemon does not start (trustd.service.engine's rule).
        self.engine = build_engine(
            config,
            audit=Audit.DECISIONS,
            observers=(self.metrics.observe, self.counts),
            on_refresh=self.metrics.record_cache,
            on_verified=self.expiry.observe,
        )
        self.trust = self.engine.trust
        self.policy = self.engine.policy
        self.containerd = ContainerdClient(
            config.server.containerd, namespace=config.server.containerd_namespace
        )
        self._server: RunningServer | None = None
        self._verifier_server: VerifierSocketServer | None = None
        self._metrics_handle: MetricsServer | None = None

    def start(self) -> None:
        self._server = serve(
            self.config.server.socket,
            self.policy,
            self.containerd,
            socket_mode=self.config.server.socket_mode,
            pull_timeout=self.config.server.pull_timeout,
        )
        verifier_socket = self.config.server.verifier_socket
        if verifier_socket is not None:
            # The same PolicyEngine (and so the same cache and single flight) as the shim.
            self._verifier_server = VerifierSocketServer(
                verifier_socket,
                self.config_path,
                self.policy.judge_resolved,
                self.answer_query,
                group=self.config.server.verifier_group,
                pull_timeout=self.config.server.pull_timeout,
            )
            try:
                self._verifier_server.start()
            except BaseException:
                self._server.stop(0)  # do not leave a CRI socket behind a failed start
                raise
        if self.config.metrics.listen:
            self._metrics_handle = self.metrics.serve(self.config.metrics.listen)
        self.expiry.start(self.trust)
        _log_config_warnings(self.config)
        log.info(
            "serving the CRI ImageService on %s in front of %s",
            self.config.server.socket,
            self.config.server.containerd,
        )
        if verifier_socket is not None:
            log.info("answering containerd's image verifier and trustctl on %s", verifier_socket)
        self.notifier.ready()
        self.notifier.status(self.counts.summary())

    def answer_query(self, query: TrustctlVerify) -> VerifyAnswer:
        """``trustctl verify`` as the daemon sees it: its loaded config and its trust engine
        (the shim's cache, single flight and freshness window)."""
        with call_deadline(query.timeout):
            return verify_answer(self.policy, query.image, None, query.as_json)

    def wait(self) -> None:
        """Run until SIGTERM or SIGINT: reloads, watchdog pings and status updates happen here.

        The signals must already be blocked in every thread (``block_handled_signals``), or the
        kernel may hand them to another thread, or run their default action, instead.
        """
        interval = self.notifier.watchdog_interval()
        tick = min(interval / 2, 5.0) if interval else 5.0
        while True:
            received = signal.sigtimedwait(HANDLED_SIGNALS, tick)
            if received is not None and received.si_signo != signal.SIGHUP:
                log.info("received %s", signal.Signals(received.si_signo).name)
                break
            if received is not None:
                # SIGHUPs sent while a reload runs stay pending (as one) and start another
                # reload afterwards, so the newest file is always the one read last.
                self.reload()
            self.notifier.watchdog()
            self.notifier.status(self.counts.summary())
        self.shutdown()

    def reload(self) -> bool:
        """Re-read the config and apply it; keep the running one, all of it, if the new one is
        not valid, changes a key that needs a restart (``RELOAD``), or cannot be applied (an
        audit file that does not open, a metrics address that cannot be bound)."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
            _check_reloadable(self.config, config)
            self._apply(config)
        except ConfigError as error:
            log.error("config reload refused, keeping the running config: %s", error)
            self.metrics.record_reload(success=False)
            self.engine.reopen_audit()
            self.notifier.ready()
            return False
        _log_config_warnings(config)
        self.metrics.record_reload(success=True)
        log.info("config reloaded from %s", self.config_path)
        self.notifier.ready()
        return True

    def _apply(self, config: Config) -> None:
        """Everything that can fail first (opening the new audit file, binding the new metrics
        address, building the new formats), undone if a later step fails; then the rest."""
        running = self.config
        audit = self.engine.audit
        audit_changed = audit is not None and (
            running.audit.file != config.audit.file or running.audit.stdout != config.audit.stdout
        )
        audit_fd: int | None = None
        if audit is not None and audit_changed:
            try:
                audit_fd = audit.open_target(config.audit.file)
            except OSError as error:
                raise ConfigError(
                    f"{config.source}: audit.file: cannot open the audit log {config.audit.file}"
                    f" ({error.strerror or error})"
                ) from None
        metrics: _MetricsSwitch | None = None
        try:
            metrics = self._switch_metrics(running.metrics.listen, config.metrics.listen, config)
            # Builds the new config's formats (its Notation trust policy and stores) before it
            # changes anything: a broken one leaves the running config in place.
            self.policy.reconfigure(config)
        except BaseException:
            if audit_fd is not None:
                os.close(audit_fd)
            if metrics is not None:
                metrics.undo()
            raise
        metrics.done()
        if audit is not None:
            if audit_changed:
                audit.retarget(config.audit.file, config.audit.stdout, audit_fd)
                log.info("audit log: %s", _audit_targets(config))
            else:
                audit.reopen()  # log rotation
        server = config.server
        if self._server is not None:
            self._server.service.pull_timeout = server.pull_timeout
            if server.socket_mode != running.server.socket_mode:
                try:
                    os.chmod(server.socket, server.socket_mode)
                except OSError as error:
                    log.error("cannot set the mode of %s: %s", server.socket, error)
        if self._verifier_server is not None:
            self._verifier_server.pull_timeout = server.pull_timeout
            if server.verifier_group != self._verifier_server.group:
                try:
                    self._verifier_server.set_group(server.verifier_group)
                except (KeyError, OSError) as error:
                    log.error(
                        "verifier socket %s: cannot give it to group %s: %s",
                        server.verifier_socket,
                        server.verifier_group,
                        error,
                    )
        self.expiry.warning_days = server.expiry_warning_days
        self.config = config

    def _switch_metrics(self, running: str, new: str, config: Config) -> _MetricsSwitch:
        """Serve metrics on ``new`` instead of ``running``: the new endpoint is up (and the old
        one still, unless both need the same port) when this returns; ConfigError and nothing
        changed when ``new`` cannot be served."""
        old = self._metrics_handle
        if new == running:
            return _MetricsSwitch(self, old, old, None)
        if not new:
            return _MetricsSwitch(self, old, None, None)
        try:
            return _MetricsSwitch(self, old, self.metrics.serve(new), None)
        except OSError as first:
            if old is None or first.errno != errno.EADDRINUSE:
                raise _metrics_error(config, new, first) from None
        # The old endpoint may hold the port (127.0.0.1:9879 -> 0.0.0.0:9879): free it first.
        old.shutdown()
        try:
            return _MetricsSwitch(self, old, self.metrics.serve(new), running)
        except OSError as error:
            self._metrics_handle = _serve_again(self.metrics, running)
            raise _metrics_error(config, new, error) from None

    def shutdown(self) -> None:
        self.notifier.stopping()
        grace = self.config.server.shutdown_grace
        log.info("stopping: finishing calls in flight (up to %gs)", grace)
        if self._server is not None:
            self._server.stop(grace)
        if self._verifier_server is not None:
            self._verifier_server.stop()
        if self._metrics_handle is not None:
            self._metrics_handle.shutdown()
        self.expiry.stop()
        self.containerd.close()
        self.engine.close()
        log.info("stopped")


def _log_config_warnings(config: Config) -> None:
    for warning in config_warnings(config) + permission_warnings(config):
        log.warning("%s: %s", config.source, warning)


class OnReload(Enum):
    """What ``systemctl reload`` does with a changed key."""

    APPLIES = "applies on reload"
    RESTART = "needs a restart"


# Every key of the config file (trustd.config.schema.walk_tables; arrays of tables without an
# index), and what a reload does when it changed. docs/operations.md, "Reloading", lists them.
RELOAD: dict[str, OnReload] = {
    "version": OnReload.APPLIES,
    # Sockets others connect to, and what they are connected to: kubelet and the clients would
    # lose them mid-call; the trust cache and its locks live in state_dir.
    "server.socket": OnReload.RESTART,
    "server.containerd": OnReload.RESTART,
    "server.containerd_namespace": OnReload.RESTART,
    "server.state_dir": OnReload.RESTART,
    "server.verifier_socket": OnReload.RESTART,
    "server.pull_timeout": OnReload.APPLIES,  # to calls that start after the reload
    "server.shutdown_grace": OnReload.APPLIES,
    "server.socket_mode": OnReload.APPLIES,  # the socket's mode is changed in place
    "server.freshness_window": OnReload.APPLIES,
    "server.expiry_warning_days": OnReload.APPLIES,
    "server.verifier_group": OnReload.APPLIES,  # the socket's group and mode follow
    "audit.file": OnReload.APPLIES,  # the next record goes to the new file
    "audit.stdout": OnReload.APPLIES,
    "metrics.listen": OnReload.APPLIES,  # the new address is bound before the old is closed
    "notary.registry": OnReload.APPLIES,
    "notary.url": OnReload.APPLIES,
    "notary.client_cert": OnReload.APPLIES,
    "notary.client_key": OnReload.APPLIES,
    "notary.username": OnReload.APPLIES,
    "notary.password_file": OnReload.APPLIES,
    "notary.ca": OnReload.APPLIES,
    "notary.timeout": OnReload.APPLIES,
    "notary.max_metadata_bytes": OnReload.APPLIES,
    "notary.root_max_bytes": OnReload.APPLIES,
    "notary.timestamp_max_bytes": OnReload.APPLIES,
    "notary.retries": OnReload.APPLIES,
    "trust_pinning.disable_tofu": OnReload.APPLIES,
    "trust_pinning.certs": OnReload.APPLIES,
    "trust_pinning.ca": OnReload.APPLIES,
    "exempt": OnReload.APPLIES,
    "policy.match": OnReload.APPLIES,
    "policy.mode": OnReload.APPLIES,
    "policy.roles": OnReload.APPLIES,
    "policy.signers": OnReload.APPLIES,
    "policy.require_signed_digests": OnReload.APPLIES,
    "policy.offline": OnReload.APPLIES,
    "policy.max_offline_age": OnReload.APPLIES,
    "policy.signatures": OnReload.APPLIES,
    "policy.cosign.keys": OnReload.APPLIES,
    "policy.cosign.threshold": OnReload.APPLIES,
    "policy.cosign.rekor_public_keys": OnReload.APPLIES,
    "registry.hosts_dirs": OnReload.APPLIES,
    "registry.timeout": OnReload.APPLIES,
    "registry.max_manifest_bytes": OnReload.APPLIES,
    "registry.max_signature_bytes": OnReload.APPLIES,
    "notation.config_dir": OnReload.APPLIES,
}


def _check_reloadable(running: Config, new: Config) -> None:
    """Keys that need a restart (``RELOAD``) cannot change through a reload."""
    for key, on_reload in RELOAD.items():
        if on_reload is not OnReload.RESTART:
            continue
        before, after = _value(running, key), _value(new, key)
        if before != after:
            raise ConfigError(
                f"{new.source}: {key}: changing it needs a restart (running: {_shown(before)}, "
                f"new: {_shown(after)})"
            )


def _value(config: Config, key: str) -> object:
    """The value of a key of a table (``server.state_dir``) in ``config``; a key that needs a
    restart is never in an array of tables."""
    value: object = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def _shown(value: object) -> str:
    return '""' if value is None else str(value)


@dataclass
class _MetricsSwitch:
    """A change of the metrics endpoint in progress: ``done()`` keeps the new one, ``undo()``
    goes back to the old one."""

    daemon: Daemon
    old: MetricsServer | None
    new: MetricsServer | None
    reserve_old: str | None  # the old address, when its endpoint was already stopped

    def done(self) -> None:
        if self.old is not None and self.new is not self.old and self.reserve_old is None:
            self.old.shutdown()
        self.daemon._metrics_handle = self.new

    def undo(self) -> None:
        if self.new is not None and self.new is not self.old:
            self.new.shutdown()
        if self.reserve_old is not None:
            self.daemon._metrics_handle = _serve_again(self.daemon.metrics, self.reserve_old)


def _serve_again(metrics: Metrics, listen: str) -> MetricsServer | None:
    """The endpoint on the address it had; None (logged) if that is taken meanwhile."""
    try:
        return metrics.serve(listen)
    except OSError as error:
        log.error("metrics endpoint: cannot listen on %s again: %s; not serving", listen, error)
        return None


def _metrics_error(config: Config, listen: str, error: OSError) -> ConfigError:
    return ConfigError(
        f"{config.source}: metrics.listen: cannot listen on {listen} ({error.strerror or error})"
    )


def _audit_targets(config: Config) -> str:
    targets = [str(config.audit.file)] if config.audit.file is not None else []
    if config.audit.stdout:
        targets.append("standard output")
    return ", ".join(targets) if targets else "nowhere (audit.file and audit.stdout are off)"


def block_handled_signals() -> None:
    """Block ``HANDLED_SIGNALS`` in the calling thread and every thread it starts from now on.

    Call it in the main thread before any other thread exists. They are not unblocked again: the
    process ends after ``Daemon.wait`` returns, and unblocking a SIGHUP that arrived during the
    drain would run its default action and kill the process with a failure status.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)


def run_daemon(config_path: Path) -> int:
    # First of all: the trust engine, gRPC and the metrics server start threads, and a thread
    # inherits the mask of the thread that creates it.
    block_handled_signals()
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(config_path)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    try:
        daemon = Daemon(config_path, config)
    except (AuditLogUnavailable, OSError) as error:
        log.error("cannot start: %s", error)
        return 1
    try:
        daemon.start()
    except OSError as error:
        log.error("cannot start: %s", error)
        return 1
    daemon.wait()
    return 0
