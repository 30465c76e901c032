from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trustd.errors import AuthenticationFailed, NotaryUnavailable, TagNotSigned
from trustd.policy.engine import Action, Decision, Verdict
from trustd.service.metrics import Metrics, MetricsServer, parse_listen


def decision(
    verdict: Verdict = Verdict.ALLOW,
    mode: str = "enforce",
    action: Action = Action.PULL,
    error: Exception | None = None,
    latency: float = 0.02,
    format: str = "notary-v1",
) -> Decision:
    return Decision(
        "nginx:1.25",
        action,
        verdict,
        mode,
        "reason",
        error=error,  # type: ignore[arg-type]
        latency_seconds=latency,
        format=format,
    )


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics.render()).get((name, tuple(sorted(labels.items()))))


def test_decisions_are_counted_by_action_verdict_mode_and_format() -> None:
    metrics = Metrics()
    metrics.observe(decision())
    metrics.observe(decision())
    metrics.observe(decision(Verdict.DENY, error=TagNotSigned("tag x is not signed")))
    metrics.observe(decision(Verdict.AUDIT_FAIL, "audit", Action.STATUS, NotaryUnavailable("x")))
    metrics.observe(decision(format="notation"))
    metrics.observe(decision(Verdict.DENY, format="notary-v1|notation"))
    metrics.observe(decision(mode="exempt", format=""))
    name = "trustd_decisions_total"
    notary = {"format": "notary-v1"}
    assert value(metrics, name, action="pull", verdict="allow", mode="enforce", **notary) == 2
    assert value(metrics, name, action="pull", verdict="deny", mode="enforce", **notary) == 1
    assert value(metrics, name, action="status", verdict="audit-fail", mode="audit", **notary) == 1
    assert value(metrics, name, action="pull", verdict="allow", mode="enforce", format="notation")
    either = {"format": "notary-v1|notation"}
    assert value(metrics, name, action="pull", verdict="deny", mode="enforce", **either) == 1
    assert value(metrics, name, action="pull", verdict="allow", mode="exempt", format="none") == 1


def test_trust_failures_are_counted_by_error_class() -> None:
    metrics = Metrics()
    metrics.observe(decision(Verdict.DENY, error=NotaryUnavailable("down")))
    metrics.observe(decision(Verdict.DENY, error=AuthenticationFailed("refused")))
    metrics.observe(decision(Verdict.DENY, error=AuthenticationFailed("refused")))
    metrics.observe(decision(Verdict.DENY, "invalid", error=ValueError("not a trust error")))
    name = "trustd_notary_errors_total"
    assert value(metrics, name, kind="NotaryUnavailable") == 1
    assert value(metrics, name, kind="AuthenticationFailed") == 2
    assert value(metrics, name, kind="ValueError") is None


def test_resolution_histogram_only_counts_verified_decisions() -> None:
    metrics = Metrics()
    metrics.observe(decision(latency=0.003))
    metrics.observe(decision(mode="audit", latency=7.0))
    metrics.observe(decision(mode="off", latency=0.0))
    metrics.observe(decision(mode="exempt", latency=0.0))
    name = "trustd_resolution_seconds_bucket"
    assert value(metrics, "trustd_resolution_seconds_count") == 2
    assert value(metrics, name, le="0.001") == 0
    assert value(metrics, name, le="0.005") == 1
    assert value(metrics, name, le="5.0") == 1
    assert value(metrics, name, le="10.0") == 2
    assert value(metrics, "trustd_resolution_seconds_sum") == pytest.approx(7.003)


def test_cache_and_reload_counters() -> None:
    metrics = Metrics()
    assert value(metrics, "trustd_config_reloads_total", result="failure") == 0
    metrics.record_cache(hit=True)
    metrics.record_cache(hit=True)
    metrics.record_cache(hit=False)
    metrics.record_reload(success=True)
    metrics.record_reload(success=False)
    metrics.record_reload(success=False)
    assert value(metrics, "trustd_cache_hits_total") == 2
    assert value(metrics, "trustd_cache_misses_total") == 1
    assert value(metrics, "trustd_config_reloads_total", result="success") == 1
    assert value(metrics, "trustd_config_reloads_total", result="failure") == 2


def test_info_carries_the_version() -> None:
    assert value(Metrics("1.2.3"), "trustd_info", version="1.2.3") == 1
    installed = [key for key in samples(Metrics().render()) if key[0] == "trustd_info"]
    assert len(installed) == 1  # the installed version, or "unknown" in a bare source tree


def test_registry_is_private() -> None:
    first, second = Metrics(), Metrics()  # a shared registry would refuse the second
    first.observe(decision())
    assert (
        value(
            second,
            "trustd_decisions_total",
            action="pull",
            verdict="allow",
            mode="enforce",
            format="notary-v1",
        )
        is None
    )
    assert b"trustd_" not in generate_latest(REGISTRY)


@pytest.fixture
def served() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics("9.9.9")
    handle = metrics.serve("127.0.0.1:0")
    yield metrics, handle
    handle.shutdown()


def test_scrape_the_http_endpoint(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, handle = served
    metrics.observe(decision(Verdict.DENY, error=TagNotSigned("no")))
    assert handle.host == "127.0.0.1"
    assert handle.port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{handle.port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        found = samples(answer.read())
    assert found[("trustd_info", (("version", "9.9.9"),))] == 1
    labels = (("action", "pull"), ("format", "notary-v1"), ("mode", "enforce"), ("verdict", "deny"))
    key = ("trustd_decisions_total", labels)
    assert found[key] == 1
    assert found[("trustd_notary_errors_total", (("kind", "TagNotSigned"),))] == 1
    assert ("process_open_fds", ()) in found


def test_shutdown_frees_the_port(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, handle = served
    port = handle.port
    handle.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    again = metrics.serve(f"127.0.0.1:{port}")  # the port can be bound again at once
    assert again.port == port
    again.shutdown()
    handle.shutdown()  # a second shutdown is harmless


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9879", ("127.0.0.1", 9879)),
        (":9879", ("127.0.0.1", 9879)),
        ("[::1]:9879", ("::1", 9879)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9879", "::1:9879", "[nothost]:1", "host:port", "h:70000"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)
