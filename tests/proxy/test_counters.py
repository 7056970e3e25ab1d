"""services/proxy/counters.py: the counter store's promises, the same cases run against the board
and a real redis-server. Two stores on the same board file or Redis stand for two workers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.proxy.board import Board
from services.proxy.board_counters import BoardCounters
from services.proxy.counters import Counters
from services.proxy.errors import ProxyError
from services.proxy.gate import Gate
from services.proxy.limits import Limiter, Policy
from services.proxy.redis_counters import RedisCounters
from shared.apikeys import ApiKey, Limits

WORKER_PIDS = sorted({os.getpid(), os.getppid(), 1})
Scenario = Callable[[Callable[[], Counters]], Awaitable[Any]]


@pytest.fixture(params=["board", "redis"])
def stores(request, tmp_path: Path) -> Callable[[Scenario], Any]:
    """Runs a scenario given a maker of stores (each a worker) of one kind; all are closed."""

    def run(scenario: Scenario) -> Any:
        async def main() -> Any:
            made: list[Counters] = []
            url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

            def make() -> Counters:
                n = len(made)
                board = BoardCounters(Board(tmp_path / ("board" if url else "shared.board")))
                if not url:  # the board tells workers by pid: give each a live one of its own
                    board.board.pid = WORKER_PIDS[n]
                store: Counters = (
                    RedisCounters(url, board, f"replica-{n}", timeout=5.0) if url else board
                )
                made.append(store)
                return store

            try:
                return await asyncio.wait_for(scenario(make), 60)
            finally:
                for store in made:
                    await store.aclose()

        return asyncio.run(main())

    return run


async def queued(gate: Gate, count: int) -> None:
    """Until `count` requests wait at `gate` (the scenario's timeout bounds it)."""
    while gate.queued < count:  # noqa: ASYNC110 - the gate's line has no event to await
        await asyncio.sleep(0.01)


def policy(**limits: int) -> Policy:
    return Policy.of(replace(ApiKey.new("user"), limits=Limits(**limits)))


def rate_headers(headers) -> dict[bytes, bytes]:
    """The headers that do not depend on the instant (`reset` does)."""
    return {name: value for name, value in headers if b"reset" not in name}


def refusal(exc: ProxyError) -> tuple[int, str, str, dict[bytes, bytes]]:
    body = exc.body()
    assert b'"type"' in body
    return exc.status, exc.code, exc.type, rate_headers(exc.headers)


def test_requests_per_minute_admit_the_capacity_then_refuse_with_the_same_answer(stores):
    async def scenario(make):
        one, other = Limiter(make()), Limiter(make())
        limited = policy(requestsPerMinute=3)
        seen = []
        for limiter in (one, other, one):
            admission = await limiter.admit(limited)
            assert admission is not None
            seen.append(rate_headers(admission.headers))
        with pytest.raises(ProxyError) as refused:
            await other.admit(limited)
        return seen, refusal(refused.value)

    seen, refused = stores(scenario)
    assert [h[b"x-ratelimit-remaining-requests"] for h in seen] == [b"2", b"1", b"0"]
    assert seen[0][b"x-ratelimit-limit-requests"] == b"3"
    status, code, kind, headers = refused
    assert (status, code, kind) == (429, "rate_limit_exceeded", "requests")
    assert headers[b"retry-after"] in (b"20", b"19")  # a request drains in 20 s
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"


def test_tokens_used_are_charged_when_a_request_ends_and_a_full_bucket_refuses(stores):
    async def scenario(make):
        one, other = Limiter(make()), Limiter(make())
        limited = policy(tokensPerMinute=100, tokensPerDay=10_000)
        first = await one.admit(limited)
        assert first is not None
        one.release(first, 150)  # more than the minute's bucket holds: overdrawn
        for _ in range(100):  # the charge is made in the background (Redis) or at once
            await asyncio.sleep(0.01)
            try:
                await other.admit(limited)
            except ProxyError as exc:
                return refusal(exc)
        raise AssertionError("the tokens were never charged")

    status, code, kind, headers = stores(scenario)
    assert (status, code, kind) == (429, "rate_limit_exceeded", "tokens")
    assert headers[b"x-ratelimit-limit-tokens"] == b"100"  # the tighter of minute and day
    assert headers[b"x-ratelimit-remaining-tokens"] == b"0"
    assert headers[b"retry-after"] in (b"31", b"30")  # 51 tokens over 100 a minute


def test_max_concurrent_counts_every_worker_and_a_release_frees_a_place(stores):
    async def scenario(make):
        one, other = Limiter(make()), Limiter(make())
        limited = policy(maxConcurrent=2)
        held = [await one.admit(limited), await other.admit(limited)]
        with pytest.raises(ProxyError) as refused:
            await one.admit(limited)
        assert held[1] is not None
        other.release(held[1], None)
        for _ in range(100):
            await asyncio.sleep(0.01)
            try:
                return refusal(refused.value), await one.admit(limited)
            except ProxyError:
                continue
        raise AssertionError("the place was never freed")

    (status, code, kind, headers), admitted = stores(scenario)
    assert (status, code, kind) == (429, "concurrency_limit_exceeded", "requests")
    assert headers[b"retry-after"] == b"1"
    assert admitted is not None and admitted.concurrent


def test_a_key_without_limits_asks_no_store(stores):
    async def scenario(make):
        class Refusing:
            def __getattr__(self, name: str) -> Any:
                raise AssertionError(f"the store was asked ({name})")

        make()
        return await Limiter(Refusing()).admit(policy())

    assert stores(scenario) is None


def test_turns_of_a_capped_upstream_go_round_the_keys_across_workers(stores):
    async def scenario(make):
        one, other = make(), make()
        gates = [
            Gate(store, "u", concurrency=1, queue_limit=100, timeout=60) for store in (one, other)
        ]
        order: list[str] = []

        async def request(gate: Gate, key: str) -> None:
            await gate.enter(key)
            order.append(key)
            await asyncio.sleep(0.01)
            gate.leave()

        assert await gates[0].enter("heavy") == 0.0  # in at once: nobody waits
        heavy = [asyncio.create_task(request(gates[0], "heavy")) for _ in range(4)]
        await queued(gates[0], 4)
        light = [asyncio.create_task(request(gates[1], "light")) for _ in range(2)]
        await queued(gates[1], 2)
        gates[0].leave()
        await asyncio.gather(*heavy, *light)
        return order

    order = stores(scenario)
    # The light key, queued last in another worker, still gets every other turn.
    assert order == ["heavy", "light", "heavy", "light", "heavy", "heavy"]


def test_an_upstream_cap_is_never_exceeded_by_many_workers(stores):
    async def scenario(make):
        gates = [Gate(make(), "u", concurrency=3, queue_limit=100, timeout=60) for _ in range(3)]
        inside = most = 0

        async def request(gate: Gate, key: str) -> None:
            nonlocal inside, most
            await gate.enter(key)
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.005)
            inside -= 1
            gate.leave()

        await asyncio.gather(*(request(gates[n % 3], f"k{n % 4}") for n in range(60)))
        return most

    assert stores(scenario) == 3
