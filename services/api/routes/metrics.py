"""`GET /metrics`: Prometheus metrics of the whole stack (nginx allows it from admin ranges only).

Counters and histograms come from the proxy workers' multiprocess files; gauges of the moment
are read when scraped: each program's heartbeat, each upstream's health, models and requests in
flight, and each certificate's expiry from certd's status.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from services.api.deps import SettingsDep
from shared import status
from shared.settings import Settings

router = APIRouter(include_in_schema=False)


class StackCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        report = status.status_report(self.settings)
        up = GaugeMetricFamily("llmp_program_up", "1 if the program is up", labels=["program"])
        for program, state in report["programs"].items():
            up.add_metric([program], 1.0 if state["ok"] else 0.0)
        yield up
        healthy = GaugeMetricFamily(
            "llmp_upstream_healthy", "1 if the upstream answers", labels=["upstream"]
        )
        in_flight = GaugeMetricFamily(
            "llmp_upstream_in_flight", "Requests in flight to the upstream", labels=["upstream"]
        )
        queued = GaugeMetricFamily(
            "llmp_upstream_queued",
            "Requests waiting in the upstream's fair queue",
            labels=["upstream"],
        )
        models = GaugeMetricFamily(
            "llmp_upstream_models", "Models the upstream lists", labels=["upstream"]
        )
        for upstream in report["programs"]["proxy"]["upstreams"]:
            healthy.add_metric([upstream["url"]], 1.0 if upstream["healthy"] else 0.0)
            in_flight.add_metric([upstream["url"]], float(upstream["in_flight"]))
            queued.add_metric([upstream["url"]], float(upstream.get("queued", 0)))
            models.add_metric([upstream["url"]], float(len(upstream["models"])))
        yield from (healthy, in_flight, queued, models)
        expiry = GaugeMetricFamily(
            "llmp_certificate_expiry_timestamp_seconds",
            "When the certificate expires (Unix time)",
            labels=["name"],
        )
        for certificate in report["certificates"]:
            if certificate.get("notAfter"):
                moment = datetime.fromisoformat(certificate["notAfter"].replace("Z", "+00:00"))
                expiry.add_metric([certificate["name"]], moment.timestamp())
        yield expiry


@router.get("/metrics")
def metrics(settings: SettingsDep) -> Response:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    registry.register(StackCollector(settings))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
