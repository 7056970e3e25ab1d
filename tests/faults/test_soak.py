"""A bounded soak through nginx: many streaming and non-streaming clients at once for
LLMP_SOAK_SECONDS (20 by default; `make soak` runs several minutes).

No request may fail, no program may grow in memory or open files between the start (after a
warm-up at the same load) and the end, and analytics must hold exactly one row per request.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from typing import Any

import httpx

from shared.apikeys import ApiKey
from tests.conftest import eventually
from tests.faults.measure import snapshot
from tests.stack.conftest import Stack

SECONDS = float(os.environ.get("LLMP_SOAK_SECONDS", "20"))
WARM_UP = 4.0
STREAMING, PLAIN = 12, 12
# Allowed growth between start and end, per program. What a leak of a few hundred bytes per
# request would exceed over the run: each soak sends thousands of requests.
RSS_SLACK = 12 * 1024 * 1024
RSS_SLACK_RATIO = 0.10
# Kept-alive connections (nginx to the proxy, the proxy to upstreams) come and go with the load:
# at most one more of each per client between two moments. A leak of one descriptor in a
# thousand requests exceeds this in a soak of a minute or more.
FD_SLACK = 2 * (STREAMING + PLAIN)


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.failures: list[str] = []
        self.latencies: list[float] = []


async def client(
    url: str, key: ApiKey, stream: bool, until: float, tally: Tally, limits: httpx.Limits
) -> None:
    body = {"model": "model-a", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {key.key}"}
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
        while time.monotonic() < until:
            tally.sent += 1
            t0 = time.monotonic()
            try:
                if stream:
                    async with http.stream(
                        "POST", "/v1/chat/completions", json=body, headers=headers
                    ) as r:
                        text = b"".join([piece async for piece in r.aiter_raw()])
                    ok = r.status_code == 200 and text.endswith(b"data: [DONE]\n\n")
                else:
                    r = await http.post("/v1/chat/completions", json=body, headers=headers)
                    ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
                if not ok:
                    tally.failures.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                tally.failures.append(repr(exc))
            tally.latencies.append(time.monotonic() - t0)


async def load(url: str, key: ApiKey, seconds: float) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    await asyncio.gather(
        *(client(url, key, True, until, tally, limits) for _ in range(STREAMING)),
        *(client(url, key, False, until, tally, limits) for _ in range(PLAIN)),
    )
    return tally


def rows_for(stack: Stack, key: ApiKey) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(stack.data / "analytics.db", timeout=10)
    try:
        return db.execute(
            "SELECT status, error, stream, end_ms FROM requests"
            " WHERE key_id = ? AND path = '/v1/chat/completions'",
            (key.id,),
        ).fetchall()
    finally:
        db.close()


def test_soak_through_nginx_loses_nothing_and_grows_nothing(load_stack, load_key):
    stack, key = load_stack, load_key
    assert stack.process is not None
    warm = asyncio.run(load(stack.url, key, WARM_UP))
    start = snapshot(stack.process.pid)
    soak = asyncio.run(load(stack.url, key, SECONDS))
    time.sleep(1.0)  # let idle timers settle, as at the start
    end = snapshot(stack.process.pid)

    sent = warm.sent + soak.sent
    assert not warm.failures and not soak.failures, (warm.failures + soak.failures)[:5]
    assert soak.sent > 20 * SECONDS, soak.sent
    found = eventually(lambda: (rows := rows_for(stack, key)) and len(rows) >= sent and rows, 10)
    assert len(found) == sent
    assert {(status, error) for status, error, _, _ in found} == {(200, None)}
    assert all(end_ms is not None for *_, end_ms in found)

    report = []
    for pid, (name, rss, fds) in sorted(start.items()):
        assert pid in end, f"{name} ({pid}) is gone"
        _, rss_end, fds_end = end[pid]
        report.append(f"{name}: rss {rss >> 20}->{rss_end >> 20} MB, fds {fds}->{fds_end}")
    summary = (
        f"{soak.sent} requests in {SECONDS:.0f}s, {len(soak.failures)} errors, "
        f"p99 {sorted(soak.latencies)[int(len(soak.latencies) * 0.99)] * 1000:.0f} ms\n"
        + "\n".join(report)
    )
    print(summary)
    for pid, (_, rss, fds) in start.items():
        _, rss_end, fds_end = end[pid]
        assert rss_end <= rss * (1 + RSS_SLACK_RATIO) + RSS_SLACK, summary
        assert fds_end <= fds + FD_SLACK, summary
