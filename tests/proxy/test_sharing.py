"""Sharing a busy upstream between keys, with the proxy as it runs: several uvicorn workers,
clients in several processes or threads, every request on its own connection (so both workers
take part). Where a test needs requests to stay in flight, the upstream holds them until the test
releases them: what is in flight is known, not guessed from the clock."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from shared import analytics
from shared.apikeys import ApiKey, Limits, write_keys
from shared.heartbeat import read_heartbeats
from tests.conftest import eventually, free_port

pytestmark = pytest.mark.slow  # several proxy workers and client processes

ROOT = Path(__file__).resolve().parents[2]
BODY = {"model": "model-a", "messages": [{"role": "user", "content": "hi"}]}


class Workers:
    """`python -m services.proxy` with two workers, as supervisord runs it."""

    def __init__(self, tmp: Path, targets: str, **env: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.data = tmp / "data"
        (tmp / "env").write_text(
            "".join(
                f"{k}={v}\n"
                for k, v in {
                    "TARGET_URLS": targets,
                    "DATA_DIR": self.data,
                    "STATE_DIR": tmp / "var",
                    "PROXY_PORT": self.port,
                    "PROXY_WORKERS": 2,
                    "LOG_LEVEL": "WARNING",
                    **env,
                }.items()
            )
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.proxy"],
            cwd=ROOT,
            env={**os.environ, "ENV_FILE": str(tmp / "env")},
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        eventually(self.up, timeout=20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/v1/models", timeout=1).status_code == 401
        return False

    def keys(self, *keys: ApiKey) -> None:
        write_keys(self.data / "apikeys.json", list(keys))

    def rows(self) -> list[dict]:
        db = analytics.connect(self.data / "analytics.db")
        try:
            cursor = db.execute("SELECT * FROM requests ORDER BY id")
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor]
        finally:
            db.close()

    def queued(self) -> int:
        """Requests waiting in line in every worker, as their heartbeats last reported."""
        return sum(
            upstream["queued"]
            for beat in read_heartbeats(self.data / "run")
            for upstream in beat.get("upstreams", [])
        )

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(20)


@pytest.fixture
def workers(tmp_path):
    started = []

    def start(targets: str, **env: str) -> Workers:
        started.append(Workers(tmp_path, targets, **env))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def chat(url: str, key: str, say: str = "hi") -> httpx.Response:
    """A chat request on a new connection; `say` tells the upstream who asks."""
    return httpx.post(
        url + "/v1/chat/completions",
        json={**BODY, "messages": [{"role": "user", "content": say}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def models(url: str, key: str) -> int:
    return httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def fire(url: str, key: str, at: float, count: int, threads: int) -> list[tuple[int, dict, float]]:
    """From a separate process: at time `at`, `count` requests from `threads` threads, each on a
    new connection; returns (status, headers, seconds) for each."""

    def one(_: int) -> tuple[int, dict, float]:
        started = time.monotonic()
        r = chat(url, key)
        return r.status_code, dict(r.headers), time.monotonic() - started

    time.sleep(max(0.0, at - time.time()))
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def processes(count: int):
    return multiprocessing.get_context("spawn").Pool(count)


def worker_ids(rows: list[dict]) -> set[str]:
    return {row["request_id"][:10] for row in rows}  # each worker's ids have their own prefix


def test_requests_per_minute_hold_exactly_across_workers_and_processes(upstreams, workers):
    a = upstreams("a", ["model-a"])
    running = workers(a.url)
    key = dataclasses.replace(ApiKey.new("rpm"), limits=Limits(requestsPerMinute=30))
    running.keys(key)
    eventually(lambda: chat(running.url, key.key).status_code == 200)
    started = time.time()
    with processes(3) as pool:
        results = pool.starmap(fire, [(running.url, key.key, started + 1.5, 20, 10)] * 3)
    elapsed = time.time() - started
    answers = [r for batch in results for r in batch]
    ok = [r for r in answers if r[0] == 200]
    refused = [r for r in answers if r[0] == 429]
    assert len(ok) + len(refused) == 60
    # 29 left after the first request, plus one more every 2 s that passed.
    assert 29 <= len(ok) <= 29 + int(elapsed / 2) + 1, (len(ok), elapsed)
    _, headers, _ = refused[0]
    assert headers["x-ratelimit-limit-requests"] == "30"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 2
    assert {h["x-ratelimit-limit-requests"] for _, h, _ in ok} == {"30"}
    eventually(lambda: len(worker_ids(running.rows())) == 2)  # both counted on one board
    # The first refusal's Retry-After is stale by now (later requests took what drained since):
    # once what drained meanwhile is taken, a refusal says when the next request may come, and
    # then it is served.
    for _ in range(5):
        [(status, now, _)] = fire(running.url, key.key, 0, 1, 1)
        if status == 429:
            break
    assert status == 429 and 0 < int(now["retry-after-ms"]) <= 2000
    time.sleep(int(now["retry-after-ms"]) / 1000 + 0.1)
    [(status, _, _)] = fire(running.url, key.key, 0, 1, 1)
    assert status == 200  # lifted when the window has passed


def test_tokens_per_minute_hold_across_workers_and_processes(upstreams, workers):
    a = upstreams("a", ["model-a"])  # every answer reports 7 + 3 tokens
    running = workers(a.url)
    key = dataclasses.replace(ApiKey.new("tpm"), limits=Limits(tokensPerMinute=1000))
    running.keys(key)
    eventually(lambda: fire(running.url, key.key, 0, 1, 1)[0][0] == 200)
    started = time.time()
    with processes(3) as pool:
        results = pool.starmap(fire, [(running.url, key.key, started + 1.5, 60, 3)] * 3)
    elapsed = time.time() - started
    statuses = [status for batch in results for status, _, _ in batch]
    ok = statuses.count(200)
    # 99 answers fit after the first; each of the 9 clients may have one more in flight when
    # the bucket fills (tokens are known only at the end); 1000 tokens drain per minute.
    assert 99 <= ok <= 99 + 9 + elapsed * 1000 / 60 / 10 + 1, (ok, elapsed)
    assert statuses.count(429) == 180 - ok
    eventually(lambda: len(worker_ids(running.rows())) == 2)  # rows come in batches


def test_concurrent_requests_hold_exactly_across_workers(upstreams, workers):
    a = upstreams("a", ["model-a"], held=True)
    running = workers(a.url)
    key = dataclasses.replace(ApiKey.new("conc"), limits=Limits(maxConcurrent=3))
    running.keys(key)
    eventually(lambda: models(running.url, key.key) == 200)

    def burst() -> set[str]:
        """Twelve requests at once: exactly three reach the upstream, nine are refused.
        Returns the workers that answered (which takes them is the kernel's choice)."""
        a.peak = 0
        with ThreadPoolExecutor(12) as pool:
            answers = [pool.submit(chat, running.url, key.key) for _ in range(12)]
            # The upstream holds what reaches it: every request is either there or answered.
            eventually(lambda: a.active + sum(f.done() for f in answers) == 12, timeout=60)
            in_flight = a.active
            a.release(in_flight)
            results = [f.result() for f in answers]
        statuses = Counter(r.status_code for r in results)
        assert in_flight == 3 and statuses == {200: 3, 429: 9} and a.peak == 3
        refused = next(r for r in results if r.status_code == 429)
        assert refused.headers["retry-after"] == "1"
        return {r.headers["x-request-id"][:10] for r in results}  # a prefix per worker

    # Exact in every burst; the test wants one in which both workers took part, and a busy
    # machine may give a burst to one worker alone.
    answered_by = [burst()]
    while len(answered_by[-1]) < 2 and len(answered_by) < 8:
        answered_by.append(burst())
    assert len(answered_by[-1]) == 2, answered_by
    a.release()
    assert chat(running.url, key.key).status_code == 200  # the slots were given back


def test_two_heavy_keys_share_a_busy_upstream_and_a_light_key_is_not_starved(upstreams, workers):
    a = upstreams("a", ["model-a"], held=True)
    running = workers(f"{a.url}|concurrency=2", QUEUE_TIMEOUT="600")
    heavy1, heavy2, light = (ApiKey.new(name) for name in ("heavy1", "heavy2", "light"))
    running.keys(heavy1, heavy2, light)
    eventually(lambda: models(running.url, light.key) == 200)
    with ThreadPoolExecutor(18) as pool:
        heavy = [heavy1, heavy2] * 8
        answers = [pool.submit(chat, running.url, k.key, k.username) for k in heavy]
        # Two at the upstream, fourteen in line (in both workers), before the light key asks.
        eventually(lambda: a.active == 2 and running.queued() == 14, timeout=60)
        answers += [pool.submit(chat, running.url, light.key, "light") for _ in range(2)]
        eventually(lambda: running.queued() == 16, timeout=60)
        for turn in range(16):  # one answer at a time: each frees one turn
            a.release()
            eventually(lambda turn=turn: len(a.arrivals) == 3 + turn, timeout=30)  # type: ignore[misc]
        a.release(2)
        statuses = [f.result().status_code for f in answers]
    assert statuses == [200] * 18 and a.peak == 2
    # First come, first served, the light requests would come last (and the first six turns
    # would all go to one heavy key). In turn, each key has one in every three.
    assert Counter(a.arrivals[2:8]) == {"heavy1": 2, "heavy2": 2, "light": 2}, a.arrivals
    # The waits show in the analytics (rows are written in batches).
    eventually(lambda: sum((r["queue_ms"] or 0) > 0 for r in running.rows()) == 16)


def test_a_change_to_a_key_reaches_every_worker_within_a_second(upstreams, workers):
    a = upstreams("a", ["model-a"])
    running = workers(a.url)
    key = ApiKey.new("live")
    running.keys(key)
    eventually(lambda: fire(running.url, key.key, 0, 1, 1)[0][0] == 200)

    def a_second_later(changed: ApiKey) -> list[tuple[int, dict, float]]:
        """Every answer from a second after the change on, until both workers have answered."""
        running.keys(changed)
        time.sleep(1.0)
        since = time.time() * 1000

        def workers_since() -> int:
            return len(worker_ids([r for r in running.rows() if r["start_ms"] >= since]))

        answers: list[tuple[int, dict, float]] = []
        while workers_since() < 2 and len(answers) < 400:
            answers += fire(running.url, key.key, 0, 20, 10)
        assert answers and workers_since() == 2
        return answers

    limited = a_second_later(dataclasses.replace(key, limits=Limits(requestsPerMinute=100_000)))
    assert {h.get("x-ratelimit-limit-requests") for _, h, _ in limited} == {"100000"}
    disabled = a_second_later(dataclasses.replace(key, enabled=False))
    assert {status for status, _, _ in disabled} == {401}
