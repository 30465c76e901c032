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

import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
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
        """Re-read the config; keep the old one if the new one is not valid."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
            _check_reloadable(self.config, config)
            # Builds the new config's formats (its Notation trust policy and stores) before
            # anything changes: a broken one leaves the running config in place.
            self.policy.reconfigure(config)
        except ConfigError as error:
            log.error("config reload refused, keeping the running config: %s", error)
            self.metrics.record_reload(success=False)
            self.engine.reopen_audit()
            self.notifier.ready()
            return False
        self.expiry.warning_days = config.server.expiry_warning_days
        self.config = config
        _log_config_warnings(config)
        self.engine.reopen_audit()
        self.metrics.record_reload(success=True)
        log.info("config reloaded from %s", self.config_path)
        self.notifier.ready()
        return True

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


def _check_reloadable(running: Config, new: Config) -> None:
    """Settings that need a restart cannot change through a reload."""
    for name in ("socket", "verifier_socket", "containerd", "containerd_namespace", "state_dir"):
        if getattr(running.server, name) != getattr(new.server, name):
            raise ConfigError(
                f"{new.source}: server.{name}: changing it needs a restart "
                f"(running: {getattr(running.server, name)}, new: {getattr(new.server, name)})"
            )


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
