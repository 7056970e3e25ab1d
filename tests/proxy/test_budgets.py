"""Budgets: admitted while under, charged at the end, per calendar period, seeded from the
recorded rows after a restart, in tokens or in money; the same cases on the board and in Redis
(a real redis-server), and in Redis counted for every replica together."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.proxy.board import Board
from services.proxy.board_counters import BoardCounters
from services.proxy.budgets import Budgets, PriceBook
from services.proxy.errors import ProxyError
from services.proxy.redis_counters import Failure, RedisCounters
from services.proxy.usage_history import PgUsageHistory
from shared import analytics
from shared.analytics import RequestRow
from shared.apikeys import ApiKey, Budget, period_bounds
from shared.pg.schema import migrate
from shared.pg.usage import write_rows
from shared.prices import Price, Prices, write_prices
from tests.proxy.test_redis_counters import _true, until

THURSDAY = datetime(2026, 12, 3, 12, tzinfo=UTC).timestamp()
# today's noon (UTC): Redis lets a budget's count expire a day after its period, by its own clock
NOON = (time.time() // 86400) * 86400 + 43200

Maker = Callable[..., Budgets]
Run = Callable[[Callable[[Maker], Awaitable[Any]]], Any]


@pytest.fixture(params=["board", "redis"])
def run(request, tmp_path: Path) -> Run:
    """Runs a scenario given a maker of Budgets, each a replica of its own (`make("a")`; the same
    name again: another worker of that replica), on the board or in Redis."""
    return runner(request, tmp_path, request.param == "redis")


@pytest.fixture
def run_redis(request, tmp_path: Path) -> Run:
    return runner(request, tmp_path, True)


def runner(request: Any, tmp_path: Path, in_redis: bool) -> Run:
    def run(scenario: Callable[[Maker], Awaitable[Any]]) -> Any:
        url = request.getfixturevalue("redis_url") if in_redis else ""

        async def main() -> Any:
            stores: list[RedisCounters] = []

            def make(
                replica: str = "a", failure: Failure = "share", history: Any = None
            ) -> Budgets:
                board = Board(tmp_path / f"{replica}.board")
                ledger = None
                if url:
                    ledger = RedisCounters(url, BoardCounters(board), replica, failure)
                    stores.append(ledger)
                return Budgets(
                    board,
                    tmp_path / "analytics.db",
                    PriceBook(tmp_path / "prices.json"),
                    ledger,
                    history,
                )

            try:
                return await asyncio.wait_for(scenario(make), 60)
            finally:
                for store in stores:
                    await store.aclose()

        return asyncio.run(main())

    return run


async def charged(budgets: Budgets, key: ApiKey, row: RequestRow, tokens: int) -> None:
    """Charge, and wait until the charge is counted (in Redis it is sent in the background)."""
    budgets.charge(key, row, tokens, NOON)
    if isinstance(budgets.ledger, RedisCounters):
        await asyncio.gather(*budgets.ledger._tasks)


def _key(**budget) -> ApiKey:
    return replace(ApiKey.new("spender"), budget=Budget(**budget))


def _row(key: ApiKey, prompt: int, completion: int, at: float = NOON) -> RequestRow:
    return RequestRow(
        "id",
        key.id,
        key.username,
        int(at * 1000),
        int(at * 1000) + 5,
        200,
        model="m",
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


def test_a_token_budget_admits_until_used_then_refuses_until_the_next_period(run):
    key = _key(period="day", tokens=100)

    async def scenario(make: Maker) -> tuple[ProxyError, dict[str, int], dict[str, int]]:
        budgets = make()
        for _ in range(3):
            await budgets.admit(key, NOON)
            await charged(budgets, key, _row(key, 20, 20), 40)
        with pytest.raises(ProxyError) as refused:
            await budgets.admit(key, NOON)
        used = await budgets.used(key, NOON)
        await budgets.admit(key, NOON + 12 * 3600)  # the next day starts from nothing
        return refused.value, used, await budgets.used(key, NOON + 12 * 3600)

    error, used, next_day = run(scenario)
    assert (error.status, error.code, error.type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    headers = dict(error.headers)
    assert headers[b"x-ratelimit-limit-tokens"] == b"100"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"0"
    assert headers[b"retry-after"] == str(12 * 3600).encode()  # to midnight UTC
    assert headers[b"retry-after-ms"] == str(12 * 3600 * 1000).encode()  # as the limits say it
    assert used == {"tokens": 120}
    assert next_day == {"tokens": 0}


def test_every_worker_sees_the_same_use(run):
    key = _key(period="week", tokens=50)

    async def scenario(make: Maker) -> None:
        budgets, other = make("a"), make("a")
        await charged(budgets, key, _row(key, 25, 25), 50)
        with pytest.raises(ProxyError):
            await other.admit(key, NOON)

    run(scenario)


def test_a_new_board_starts_from_what_was_recorded_in_the_period(tmp_path):
    key = _key(period="month", tokens=1000)
    db = analytics.connect(tmp_path / "analytics.db")
    _, start, _ = period_bounds("month", NOON)
    analytics.insert(db, [_row(key, 300, 400), _row(key, 100, 100, at=start - 60)])  # last month
    db.close()
    budgets = Budgets(
        Board(tmp_path / "limits.board"), tmp_path / "analytics.db", PriceBook(tmp_path / "p")
    )
    assert asyncio.run(budgets.used(key, NOON)) == {"tokens": 700}


def test_a_money_budget_counts_tokens_at_the_model_price(run, tmp_path):
    write_prices(tmp_path / "prices.json", Prices("USD", {"m": Price(1.0, 3.0)}))
    key = _key(period="day", cost=0.01)  # $0.01: 10,000 prompt tokens at $1 per million

    async def scenario(make: Maker) -> tuple[ProxyError, dict[str, int]]:
        budgets = make()
        await budgets.admit(key, NOON)
        await charged(budgets, key, _row(key, 4000, 1000), 5000)  # $0.004 + $0.003
        await budgets.admit(key, NOON)
        await charged(budgets, key, _row(key, 3000, 0), 3000)
        with pytest.raises(ProxyError) as refused:
            await budgets.admit(key, NOON)
        return refused.value, await budgets.used(key, NOON)

    refused, used = run(scenario)
    assert "budget of 0.01 USD for this day" in refused.message
    assert used == {"cost": 10_000}  # millionths


def test_a_budget_is_spent_once_across_replicas_not_once_on_each(run_redis):
    key = _key(period="day", tokens=100)

    async def scenario(make: Maker) -> list[str]:
        replicas = [make("a"), make("b"), make("c")]
        seen = []
        for n in range(6):  # each replica in turn, 30 tokens a request
            budgets = replicas[n % 3]
            try:
                await budgets.admit(key, NOON)
            except ProxyError as exc:
                seen.append(exc.code)
                continue
            seen.append("admitted")
            await charged(budgets, key, _row(key, 15, 15), 30)
        return seen

    # 0, 30, 60 and 90 are under 100; at 120 every replica refuses
    assert run_redis(scenario) == ["admitted"] * 4 + ["insufficient_quota"] * 2


def test_a_budget_redis_lost_is_filled_again_from_the_usage_log(
    run_redis, redis_server, database_url
):
    key = _key(period="month", tokens=1000)
    _, start, _ = period_bounds("month", NOON)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        rows = [_row(key, 300, 400), _row(key, 100, 100, at=start - 60)]  # and last month's
        for n, row in enumerate(rows):
            row.request_id = f"r{n}"
        write_rows(conn, rows, set())

    async def scenario(make: Maker) -> list[dict[str, int]]:
        budgets = make("a", history=PgUsageHistory(database_url))
        first = await budgets.used(key, NOON)  # a new Redis: filled from the usage log
        await charged(budgets, key, _row(key, 50, 50), 100)  # not written to the log
        second = await budgets.used(key, NOON)
        redis_server.flush()  # lost: the log has 700 of the 800
        return [first, second, await budgets.used(key, NOON)]

    assert run_redis(scenario) == [{"tokens": 700}, {"tokens": 800}, {"tokens": 700}]


def test_periods_are_calendar_periods_in_utc():
    NOON = THURSDAY
    number, start, end = period_bounds("week", NOON)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 11, 30, tzinfo=UTC)  # Monday
    assert end - start == 7 * 86400
    assert period_bounds("week", start - 1)[0] == number - 1
    _, start, end = period_bounds("month", NOON)
    assert (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_while_redis_is_frozen_each_replica_spends_its_share_of_what_was_left(
    run_redis, redis_server
):
    key = _key(period="day", tokens=100)

    async def scenario(make: Maker) -> tuple[list[str], dict[str, int]]:
        replicas = [make(name) for name in "abc"]
        await charged(replicas[0], key, _row(key, 20, 20), 40)
        for budgets in replicas:  # each hears from Redis: 40 used, and 3 replicas
            await budgets.admit(key, NOON)
        await until(lambda: _true(all(getattr(b.ledger, "replicas", 0) == 3 for b in replicas)))
        seen = []
        redis_server.freeze()
        try:
            for _ in range(3):  # 60 left: a share of 20 for each replica
                try:
                    await replicas[0].admit(key, NOON)
                except ProxyError as exc:
                    seen.append(exc.code)
                    continue
                seen.append("admitted")
                await charged(replicas[0], key, _row(key, 5, 5), 10)
            assert getattr(replicas[0].ledger, "down", False)
        finally:
            redis_server.thaw()
        ledger = replicas[0].ledger
        assert isinstance(ledger, RedisCounters)
        await until(lambda: _true(not ledger.down))  # back: what was spent is told to Redis
        return seen, await replicas[1].used(key, NOON)

    seen, used = run_redis(scenario)
    # 40 + 3 x 10 = 70 and 40 + 3 x 20 = 100: the third is refused
    assert seen == ["admitted", "admitted", "insufficient_quota"]
    assert used == {"tokens": 60}


def test_fail_closed_refuses_a_key_with_a_budget_while_redis_is_away(tmp_path):
    key = _key(period="day", tokens=100)

    async def main() -> ProxyError:
        board = Board(tmp_path / "a.board")
        gone = f"unix://{tmp_path / 'no.sock'}"
        ledger = RedisCounters(gone, BoardCounters(board), "a", "closed")
        budgets = Budgets(board, tmp_path / "analytics.db", PriceBook(tmp_path / "p"), ledger)
        try:
            with pytest.raises(ProxyError) as refused:
                await budgets.admit(key, NOON)
            return refused.value
        finally:
            await ledger.aclose()

    refused = asyncio.run(main())
    assert (refused.status, refused.code) == (503, "limits_unavailable")


def test_a_usage_log_that_does_not_answer_is_not_asked_by_every_request(run_redis, tmp_path):
    key = _key(period="day", tokens=100)
    asked = []

    class Away(PgUsageHistory):
        async def by_model(self, key_id: str, since: float) -> list[tuple[str, int, int]]:
            asked.append(key_id)
            return await super().by_model(key_id, since)

    async def scenario(make: Maker) -> dict[str, int]:
        budgets = make("a", history=Away(f"postgresql:///llmp?host={tmp_path / 'gone'}"))
        for _ in range(3):
            await budgets.admit(key, NOON)  # counted from what Redis has meanwhile
            await charged(budgets, key, _row(key, 5, 5), 10)
        return await budgets.used(key, NOON)

    assert run_redis(scenario) == {"tokens": 30}
    assert asked == [key.id]  # once, then left alone for a while
