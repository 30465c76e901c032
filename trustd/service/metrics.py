"""Prometheus metrics of one trustd process, on a registry of its own.

A private ``CollectorRegistry`` keeps trustd's metrics apart from anything else in the process
(and lets tests build as many ``Metrics`` as they like). ``observe`` is a ``PolicyEngine``
observer; the trust engine and the daemon report cache lookups and reloads through
``record_cache`` and ``record_reload``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from trustd.errors import TrustError
from trustd.formats.notary.lifetime import Expiry, ExpiryKind
from trustd.net.listen import InvalidListenAddress, parse_listen_address
from trustd.service.metrics_server import MetricsServer

if TYPE_CHECKING:
    from trustd.policy.engine import Decision

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
UNIX_PREFIX = "unix:"
# From a cached answer to a slow Notary server near its timeout.
RESOLUTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_VERIFYING_MODES = frozenset({"enforce", "audit"})
# The format label of decisions no signature was asked for (exempt, off, a bad reference).
NO_FORMAT = "none"


class Metrics:
    """trustd's counters and histograms; ``render()`` or ``serve()`` them."""

    def __init__(self, trustd_version: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # memory, CPU, open fds of the daemon
        PlatformCollector(registry=self.registry)
        # The signer is in the audit record, not here: one series per signer would grow
        # without bound.
        self.decisions = Counter(
            "trustd_decisions",
            "Policy decisions, by CRI action, verdict, rule mode and signature format.",
            ["action", "verdict", "mode", "format"],
            registry=self.registry,
        )
        self.resolution_seconds = Histogram(
            "trustd_resolution_seconds",
            "Time to decide an image that had to be verified (enforce and audit rules).",
            buckets=RESOLUTION_BUCKETS,
            registry=self.registry,
        )
        self.notary_errors = Counter(
            "trustd_notary_errors",
            "Trust failures, by error class (NotaryUnavailable, TagNotSigned, ...).",
            ["kind"],
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "trustd_cache_hits",
            "Trust data lookups answered from the verified cache.",
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "trustd_cache_misses",
            "Trust data lookups that needed a refresh from the Notary server.",
            registry=self.registry,
        )
        self.cached_decisions = Counter(
            "trustd_cached_trust_decisions",
            "Decisions made from trust data cached on this node while Notary was unreachable "
            '(policy offline = "cached"), by verdict.',
            ["verdict"],
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "trustd_config_reloads",
            "Configuration reloads (SIGHUP), by result.",
            ["result"],
            registry=self.registry,
        )
        for result in ("success", "failure"):  # both series exist from the start, at zero
            self.config_reloads.labels(result=result)
        self.info = Gauge(
            "trustd_info",
            "Always 1; the label carries the running trustd version.",
            ["version"],
            registry=self.registry,
        )
        self.info.labels(version=trustd_version or _installed_version()).set(1)
        self.expiry = ExpiryGauges()
        self.registry.register(self.expiry)

    def observe(self, decision: Decision) -> None:
        self.decisions.labels(
            action=str(decision.action),
            verdict=str(decision.verdict),
            mode=decision.mode,
            format=decision.format or NO_FORMAT,
        ).inc()
        if decision.mode in _VERIFYING_MODES:
            self.resolution_seconds.observe(decision.latency_seconds)
        if isinstance(decision.error, TrustError):
            self.notary_errors.labels(kind=type(decision.error).__name__).inc()
        if decision.cached_age is not None:
            self.cached_decisions.labels(verdict=str(decision.verdict)).inc()

    def record_cache(self, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).inc()

    def record_reload(self, success: bool) -> None:
        self.config_reloads.labels(result="success" if success else "failure").inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """Every metric in the format the ``Accept`` header asks for: (body, Content-Type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def serve(self, listen: str) -> MetricsServer:
        """Serve ``/metrics`` on ``host:port`` (``[v6]:port``; ``:port`` is 127.0.0.1) or on
        ``unix:/absolute/path``."""
        if listen.startswith(UNIX_PREFIX):
            handle = MetricsServer.unix(unix_listen_path(listen), self.exposition)
            log.info("serving metrics on %s (path /metrics)", handle.url_host)
            return handle
        host, port = parse_listen(listen)
        handle = MetricsServer.tcp(host, port, self.exposition)
        log.info("serving metrics on http://%s/metrics", handle.url_host)
        return handle


class ExpiryGauges(Collector):
    """Seconds until each held role and root certificate expires, per GUN, as of the scrape.

    ``trustd_trust_expiry_seconds{gun, role}`` and
    ``trustd_root_certificate_expiry_seconds{gun, key_id}`` (the key ID as root.json lists it);
    negative once expired. Computed when scraped, so the figure is exact whenever it is read.
    """

    ROLE_METRIC = "trustd_trust_expiry_seconds"
    CERTIFICATE_METRIC = "trustd_root_certificate_expiry_seconds"

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._by_gun: dict[str, tuple[Expiry, ...]] = {}

    def set_repository(self, gun: str, expiries: Iterable[Expiry]) -> None:
        with self._lock:
            self._by_gun[gun] = tuple(expiries)

    def retain(self, guns: Iterable[str]) -> None:
        """Keep only these GUNs (a forgotten repository's figures go away)."""
        keep = set(guns)
        with self._lock:
            for gun in [gun for gun in self._by_gun if gun not in keep]:
                del self._by_gun[gun]

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._clock()
        roles, certificates = self._families()
        with self._lock:
            held = sorted(self._by_gun.items())
        for gun, expiries in held:
            for item in expiries:
                family = roles if item.kind is ExpiryKind.ROLE else certificates
                family.add_metric([gun, item.name], item.seconds_left(now))
        yield roles
        yield certificates

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                self.ROLE_METRIC,
                "Seconds until the verified metadata of a role held for a repository expires.",
                labels=["gun", "role"],
            ),
            GaugeMetricFamily(
                self.CERTIFICATE_METRIC,
                "Seconds until a root key certificate of a repository expires (notAfter).",
                labels=["gun", "key_id"],
            ),
        )


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9879"``, ``"[::1]:9879"``, ``":9879"`` -> (host, port); port 0 picks one."""
    try:
        return parse_listen_address(listen, default_host=DEFAULT_HOST, any_port=True)
    except InvalidListenAddress as error:
        raise ValueError(f"metrics listen address {listen!r}: {error}") from None


def unix_listen_path(listen: str) -> Path:
    """``"unix:/run/trustd/metrics.sock"`` -> the socket's path; it must be absolute."""
    text = listen.removeprefix(UNIX_PREFIX)
    path = Path(text)
    if not path.is_absolute() or text.endswith("/") or path.name in ("", ".", ".."):
        raise ValueError(f"metrics listen address {listen!r}: unix: needs an absolute file path")
    return path


def _installed_version() -> str:
    try:
        return version("trustd")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"
