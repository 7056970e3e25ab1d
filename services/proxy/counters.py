"""The counter store: where the limiter (services/proxy/limits.py) and the fair queue
(services/proxy/gate.py) count, as one seam with two implementations.

- `BoardCounters` (services/proxy/board_counters.py): the memory-mapped board, exact across the
  workers of one machine, with nothing to run beside llmp (the default).
- `RedisCounters` (services/proxy/redis_counters.py): Redis or Valkey (`REDIS_URL`), exact
  across every replica; one server-side script per step, the clock from the server.

Each step is one call, atomic in the store: `admit` drains a key's buckets and admits or
refuses a request; `release` gives back its place in flight and charges its tokens; `enter`,
`join`, `set_first` and `leave` are the fair queue's steps in front of a capped upstream. What
a refusal means to the client (the 429, its headers and code) is the limiter's business, the
same for every store: a store says only which limit refused and the buckets' levels.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from services.proxy.board import Board, Bucket, Level
from shared.settings import Settings

Refusal = Literal["requests", "tokens", "concurrency"]


@dataclass(slots=True)
class Verdict:
    """A key's buckets after an admission step (the admitted request counted), and what refused
    the request (None: admitted, counted in flight when the key has a maxConcurrent)."""

    requests: Level | None
    tokens: list[Level]
    refused: Refusal | None = None
    bucket: int = 0  # with "tokens": the position in `tokens` of the bucket that refused


class Counters(Protocol):
    """Counters shared by every worker that uses the same store."""

    last_error: str | None  # why the store is not counting now (None: it is)
    replicas: int  # replicas counting in the store when it last answered (the board: 1)

    def start(self) -> None:
        """Begin what the store does in the background (the worker has started)."""
        ...

    async def admit(
        self, name: str, requests: Bucket | None, tokens: Sequence[Bucket], most: int | None
    ) -> Verdict:
        """Drain `name`'s buckets; admit a request if one more request fits (`requests`), no
        token bucket is full and fewer than `most` are in flight (then one more is)."""
        ...

    def release(self, name: str, concurrent: bool, tokens: Sequence[Bucket], used: int) -> None:
        """A request admitted for `name` ended: one fewer in flight (if `concurrent`), `used`
        tokens added to each token bucket. Never waits (the answer is sent already)."""
        ...

    async def enter(self, name: str, limit: int, place: int, then_first: int) -> bool:
        """Count a request in flight at upstream `name` if fewer than `limit` are and it comes
        first: with `place` 0, only while no other worker has a request waiting; otherwise only
        if none has one waiting at an earlier place, and then the upstream's clock moves on to
        `place` and this worker's first waiting place becomes `then_first` (0: none)."""
        ...

    async def join(self, name: str, key: str, keep: float) -> int:
        """A place in `name`'s line for a request of `key`: one after the later of the key's
        last place and the upstream's clock (the key's place kept `keep` seconds)."""
        ...

    async def set_first(self, name: str, place: int) -> None:
        """The place of this worker's first waiting request at `name` (0: none waits)."""
        ...

    def leave(self, name: str) -> None:
        """A request that entered `name` ended: one fewer in flight. Never waits."""
        ...

    async def turn_freed(self, name: str) -> None:
        """Return when a turn at `name` may have been freed by another worker (or after a short
        poll interval, whichever comes first)."""
        ...

    async def aclose(self) -> None:
        """Stop counting here (a Redis lease is given back: this worker's requests stop
        counting at once)."""
        ...


class HistoryUnread(Exception):
    """The usage log could not be read (its database refused or could not be reached)."""


class UsageHistory(Protocol):
    """What keys used, from the system of record (the usage log), for a store that lost its
    counters (services/proxy/usage_history.py). A log that cannot be read raises
    HistoryUnread."""

    async def level(self, key_id: str, period: float) -> float:
        """The tokens a leaky bucket of `period` seconds would hold now for `key_id`."""
        ...

    async def by_model(self, key_id: str, since: float) -> list[tuple[str, int, int]]:
        """(model, prompt tokens, completion tokens) of `key_id`'s requests since `since`."""
        ...


class BudgetLedger(Protocol):
    """Budgets counted for every replica together (services/proxy/budgets.py): one counter per
    key, unit and period, `name` (`budget-tokens:<id>:<period's number>`), kept until `until`
    (a UNIX time, the period's end)."""

    async def budget_used(
        self, name: str, until: float, local: int, seed: Callable[[], Awaitable[int | None]]
    ) -> int:
        """What `name` counts: filled once from `seed` (the usage log; None: it could not be
        read) when the store has never filled it. `local` is what this replica has charged in
        the period (its board), from which the store makes up its answer when it cannot
        count."""
        ...

    def budget_charge(self, name: str, until: float, amount: int) -> None:
        """Add `amount` to `name`. Never waits."""
        ...


def open_counters(settings: Settings, board: Board) -> Counters:
    """The store `settings` choose: Redis when REDIS_URL is set (with the machine's `board` as
    its fallback), else `board`."""
    from services.proxy.board_counters import BoardCounters

    on_board = BoardCounters(board)
    if not settings.redis_url:
        return on_board
    from services.proxy.redis_counters import RedisCounters

    # the workers of a replica are those of one board (REPLICA_NAME, or the host, and its file)
    replica = f"{settings.replica}:{settings.board_file.resolve()}"
    from services.proxy.usage_history import PgUsageHistory

    history = PgUsageHistory(settings.database_url)
    return RedisCounters(
        settings.redis_url, on_board, replica, settings.redis_failure, history=history
    )


def share(limit: int, parts: int) -> int:
    """One of `parts` equal shares of `limit`, rounded down, so that the shares never add up to
    more than the limit."""
    return limit // max(1, parts)


def shared_bucket(bucket: Bucket, parts: int) -> Bucket:
    """`bucket` with a share of its capacity, drained at the same share of its rate."""
    return Bucket(bucket.index, share(bucket.capacity, parts), bucket.period)
