"""Three replicas sharing PostgreSQL (keys) and Redis (REDIS_URL: limits, budgets and fair
queues): a key's limits and budget and an upstream's cap hold for all of them together, as one
machine holds them for its workers.

Each replica's proxy runs as deployed (`python -m services.proxy`, two uvicorn workers, its own
data folder and port); requests are spread over the replicas in turn. The upstreams are fake
OpenAI servers in the test's process that count what they are sent at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.apikeys import ApiKey, Budget
from shared.heartbeat import read_heartbeats
from shared.pg.keys import PgKeyAdmin
from tests.conftest import eventually
from tests.proxy.test_sharing import Workers
from tests.upstream import FakeUpstream

pytestmark = pytest.mark.slow

REPLICAS = 3
METERED = 10  # the requests a minute the upstream "metered" takes


class Trio:
    def __init__(self, base: Path, database_url: str, redis_url: str) -> None:
        self.admin = PgKeyAdmin(database_url)
        self.fast = FakeUpstream("fast", ["fast"]).start()
        self.capped = FakeUpstream("capped", ["capped"], delay=0.02).start()
        self.single = FakeUpstream("single", ["single"], delay=0.05).start()
        self.held = FakeUpstream("held", ["held"], held=True).start()
        self.metered = FakeUpstream("metered", ["metered"]).start()
        # The upstreams as data/upstreams.json says them (where a request limit can be set).
        fleet = {
            "version": 1,
            "upstreams": [
                {"id": "fast", "url": self.fast.url},
                {"id": "capped", "url": self.capped.url, "concurrency": 4},
                {"id": "single", "url": self.single.url, "concurrency": 1},
                {"id": "held", "url": self.held.url, "concurrency": 2},
                {"id": "metered", "url": self.metered.url, "requestsPerMinute": METERED},
            ],
        }
        targets = self.fast.url  # what the file replaces
        self.replicas: list[Workers] = []
        for n in range(REPLICAS):
            (base / str(n) / "data").mkdir(parents=True)
            (base / str(n) / "data" / "upstreams.json").write_text(json.dumps(fleet))
            self.replicas.append(
                Workers(
                    base / str(n),
                    targets,
                    DATABASE_URL=database_url,
                    REDIS_URL=redis_url,
                    LOG_LEVEL="ERROR",
                    QUEUE_LIMIT="500",
                )
            )

    def key(self, name: str, **limits: int) -> ApiKey:
        key = self.admin.create(name)
        if limits:
            changed = self.admin.update(key.id, {"limits": dict(limits)})
            assert changed is not None
            key = changed
        return key

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.process.poll() is None:  # not the one a test killed
                replica.stop()
        for upstream in (self.fast, self.capped, self.single, self.held, self.metered):
            upstream.stop()


@pytest.fixture(scope="module")
def trio(tmp_path_factory, postgres, redis_server) -> Iterator[Trio]:
    redis_server.flush()
    started = Trio(tmp_path_factory.mktemp("trio"), postgres.new_database(), redis_server.url)
    try:
        yield started
    finally:
        started.stop()


async def chat(
    client: httpx.AsyncClient, url: str, key: ApiKey, model: str, text: str = "hi"
) -> httpx.Response:
    return await client.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {key.key}"},
    )


async def served(client: httpx.AsyncClient, trio: Trio, key: ApiKey, model: str = "") -> None:
    """Until every replica knows the key (each loads it from the database on its own), and
    lists `model` (each asks the upstreams for their models); the model list counts against
    no limit."""
    for replica in trio.replicas:
        deadline = time.monotonic() + 30
        headers = {"Authorization": f"Bearer {key.key}"}
        while True:
            listed = await client.get(replica.url + "/v1/models", headers=headers)
            if listed.status_code == 200 and model in listed.text:
                break
            assert time.monotonic() < deadline, f"{key.name} or {model} never reached a replica"
            await asyncio.sleep(0.05)


def client(connections: int = 200) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=connections, max_keepalive_connections=50)
    )


def test_requests_per_minute_hold_across_replicas(trio):
    key = trio.key("rpm", requestsPerMinute=60)

    async def flood() -> tuple[Counter[int], float]:
        async with client(30) as http:
            await served(http, trio, key)
            started = time.monotonic()
            urls = [trio.replicas[n % REPLICAS].url for n in range(600)]
            answers = await asyncio.gather(*(chat(http, url, key, "fast") for url in urls))
            return Counter(r.status_code for r in answers), time.monotonic() - started

    statuses, seconds = asyncio.run(flood())
    # 60 in the bucket, one more per second that drained, for all replicas together (each
    # replica counting on its own would let in up to three times as many).
    print(f"\n600 requests over {REPLICAS} replicas in {seconds:.1f} s: {dict(statuses)}")
    assert set(statuses) == {200, 429}
    assert 60 <= statuses[200] <= 60 + seconds + 1, (statuses, seconds)


def test_an_upstreams_requests_per_minute_hold_across_replicas(trio):
    """Its quota (a provider's on the gateway's key) is the upstream's, whichever replica
    sends: counted by each replica on its own, three replicas would send it three times as
    many."""
    key = trio.key("metered")

    async def flood() -> tuple[Counter[int], float]:
        async with client(30) as http:
            await served(http, trio, key, "metered")
            started = time.monotonic()
            urls = [trio.replicas[n % REPLICAS].url for n in range(60)]
            answers = await asyncio.gather(*(chat(http, url, key, "metered") for url in urls))
            return Counter(r.status_code for r in answers), time.monotonic() - started

    statuses, seconds = asyncio.run(flood())
    sent = len([s for s in trio.metered.seen if s.path.endswith("/chat/completions")])
    print(f"\n60 requests over {REPLICAS} replicas in {seconds:.1f} s: {dict(statuses)}")
    # METERED in the bucket, and one more for each 60 / METERED seconds that drained.
    assert METERED <= statuses[200] == sent <= METERED + seconds * METERED / 60 + 1
    assert set(statuses) == {200, 429}


def test_an_upstreams_cap_and_a_keys_max_concurrent_hold_across_replicas(trio):
    heavy = trio.key("streams")
    limited = trio.key("limited", maxConcurrent=3)

    async def run() -> tuple[Counter[int], Counter[int]]:
        async with client() as http:
            await served(http, trio, heavy)
            await served(http, trio, limited)
            capped = [
                chat(http, trio.replicas[n % REPLICAS].url, heavy, "capped") for n in range(200)
            ]
            answers = await asyncio.gather(*capped)
            trio.fast.delay, trio.fast.peak = 0.2, 0  # the limited key's stay in flight a while
            try:
                tries = [
                    chat(http, trio.replicas[n % REPLICAS].url, limited, "fast") for n in range(30)
                ]
                tried = await asyncio.gather(*tries)
            finally:
                trio.fast.delay = 0.0
            return Counter(r.status_code for r in answers), Counter(r.status_code for r in tried)

    capped, tried = asyncio.run(run())
    assert capped == {200: 200}  # all served, in turn
    assert trio.capped.peak == 4  # never more than the cap at once, as the upstream saw it
    assert tried[200] >= 3 and set(tried) == {200, 429}
    assert trio.fast.peak == 3  # its three, and never more


def test_a_keys_max_concurrent_holds_across_replicas_while_its_streams_are_open(trio):
    """A stream holds its place in flight until its last event, whichever replica serves it:
    twelve streams at once over three replicas, for a key with maxConcurrent 3."""
    key = trio.key("streamer", maxConcurrent=3)
    body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

    async def run() -> list[tuple[int, bytes]]:
        async with client() as http:
            await served(http, trio, key, "fast")

            async def stream(n: int) -> tuple[int, bytes]:
                url = trio.replicas[n % REPLICAS].url + "/v1/chat/completions"
                headers = {"Authorization": f"Bearer {key.key}"}
                async with http.stream("POST", url, json=body, headers=headers) as answer:
                    return answer.status_code, await answer.aread()

            # Five events a second apart: the three let in are still open when the rest come,
            # however slowly a loaded machine sends them.
            trio.fast.pace, trio.fast.peak = 1.0, 0
            try:
                return await asyncio.gather(*(stream(n) for n in range(12)))
            finally:
                trio.fast.pace = 0.0

    results = asyncio.run(run())
    statuses = Counter(status for status, _ in results)
    assert statuses[200] >= 3 and set(statuses) == {200, 429}, statuses
    assert trio.fast.peak == 3  # three streams at once, never more, as the upstream saw them
    assert all(text.endswith(b"data: [DONE]\n\n") for status, text in results if status == 200)


def test_a_light_key_keeps_its_turn_against_two_heavy_keys_on_other_replicas(trio):
    heavies = [trio.key("heavy-1"), trio.key("heavy-2")]
    light = trio.key("light")

    async def run() -> list[int]:
        async with client() as http:
            for key in (*heavies, light):
                await served(http, trio, key)
            flood = [
                asyncio.create_task(
                    chat(http, trio.replicas[k].url, heavy, "single", f"heavy-{k}-{n}")
                )
                for n in range(30)
                for k, heavy in enumerate(heavies)
            ]
            while len(trio.single.arrivals) < 3:  # noqa: ASYNC110 - the heavy keys are in line
                await asyncio.sleep(0.01)
            waits = []
            for n in range(5):  # one after the other, through the third replica
                before = len(trio.single.arrivals)
                r = await chat(http, trio.replicas[2].url, light, "single", f"light-{n}")
                assert r.status_code == 200
                waits.append(trio.single.arrivals.index(f"light-{n}") - before)
            answers = await asyncio.gather(*flood)
            assert all(r.status_code == 200 for r in answers)
            return waits

    waits = asyncio.run(run())
    print(f"\nheavy requests let in before each light one: {waits}")
    # First come, first served, the first light request would wait behind the fifty or so
    # heavy ones in line. With turns round the keys, each waits for the one in flight, the
    # heavy ones that joined at the same place (one per key), and what passed while it was on
    # its way to the proxy (a 0.05 s turn each).
    assert max(waits) <= 8, waits


def test_a_budget_is_spent_once_across_replicas(trio):
    key = trio.key("budget")
    changed = trio.admin.update(key.id, {"budget": Budget("day", tokens=50)})
    assert changed is not None

    async def run() -> tuple[list[int], list[int]]:
        async with client() as http:
            await served(http, trio, changed)
            spent = []
            for n in range(15):  # one after the other, each replica in turn: 10 tokens each
                r = await chat(http, trio.replicas[n % REPLICAS].url, changed, "fast")
                spent.append(r.status_code)
            await asyncio.sleep(0.5)  # the last charges reach Redis
            after = [(await chat(http, r.url, changed, "fast")).status_code for r in trio.replicas]
            return spent, after

    spent, after = asyncio.run(run())
    print(f"\na budget of 50 tokens, 10 a request, over {REPLICAS} replicas: {spent}")
    # 5 requests spend it; a charge is counted just after its answer, so the next request,
    # on another replica, may come before it (each replica on its own would let in 15)
    assert 5 <= spent.count(200) <= 7 and set(spent) == {200, 429}, spent
    assert spent[:5] == [200] * 5 and after == [429] * REPLICAS


FROZEN = 10.0  # seconds Redis is stopped for


def test_while_redis_is_frozen_no_request_waits_for_it_and_limits_hold_then_resume(
    trio, redis_server
):
    key = trio.key("frozen", maxConcurrent=6)  # 2 a replica while Redis is away

    async def run() -> tuple[list[float], Counter[int], float]:
        async with client() as http:
            await served(http, trio, key)
            for n in range(12):  # every worker has counted in Redis (its lease is known)
                assert (await chat(http, trio.replicas[n % REPLICAS].url, key, "fast")).is_success
            trio.fast.delay, trio.fast.peak = 0.1, 0

            async def timed(n: int) -> tuple[float, int]:
                started = time.monotonic()
                r = await chat(http, trio.replicas[n % REPLICAS].url, key, "fast")
                return time.monotonic() - started, r.status_code

            # every worker has counted the three replicas (at a lease renewal, every 2 s)
            await asyncio.to_thread(
                eventually, lambda: all_beats(trio, lambda beat: beat["limits_replicas"] == 3)
            )
            answers: list[tuple[float, int]] = []
            redis_server.freeze()
            frozen = time.monotonic()
            try:
                while time.monotonic() - frozen < FROZEN:  # waves of 12 for the 10 s
                    answers += await asyncio.gather(*(timed(n) for n in range(12)))
                await asyncio.to_thread(  # every worker has noticed (its heartbeat says so)
                    eventually, lambda: all_beats(trio, lambda beat: bool(beat["limits_error"]))
                )
                trio.fast.delay = 0.3
                # four at once through one replica: twice its share, some refused
                assert not await all_let_in(http, trio.replicas[0].url, key, 4)
            finally:
                redis_server.thaw()
            thawed = time.monotonic()
            # Shared again: the four are all let in (maxConcurrent 6 for all replicas together)
            try:
                while True:
                    tried = time.monotonic()
                    if await all_let_in(http, trio.replicas[0].url, key, 4):
                        break
                    assert time.monotonic() - thawed < 30, "limits never shared again"
            finally:
                trio.fast.delay = 0.0
            took = [took for took, _ in answers]
            return took, Counter(status for _, status in answers), tried - thawed

    took, statuses, resumed = asyncio.run(run())
    took.sort()
    print(
        f"\nRedis frozen {FROZEN:g} s: {dict(statuses)}; answers (0.1 s upstream) p50 "
        f"{took[len(took) // 2]:.3f} s, max {took[-1]:.3f} s; limits shared again "
        f"{resumed:.2f} s after it was thawed"
    )
    # A request that waited for Redis would wait until it is thawed (10 s): the first of each
    # worker waits about 0.1 s (the timeout, then the probe's), the others not at all; the
    # bound is generous for a loaded machine.
    assert took[-1] < 3, took
    assert statuses[200] and set(statuses) <= {200, 429} and trio.fast.peak <= 6
    # Back: shared within a second or two (a worker's circuit is tried every second).
    assert resumed < 5, resumed
    # and every worker's circuit closes (its heartbeat no longer says limits_error).
    eventually(lambda: all_beats(trio, lambda beat: beat["limits_error"] is None), timeout=30)


async def all_let_in(http: httpx.AsyncClient, url: str, key: ApiKey, count: int) -> bool:
    burst = [chat(http, url, key, "fast") for _ in range(count)]
    return all(r.status_code == 200 for r in await asyncio.gather(*burst))


def all_beats(trio: Trio, check: Callable[[dict[str, Any]], bool]) -> bool:
    """Does every live worker's heartbeat, written in the last 2.5 s, pass `check`?"""
    now = time.time()
    beats = [
        beat
        for replica in trio.replicas
        if replica.process.poll() is None
        for beat in read_heartbeats(replica.data / "run")
    ]
    return len(beats) == 2 * sum(r.process.poll() is None for r in trio.replicas) and all(
        beat.get("updated", 0) > now - 2.5 and "limits_error" in beat and check(beat)
        for beat in beats
    )


def test_a_killed_replicas_places_come_back(trio):
    key = trio.key("killed")

    async def run() -> float:
        async with client() as http:
            await served(http, trio, key)
            doomed = trio.replicas[0]
            held = [asyncio.create_task(chat(http, doomed.url, key, "held")) for _ in range(2)]
            while trio.held.active < 2:  # noqa: ASYNC110 - replica 0 holds both places
                await asyncio.sleep(0.01)
            os.killpg(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait()
            await asyncio.gather(*held, return_exceptions=True)
            killed = time.monotonic()
            trio.held.held = False  # the held answers would never be read: answer the next
            r = await chat(http, trio.replicas[1].url, key, "held")
            assert r.status_code == 200
            return time.monotonic() - killed

    waited = asyncio.run(run())
    print(f"\nthe killed replica's places came back in {waited:.1f} s")
    assert waited < 15
