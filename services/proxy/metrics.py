"""Prometheus metrics: the names, and the proxy's counters and histograms.

The proxy workers count into `PROMETHEUS_MULTIPROC_DIR` (set by `llmp run` for every program),
so the api can serve `/metrics` summed over every worker, past ones included. Gauges of the
moment (upstream health, requests in flight, certificate expiry) are not counted here: the api
reads them from the heartbeats and certd's status when scraped.
"""

from __future__ import annotations

from typing import Any

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

        # The labelled series of each (upstream, status): looked up once, not per request.
        self._series: dict[tuple[str | None, int], tuple[Any, ...]] = {}

    def _labelled(self, upstream: str | None, status: int) -> tuple[Any, ...]:
        name = upstream or "none"
        series = (
            self.requests.labels(name, str(status)),
            self.duration.labels(name),
            self.first_byte.labels(name),
            self.tokens.labels(name, "prompt"),
            self.tokens.labels(name, "completion"),
        )
        self._series[upstream, status] = series
        return series

    def refused(self, status: int) -> None:
        """A request refused before it had a key (no key, a wrong key, an unknown path)."""
        self.requests.labels("none", str(status)).inc()

    def observe(self, row: RequestRow, seconds: float) -> None:
        series = self._series.get((row.upstream, row.status)) or self._labelled(
            row.upstream, row.status
        )
        requests, duration, first_byte, prompt, completion = series
        requests.inc()
        duration.observe(seconds)
        if row.error is not None:
            reason = row.error.split(":", 1)[0]  # "upstream cut: ClientPayloadError" -> cut
            self.failures.labels(reason).inc()
        if row.ttfb_ms is not None:
            first_byte.observe(row.ttfb_ms / 1000)
        if row.prompt_tokens:
            prompt.inc(row.prompt_tokens)
        if row.completion_tokens:
            completion.inc(row.completion_tokens)
