"""The proxy's metrics: counted per request, handed to prometheus_client in batches, with the
result `observe` and `inc` one at a time would have given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from services.proxy.metrics import LATENCY_BUCKETS, ProxyMetrics
from shared.analytics import RequestRow

UPSTREAM = "http://a:1/v1"
# Bucket bounds exactly, either side of them, below the first and above the last.
SECONDS = [0.0, 0.005, 0.0050001, 0.01, 0.3, 1.0, 2.5, 299.9, 300.0, 300.1, 4000.0]


def row(status: int, seconds: float, **fields: object) -> RequestRow:
    r = RequestRow("id", "key", "user", 0, method="POST", path="/v1/chat/completions")
    r.upstream, r.status, r.ttfb_ms = UPSTREAM, status, seconds * 500
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text a scrape shows, without the creation times (which differ by construction)."""
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_metrics_batched_equal_one_observation_at_a_time():
    registry, direct = CollectorRegistry(), CollectorRegistry()
    batched = ProxyMetrics(registry)
    requests = Counter("llmp_requests", "", ["upstream", "status"], registry=direct)
    failures = Counter("llmp_request_failures", "", ["reason"], registry=direct)
    duration = Histogram(
        "llmp_request_duration_seconds", "", ["upstream"], buckets=LATENCY_BUCKETS, registry=direct
    )
    first_byte = Histogram(
        "llmp_time_to_first_byte_seconds",
        "",
        ["upstream"],
        buckets=LATENCY_BUCKETS,
        registry=direct,
    )
    tokens = Counter("llmp_tokens", "", ["upstream", "kind"], registry=direct)

    for seconds in SECONDS:
        r = row(200, seconds, prompt_tokens=7, completion_tokens=3)
        batched.observe(r, seconds)
        requests.labels(UPSTREAM, "200").inc()
        duration.labels(UPSTREAM).observe(seconds)
        first_byte.labels(UPSTREAM).observe(seconds / 2)
        tokens.labels(UPSTREAM, "prompt").inc(7)
        tokens.labels(UPSTREAM, "completion").inc(3)
    batched.observe(row(502, 0.2, error="upstream cut: reset"), 0.2)
    requests.labels(UPSTREAM, "502").inc()
    duration.labels(UPSTREAM).observe(0.2)
    first_byte.labels(UPSTREAM).observe(0.1)
    failures.labels("upstream cut").inc()
    batched.refused(401)
    batched.refused(401)
    requests.labels("none", "401").inc(2)

    batched.flush()
    batched.flush()  # nothing new: nothing added twice
    # Descriptions differ (the direct ones are empty): compare the samples only.
    samples = [line for line in exposition(registry) if line[0] != "#"]
    assert samples == [line for line in exposition(direct) if line[0] != "#"]


def test_metrics_reach_prometheus_client_only_when_flushed():
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    metrics.observe(row(200, 0.1), 0.1)
    assert (
        registry.get_sample_value("llmp_requests_total", {"upstream": UPSTREAM, "status": "200"})
        is None
    )
    metrics.flush()
    assert (
        registry.get_sample_value("llmp_requests_total", {"upstream": UPSTREAM, "status": "200"})
        == 1
    )
    assert (
        registry.get_sample_value("llmp_request_duration_seconds_count", {"upstream": UPSTREAM})
        == 1
    )
