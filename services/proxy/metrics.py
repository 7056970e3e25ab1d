"""Prometheus metrics: the names, and the proxy's counters and histograms.

The proxy workers count into `PROMETHEUS_MULTIPROC_DIR` (set by `llmp run` for every program),
so the api can serve `/metrics` summed over every worker, past ones included. Gauges of the
moment (upstream health, requests in flight, certificate expiry) are not counted here: the api
reads them from the heartbeats and certd's status when scraped.

A request is counted in plain Python (`observe`, a few dictionary updates), and the counts reach
prometheus_client's values in `flush`, which the proxy calls every FLUSH_INTERVAL seconds and
at shutdown: each update of a multiprocess value takes a lock, a `getpid()` and a write to its
file, and a request updated seven of them (13 µs, as much as the rest of its bookkeeping
together). A scrape therefore sees a request up to FLUSH_INTERVAL seconds late; the counts are
exact.
"""

from __future__ import annotations

import bisect
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.analytics import RequestRow

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FLUSH_INTERVAL = 1.0  # seconds


class _Observations:
    """A histogram's observations since the last flush: the count per bucket and the sum."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        # The first bucket whose bound is >= seconds, as `Histogram.observe` picks it.
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def flush(self, child: Any) -> None:
        """Add them to the histogram `child` (a labelled Histogram) as `observe` would have:
        prometheus_client has no call that observes many values at once, so this writes its
        bucket and sum values (`test_metrics` holds the result to `observe`'s)."""
        for index, count in enumerate(self.buckets):
            if count:
                child._buckets[index].inc(count)
                self.buckets[index] = 0
        child._sum.inc(self.total)
        self.count, self.total = 0, 0.0


class _Series:
    """What one (upstream, status) counted since the last flush."""

    __slots__ = ("completion", "duration", "first_byte", "prompt", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.duration = _Observations()
        self.first_byte = _Observations()
        self.prompt = 0
        self.completion = 0


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
        self._series: dict[tuple[str | None, int], _Series] = {}
        self._failures: dict[str, int] = {}

    def refused(self, status: int) -> None:
        """A request refused before it had a key (no key, a wrong key, an unknown path)."""
        self._count(None, status).requests += 1

    def observe(self, row: RequestRow, seconds: float) -> None:
        series = self._count(row.upstream, row.status)
        series.requests += 1
        series.duration.add(seconds)
        if row.error is not None:
            reason = row.error.split(":", 1)[0]  # "upstream cut: ClientPayloadError" -> cut
            self._failures[reason] = self._failures.get(reason, 0) + 1
        if row.ttfb_ms is not None:
            series.first_byte.add(row.ttfb_ms / 1000)
        if row.prompt_tokens:
            series.prompt += row.prompt_tokens
        if row.completion_tokens:
            series.completion += row.completion_tokens

    def _count(self, upstream: str | None, status: int) -> _Series:
        series = self._series.get((upstream, status))
        if series is None:
            series = self._series[upstream, status] = _Series()
        return series

    def flush(self) -> None:
        """Hand what was counted since the last flush to prometheus_client."""
        for (upstream, status), series in self._series.items():
            if not series.requests:
                continue
            name = upstream or "none"
            self.requests.labels(name, str(status)).inc(series.requests)
            series.requests = 0
            if series.duration.count:
                series.duration.flush(self.duration.labels(name))
            if series.first_byte.count:
                series.first_byte.flush(self.first_byte.labels(name))
            if series.prompt:
                self.tokens.labels(name, "prompt").inc(series.prompt)
                series.prompt = 0
            if series.completion:
                self.tokens.labels(name, "completion").inc(series.completion)
                series.completion = 0
        for reason, count in self._failures.items():
            self.failures.labels(reason).inc(count)
        self._failures.clear()
