"""services/proxy/redis_counters.py: what only the Redis store does (the promises it shares with
the board are tests/proxy/test_counters.py's): leases of workers that die, wake-ups, and what
happens while Redis does not answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.proxy import redis_counters
from services.proxy.board import Board
from services.proxy.board_counters import BoardCounters
from services.proxy.errors import ProxyError
from services.proxy.gate import Gate
from services.proxy.limits import Limiter, Policy
from services.proxy.redis_counters import Failure, RedisCounters
from services.proxy.usage_history import PgUsageHistory
from shared.analytics import RequestRow
from shared.apikeys import ApiKey, Limits
from shared.pg.schema import migrate
from shared.pg.usage import write_rows

Maker = Callable[..., RedisCounters]


def run(tmp_path: Path, url: str, scenario: Callable[[Maker], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        made: list[RedisCounters] = []

        def make(replica: str, failure: Failure = "share", **options: Any) -> RedisCounters:
            board = BoardCounters(Board(tmp_path / f"{replica}.board"))
            store = RedisCounters(url, board, replica, failure, **options)
            made.append(store)
            return store

        try:
            return await asyncio.wait_for(scenario(make), 60)
        finally:
            for store in made:
                await store.aclose()

    return asyncio.run(main())


def policy(**limits: int) -> Policy:
    return Policy.of(replace(ApiKey.new("user"), limits=Limits(**limits)))


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> float:
    """Seconds until `check()` holds (failing after `seconds`)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, "never happened"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def admitted(limiter: Limiter, limited: Policy) -> bool:
    try:
        await limiter.admit(limited)
    except ProxyError:
        return False
    return True


async def kill(store: RedisCounters) -> None:
    """The worker dies: it stops renewing its lease, and gives nothing back."""
    await store.stop_background()
    store._background = [asyncio.create_task(asyncio.sleep(0))]  # never started again
    await store.redis.aclose()


def test_the_places_of_a_worker_that_died_come_back_when_its_lease_runs_out(tmp_path, redis_url):
    async def scenario(make: Maker) -> float:
        dying, living = make("a", lease=1.0), make("b", lease=1.0)
        limited = policy(maxConcurrent=1)
        assert await Limiter(dying).admit(limited) is not None
        gate = Gate(dying, "u", concurrency=1, queue_limit=10, timeout=60)
        assert await gate.enter("k") == 0.0
        await kill(dying)
        other = Limiter(living)
        assert not await admitted(other, limited)  # still counted while its lease runs
        waited = await until(lambda: admitted(other, limited))
        assert await Gate(living, "u", 1, 10, 60).enter("k") == 0.0  # the upstream's too
        return waited

    assert run(tmp_path, redis_url, scenario) < 15


def test_a_turn_freed_in_another_replica_is_told_at_once(tmp_path, redis_url, monkeypatch):
    monkeypatch.setattr(redis_counters, "POLL", 3600.0)  # only a wake-up can hand the turn on

    async def scenario(make: Maker) -> None:
        one, other = make("a"), make("b")
        mine = Gate(one, "u", concurrency=1, queue_limit=10, timeout=60)
        theirs = Gate(other, "u", concurrency=1, queue_limit=10, timeout=60)
        await theirs.enter("x")
        waiting = asyncio.create_task(mine.enter("y"))
        await until(lambda: _true(mine.queued == 1))
        await until(lambda: listening(one, 2))  # both workers hear the turns
        assert not waiting.done()
        theirs.leave()
        await waiting

    run(tmp_path, redis_url, scenario)


def test_while_redis_is_frozen_no_request_waits_for_it_and_each_replica_keeps_its_share(
    tmp_path, redis_server, redis_url
):
    async def scenario(make: Maker) -> tuple[int, int, float, Any]:
        stores = [make(f"replica-{n}", lease=2.0) for n in range(3)]
        for store in stores:  # each renews its lease and counts the replicas
            await store.admit("key:warm", None, (), 1)
        await until(lambda: _true(all(store.replicas == 3 for store in stores)))
        limiter = Limiter(stores[0])
        limited = policy(maxConcurrent=6, requestsPerMinute=600)
        held = await limiter.admit(limited)
        counted = "llmp:key:" + limited.key.id, "f:" + stores[0].worker
        assert await stores[0].redis.hget(*counted) == b"1"  # in flight, in Redis
        redis_server.freeze()
        try:
            started = time.monotonic()
            admissions = [held]
            for _ in range(100):  # one waits for the timeout, then the circuit is open
                if await admitted(limiter, limited):
                    admissions.append(None)
            frozen_for = time.monotonic() - started
            assert stores[0].down
            entered = 0
            for _ in range(5):  # the fair queue's step: in only while the upstream has room
                entered += await stores[0].enter("upstream:u", 6, 0, 0)
            assert held is not None
            limiter.release(held, 10)  # admitted by Redis, released while it is away
        finally:
            redis_server.thaw()
        await until(lambda: _true(not stores[0].down))
        in_flight = await stores[0].redis.hget(
            "llmp:key:" + limited.key.id, "f:" + stores[0].worker
        )
        return len(admissions) - 1, entered, frozen_for, in_flight

    admitted_while_frozen, entered, frozen_for, in_flight = run(tmp_path, redis_url, scenario)
    assert admitted_while_frozen == 2 - 1  # 6 // 3 replicas, less the one Redis let in before
    assert entered == 2  # the upstream's 6 // 3
    assert frozen_for < 5  # a hundred requests: not a hundred timeouts (0.05 s each)
    # Back, Redis counts what the worker has in flight: the request its share let in (the one
    # Redis had let in was released while it was away), not two.
    assert in_flight == b"1"


async def _true(value: bool) -> bool:
    return value


async def listening(store: RedisCounters, workers: int) -> bool:
    heard = await store.redis.pubsub_numsub(redis_counters.TURNS)
    return bool(heard[0][1] >= workers)


@pytest.mark.parametrize("failure", ["closed", "open"])
def test_fail_closed_refuses_and_fail_open_admits_while_redis_is_away(tmp_path, failure):
    gone = f"unix://{tmp_path / 'no.sock'}"

    async def scenario(make: Maker) -> Any:
        store = make("a", failure)
        limiter = Limiter(store)
        try:
            return await limiter.admit(policy(maxConcurrent=1))
        except ProxyError as exc:
            return exc

    answer = run(tmp_path, gone, scenario)
    if failure == "closed":
        assert isinstance(answer, ProxyError)
        assert (answer.status, answer.code) == (503, "limits_unavailable")
    else:
        assert answer is not None and answer.headers == []


def test_a_lost_day_of_tokens_is_rebuilt_from_the_usage_log(
    tmp_path, redis_server, redis_url, database_url
):
    limited = policy(tokensPerDay=10_000)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        now_ms = int(time.time() * 1000)
        rows = [
            RequestRow(
                request_id=f"r{n}",
                key_id=limited.key.id,
                username="user",
                start_ms=now_ms - age_hours * 3_600_000,
                status=200,
                prompt_tokens=tokens,
                completion_tokens=0,
            )
            for n, (age_hours, tokens) in enumerate(((6, 8000), (1, 4000), (30, 50_000)))
        ]
        write_rows(conn, rows, set())
    # 8000 * 18/24 + 4000 * 23/24 = 9833 tokens still in the day's bucket (the row of 30 h
    # ago has drained): the key has 167 left, and a request of 200 spends them.

    async def scenario(make: Maker) -> list[int]:
        store = make("a", history=PgUsageHistory(database_url))
        limiter = Limiter(store)
        levels = []
        for _ in range(2):  # a new Redis, then the same Redis after losing its data
            first = await limiter.admit(limited)  # the counters are missing: rebuilt meanwhile
            assert first is not None

            async def rebuilt() -> bool:
                level = await limiter.admit(limited)
                assert level is not None
                return dict(level.headers)[b"x-ratelimit-remaining-tokens"] != b"10000"

            await until(rebuilt)
            admission = await limiter.admit(limited)
            assert admission is not None
            levels.append(int(dict(admission.headers)[b"x-ratelimit-remaining-tokens"]))
            limiter.release(admission, 200)

            async def spent() -> bool:
                return not await admitted(limiter, limited)

            await until(spent)  # the day's tokens are used up
            redis_server.flush()
        return levels

    levels = run(tmp_path, redis_url, scenario)
    assert all(160 <= level <= 167 for level in levels), levels


def test_a_count_left_behind_by_a_call_cut_short_is_mended_when_redis_is_back(tmp_path, redis_url):
    async def scenario(make: Maker) -> tuple[bool, bool]:
        store = make("a")
        limiter = Limiter(store)
        limited = policy(maxConcurrent=1)
        held = await limiter.admit(limited)
        assert held is not None
        limiter.release(held, None)
        # A call that timed out after Redis ran it: a request counted there, refused here.
        await store.redis.hincrby("llmp:key:" + limited.key.id, "f:" + store.worker, 1)
        before = await admitted(limiter, limited)
        store._trip(TimeoutError("cut short"))
        assert store.last_error == "TimeoutError: cut short"  # in the worker's heartbeat
        await until(lambda: _true(not store.down))  # the heartbeat reaches Redis again
        assert store.last_error is None
        return before, await admitted(limiter, limited)

    before, after = run(tmp_path, redis_url, scenario)
    assert (before, after) == (False, True)


def test_a_first_call_cut_short_by_a_frozen_redis_leaves_no_count_once_it_is_back(
    tmp_path, redis_server, redis_url
):
    async def scenario(make: Maker) -> tuple[bool, bool, Any]:
        store = make("a")
        await store.admit("key:warm", None, (), 1)  # the lease is taken, the scripts loaded
        limiter = Limiter(store)
        limited = policy(maxConcurrent=1)  # never counted in Redis by this worker before
        redis_server.freeze()
        try:
            # cut short: Redis runs it once thawed, counting a request this worker let in on
            # its board (a share of 1 for one replica)
            during = await limiter.admit(limited)
            assert store.down and during is not None
            limiter.release(during, None)
        finally:
            redis_server.thaw()
        await until(lambda: _true(not store.down))
        counted = await store.redis.hget("llmp:key:" + limited.key.id, "f:" + store.worker)
        return during is not None, await admitted(limiter, limited), counted

    let_in, after, counted = run(tmp_path, redis_url, scenario)
    assert (let_in, after, counted) == (True, True, None)
