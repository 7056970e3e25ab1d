"""Budgets at the proxy: what a key may use per calendar day, week or month, in tokens or money.

A key's use in the current period lives on the board (services/proxy/board.py), so every worker
sees every other's at once: one slot per key and unit (`budget-tokens:<id>`, `budget-cost:<id>`)
whose counter holds the period's number in its high bits and the use (tokens, or millionths of
the currency) in its low `USED_BITS`. A counter from another period (or a new board) is first
set from the rollups of `analytics.db` for the period (what the key used before a restart, or 0
in a new period), once per period, under the slot's lock.

With REDIS_URL, a key's use is counted for every replica together in Redis (a `BudgetLedger`,
services/proxy/redis_counters.py), filled from the usage log in PostgreSQL when Redis has
none (waited for SEED_TIMEOUT at most, and not asked for SEED_PAUSE after it failed: the count
is filled by a later request); the board's slot still counts this replica's own use, which
Redis' fallback works from while Redis does not answer.

A request is admitted while its key has used less than its budget, and charged what it used when
it ends (as the tokens-per-day limit): requests already under way may take a key past it. The
cost of a request is its tokens at its model's price (data/prices.json, re-read when it changes);
a model without a price costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from services.proxy.board import Board, Slot
from services.proxy.counters import BudgetLedger, HistoryUnread, UsageHistory
from services.proxy.errors import ProxyError
from services.proxy.limits import duration, level_headers, retry_headers
from shared import rollups
from shared.analytics import RequestRow
from shared.apikeys import ApiKey, Budget, period_bounds
from shared.prices import Prices, PricesError, read_prices

log = logging.getLogger("proxy.budgets")

USED_BITS = 43
USED_MAX = (1 << USED_BITS) - 1
MICRO = 1_000_000  # cost is counted in millionths
PRICES_CHECK = 1.0  # seconds between looks at prices.json
SEED_TIMEOUT = 0.5
SEED_PAUSE = 10.0  # seconds the usage log is not asked again after it failed to answer


class PriceBook:
    """data/prices.json as last read; an unreadable file keeps the prices it had."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prices = Prices()
        self._seen: tuple[int, int] | None = None
        self._checked = 0.0

    def current(self) -> Prices:
        now = time.monotonic()
        if now - self._checked < PRICES_CHECK:
            return self.prices
        self._checked = now
        try:
            stat = self.path.stat()
            seen = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            seen = (0, 0)
        if seen != self._seen:
            self._seen = seen
            try:
                self.prices = read_prices(self.path)
            except PricesError as exc:
                log.error("prices unreadable; keeping the last", extra={"fields": {"error": exc}})
        return self.prices


class Budgets:
    def __init__(
        self,
        board: Board,
        analytics_db: Path,
        prices: PriceBook,
        ledger: BudgetLedger | None = None,
        history: UsageHistory | None = None,
    ) -> None:
        self.board = board
        self.analytics_db = analytics_db
        self.prices = prices
        self.ledger = ledger  # None: the board counts (one machine)
        self.history = history  # where the ledger's counts are filled from
        self._history_failed = -SEED_PAUSE  # when the usage log last failed (monotonic)
        # Told of each refusal: the key, the unit spent (tokens or cost) and the period's number.
        self.on_spent: Callable[[ApiKey, str, int], None] | None = None

    async def admit(self, key: ApiKey, now: float | None = None) -> None:
        """Raises a 429 ProxyError when the key has used its budget for this period."""
        budget = key.budget
        if budget is None:
            return
        now = time.time() if now is None else now
        number, start, end = period_bounds(budget.period, now)
        for unit, limit in self._limits(budget):
            used = await self._count(key, unit, number, start, end)
            if used >= limit:
                if self.on_spent is not None:
                    self.on_spent(key, unit, number)
                raise _refusal(budget, unit, limit, end - now, self.prices.current().currency)

    def charge(self, key: ApiKey, row: RequestRow, tokens: int, now: float | None = None) -> None:
        """Count what a request used against its key's budget."""
        budget = key.budget
        if budget is None:
            return
        now = time.time() if now is None else now
        number, start, end = period_bounds(budget.period, now)
        amounts = {"tokens": tokens}
        if budget.cost is not None:
            cost = self.prices.current().cost(row.model, row.prompt_tokens, row.completion_tokens)
            amounts["cost"] = round((cost or 0.0) * MICRO)
        for unit, _ in self._limits(budget):
            if not amounts[unit]:
                continue
            with self.board.holding(f"budget-{unit}:{key.id}") as slot:
                used = self._used(slot, key, unit, number, start)
                slot.counter = _pack(number, used + amounts[unit])
            if self.ledger is not None:
                self.ledger.budget_charge(f"budget-{unit}:{key.id}:{number}", end, amounts[unit])

    async def used(self, key: ApiKey, now: float | None = None) -> dict[str, int]:
        """The key's use in this period by unit (tokens, and cost in millionths)."""
        budget = key.budget
        if budget is None:
            return {}
        now = time.time() if now is None else now
        number, start, end = period_bounds(budget.period, now)
        return {
            unit: await self._count(key, unit, number, start, end)
            for unit, _ in self._limits(budget)
        }

    async def _count(self, key: ApiKey, unit: str, number: int, start: float, end: float) -> int:
        """The key's use of `unit` in the period: on the board, or in the ledger."""
        with self.board.holding(f"budget-{unit}:{key.id}") as slot:
            local = self._used(slot, key, unit, number, start)
        if self.ledger is None:
            return local

        async def seed() -> int | None:
            return await self._history(key, unit, start)

        return await self.ledger.budget_used(f"budget-{unit}:{key.id}:{number}", end, local, seed)

    async def _history(self, key: ApiKey, unit: str, start: float) -> int | None:
        """What the usage log says the key used since `start` (None: it cannot be read)."""
        if self.history is None or time.monotonic() - self._history_failed < SEED_PAUSE:
            return None  # no request waits for a usage log that just failed
        try:
            async with asyncio.timeout(SEED_TIMEOUT):
                rows = await self.history.by_model(key.id, start)
        except (HistoryUnread, TimeoutError) as exc:
            self._history_failed = time.monotonic()
            log.error("budget use not read", extra={"fields": {"key": key.id, "error": exc}})
            return None
        return self._amount(unit, rows)

    def _amount(self, unit: str, rows: list[tuple[str, int, int]]) -> int:
        if unit == "tokens":
            return sum(p + c for _, p, c in rows)
        prices = self.prices.current()
        return round(sum(prices.cost(m, p, c) or 0.0 for m, p, c in rows) * MICRO)

    @staticmethod
    def _limits(budget: Budget) -> list[tuple[str, int]]:
        limits = []
        if budget.tokens is not None:
            limits.append(("tokens", budget.tokens))
        if budget.cost is not None:
            limits.append(("cost", round(budget.cost * MICRO)))
        return limits

    def _used(self, slot: Slot, key: ApiKey, unit: str, number: int, start: float) -> int:
        counter = slot.counter
        if counter >> USED_BITS == number:
            return counter & USED_MAX
        used = self._recorded(key, unit, start)
        slot.counter = _pack(number, used)
        return used

    def _recorded(self, key: ApiKey, unit: str, start: float) -> int:
        """What the rows already written say the key used since `start` (0 if they cannot
        be read)."""
        first_day = int(start * 1000)
        try:
            db = sqlite3.connect(
                f"file:{self.analytics_db}?mode=ro", uri=True, timeout=SEED_TIMEOUT
            )
        except sqlite3.Error:
            return 0
        try:
            with contextlib.closing(db):
                rows = rollups.key_tokens_by_model(db, key.id, first_day)
        except sqlite3.Error as exc:
            log.warning("budget use not read", extra={"fields": {"key": key.id, "error": exc}})
            return 0
        return self._amount(unit, rows)


def _pack(number: int, used: int) -> int:
    return (number << USED_BITS) | min(USED_MAX, max(0, used))


def _refusal(budget: Budget, unit: str, limit: int, wait: float, currency: str) -> ProxyError:
    if unit == "tokens":
        amount = f"{limit} tokens"
        headers = level_headers("tokens", limit, 0, wait)
    else:
        amount = f"{limit / MICRO:g} {currency}"
        headers = []
    return ProxyError(
        429,
        f"This key has used its budget of {amount} for this {budget.period}. "
        f"It renews in {duration(wait)}.",
        "insufficient_quota",
        type="insufficient_quota",
        headers=(*retry_headers(wait), *headers),
    )
