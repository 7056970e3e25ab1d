"""The fair queue in front of a busy upstream.

An upstream given a concurrency (`TARGET_URLS=http://gpu:8000|concurrency=4`) has at most that
many requests in flight, counted in the counter store (services/proxy/counters.py: the board,
across the workers of a machine, or Redis, across replicas). Requests beyond it wait in
line, and turns go round the keys, so a key that sends a hundred requests waits behind itself,
not in front of everyone else. Each worker holds at most QUEUE_LIMIT waiting requests; one that
waits longer than QUEUE_TIMEOUT gets a 503.

The line is start-time fair queuing, shared by all workers through the store: a waiting
request's place is one after the later of its key's last place and the place of the last
request let in (the upstream's clock). A key that has been quiet comes next; a key with many
waiting takes every other place. Each worker keeps its waiting requests in order of place and
tells the store the place of its first; a turn goes to the earliest place of all workers.

A turn is handed on as soon as a request of this worker ends; a turn freed by another worker is
noticed when the store says so (`Counters.turn_freed`: a short poll of the board, a Redis
notice). The seconds waited are read from `clock` (injected by tests).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Coroutine
from typing import Any

from services.proxy import errors
from services.proxy.counters import Counters

Waiting = tuple[int, int, asyncio.Future[None]]  # place, arrival, turn


class Gate:
    def __init__(
        self,
        counters: Counters,
        name: str,
        concurrency: int,
        queue_limit: int,
        timeout: float,
        clock: Callable[[], float] = time.perf_counter,
        label: str = "upstream",
    ) -> None:
        self.counters = counters
        self.label = label  # how answers name the upstream; `name` (its URL) stays in the store
        self.clock = clock
        self.name = name
        self.concurrency = concurrency
        self.queue_limit = queue_limit
        self.timeout = timeout
        self._slot = "upstream:" + name
        self._line: list[Waiting] = []  # a heap
        self._joining = 0  # requests between the queue's check and their place in line
        self._arrivals = itertools.count()
        self._poller: asyncio.Task[None] | None = None
        self._dispatching = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def queued(self) -> int:
        return len(self._line)

    async def enter(self, key_id: str) -> float:
        """Wait for a turn; returns the seconds waited. Raises ProxyError (503) when the line is
        full or the turn does not come in time."""
        empty = not self._line and not self._joining
        if empty and await self.counters.enter(self._slot, self.concurrency, 0, 0):
            return 0.0
        if len(self._line) + self._joining >= self.queue_limit:
            raise errors.queue_full(self.label)
        turn = asyncio.get_running_loop().create_future()
        self._joining += 1
        try:
            place = await self.counters.join(self._slot, key_id, self.timeout)
        finally:
            self._joining -= 1
        heapq.heappush(self._line, (place, next(self._arrivals), turn))
        first = self._line[0][0]
        if first == place:
            await self.counters.set_first(self._slot, first)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name=f"gate {self.name}")
        started = self.clock()
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(turn)
        except BaseException as exc:
            if turn.done() and not turn.cancelled():  # the turn came, but is no longer wanted
                self.leave()
            else:
                turn.cancel()
                self._forget(turn)
            if isinstance(exc, TimeoutError):
                raise errors.queue_timeout(self.label, self.timeout) from None
            raise
        return self.clock() - started

    def leave(self) -> None:
        """A request that entered has ended: hand its turn on."""
        self.counters.leave(self._slot)
        if self._line:
            self._spawn(self._dispatch())

    def _forget(self, turn: asyncio.Future[None]) -> None:
        self._line = [waiting for waiting in self._line if waiting[2] is not turn]
        heapq.heapify(self._line)
        self._spawn(self.counters.set_first(self._slot, self._line[0][0] if self._line else 0))

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self) -> None:
        """Give turns to the first in line while the upstream has room and they come first
        among all workers."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._line:
                head = self._line[0]
                then = min((waiting[0] for waiting in self._line[1:3]), default=0)
                if not await self.counters.enter(self._slot, self.concurrency, head[0], then):
                    return
                if head in self._line:
                    self._line.remove(head)
                    heapq.heapify(self._line)
                first = self._line[0][0] if self._line else 0
                if first != then:  # the line changed while the store was asked
                    await self.counters.set_first(self._slot, first)
                if head[2].done():  # gave up meanwhile: its turn goes back
                    self.counters.leave(self._slot)
                else:
                    head[2].set_result(None)
        finally:
            self._dispatching = False

    async def _poll(self) -> None:
        try:
            while self._line:
                await self.counters.turn_freed(self._slot)
                await self._dispatch()
        finally:
            self._poller = None
