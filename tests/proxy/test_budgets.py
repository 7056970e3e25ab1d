"""Budgets on the board: admitted while under, charged at the end, per calendar period, seeded
from the recorded rows after a restart, in tokens or in money."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.proxy.board import Board
from services.proxy.budgets import Budgets, PriceBook
from services.proxy.errors import ProxyError
from shared import analytics
from shared.analytics import RequestRow
from shared.apikeys import ApiKey, Budget, period_bounds
from shared.prices import Price, Prices, write_prices

NOON = datetime(2026, 12, 3, 12, tzinfo=UTC).timestamp()  # a Thursday


@pytest.fixture
def budgets(tmp_path) -> Budgets:
    return Budgets(
        Board(tmp_path / "limits.board"),
        tmp_path / "analytics.db",
        PriceBook(tmp_path / "prices.json"),
    )


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


def test_a_token_budget_admits_until_used_then_refuses_until_the_next_period(budgets):
    key = _key(period="day", tokens=100)
    for _ in range(3):
        budgets.admit(key, NOON)
        budgets.charge(key, _row(key, 20, 20), 40, NOON)
    with pytest.raises(ProxyError) as refused:
        budgets.admit(key, NOON)
    error = refused.value
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
    assert budgets.used(key, NOON) == {"tokens": 120}
    budgets.admit(key, NOON + 12 * 3600)  # the next day starts from nothing
    assert budgets.used(key, NOON + 12 * 3600) == {"tokens": 0}


def test_every_worker_sees_the_same_use(budgets, tmp_path):
    other = Budgets(Board(tmp_path / "limits.board"), tmp_path / "analytics.db", budgets.prices)
    key = _key(period="week", tokens=50)
    budgets.charge(key, _row(key, 25, 25), 50, NOON)
    with pytest.raises(ProxyError):
        other.admit(key, NOON)


def test_a_new_board_starts_from_what_was_recorded_in_the_period(budgets, tmp_path):
    key = _key(period="month", tokens=1000)
    db = analytics.connect(tmp_path / "analytics.db")
    _, start, _ = period_bounds("month", NOON)
    analytics.insert(db, [_row(key, 300, 400), _row(key, 100, 100, at=start - 60)])  # last month
    db.close()
    assert budgets.used(key, NOON) == {"tokens": 700}


def test_a_money_budget_counts_tokens_at_the_model_price(budgets, tmp_path):
    write_prices(tmp_path / "prices.json", Prices("USD", {"m": Price(1.0, 3.0)}))
    key = _key(period="day", cost=0.01)  # $0.01: 10,000 prompt tokens at $1 per million
    budgets.admit(key, NOON)
    budgets.charge(key, _row(key, 4000, 1000), 5000, NOON)  # $0.004 + $0.003
    budgets.admit(key, NOON)
    budgets.charge(key, _row(key, 3000, 0), 3000, NOON)
    with pytest.raises(ProxyError) as refused:
        budgets.admit(key, NOON)
    assert "budget of 0.01 USD for this day" in refused.value.message
    assert budgets.used(key, NOON) == {"cost": 10_000}  # millionths


def test_periods_are_calendar_periods_in_utc():
    number, start, end = period_bounds("week", NOON)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 11, 30, tzinfo=UTC)  # Monday
    assert end - start == 7 * 86400
    assert period_bounds("week", start - 1)[0] == number - 1
    _, start, end = period_bounds("month", NOON)
    assert (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
