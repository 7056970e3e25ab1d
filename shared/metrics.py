"""Prometheus metrics: the names, and the proxy's counters and histograms.

The proxy workers count into `PROMETHEUS_MULTIPROC_DIR` (set by `llmp run` for every program),
so the api can serve `/metrics` summed over every worker, past ones included. Gauges of the
moment (upstream health, requests in flight, certificate expiry) are not counted here: the api
reads them from the heartbeats and certd's status when scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.analytics import RequestRow

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ProxyMetrics:
    """What the proxy counts, one call per request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "llmp_requests",
            "Requests through /v1, by upstream and status code",
            ["upstream", "status"],
            registry=registry,
        )
        self.failures = Counter(
            "llmp_request_failures",
            "Requests that did not complete, by reason",
            ["reason"],
            registry=registry,
        )
        self.duration = Histogram(
            "llmp_request_duration_seconds",
            "Time from request to the end of the answer",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_byte = Histogram(
            "llmp_time_to_first_byte_seconds",
            "Time from request to the upstream's first byte",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "llmp_tokens",
            "Tokens reported by upstreams, by kind (prompt or completion)",
            ["upstream", "kind"],
            registry=registry,
        )

    def observe(self, row: RequestRow, seconds: float) -> None:
        upstream = row.upstream or "none"
        self.requests.labels(upstream, str(row.status)).inc()
        if row.error is not None:
            reason = row.error.split(":", 1)[0]  # "upstream cut: ClientPayloadError" -> cut
            self.failures.labels(reason).inc()
        self.duration.labels(upstream).observe(seconds)
        if row.ttfb_ms is not None:
            self.first_byte.labels(upstream).observe(row.ttfb_ms / 1000)
        if row.prompt_tokens:
            self.tokens.labels(upstream, "prompt").inc(row.prompt_tokens)
        if row.completion_tokens:
            self.tokens.labels(upstream, "completion").inc(row.completion_tokens)
