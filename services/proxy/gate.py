"""The fair queue in front of a busy upstream.

An upstream given a concurrency (`TARGET_URLS=http://gpu:8000|concurrency=4`) has at most that
many requests in flight, counted on the board across all workers. Requests beyond it wait in
line, and turns go round the keys, so a key that sends a hundred requests waits behind itself,
not in front of everyone else. Each worker holds at most QUEUE_LIMIT waiting requests; one that
waits longer than QUEUE_TIMEOUT gets a 503.

The line is start-time fair queuing, shared by all workers through the board: a waiting
request's place is one after the later of its key's last place and the place of the last
request let in (the upstream's clock). A key that has been quiet comes next; a key with many
waiting takes every other place. Each worker keeps its waiting requests in order of place and
tells the board the place of its first; a turn goes to the earliest place of all workers.

A turn is handed on as soon as a request of this worker ends; a turn freed by another worker is
noticed within POLL seconds. The seconds waited are read from `clock` (injected by tests).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

from services.proxy import errors
from services.proxy.board import Board

POLL = 0.005

Waiting = tuple[int, int, asyncio.Future[None]]  # place, arrival, turn


class Gate:
    def __init__(
        self,
        board: Board,
        name: str,
        concurrency: int,
        queue_limit: int,
        timeout: float,
        clock: Callable[[], float] = time.perf_counter,
        label: str = "upstream",
    ) -> None:
        self.board = board
        self.label = label  # how answers name the upstream; `name` (its URL) stays in the board
        self.clock = clock
        self.name = name
        self.concurrency = concurrency
        self.queue_limit = queue_limit
        self.timeout = timeout
        self._slot = "upstream:" + name
        self._line: list[Waiting] = []  # a heap
        self._arrivals = itertools.count()
        self._poller: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._line)

    async def enter(self, key_id: str) -> float:
        """Wait for a turn; returns the seconds waited. Raises ProxyError (503) when the line is
        full or the turn does not come in time."""
        if not self._line:
            with self.board.holding(self._slot) as slot:
                if slot.try_enter(self.concurrency):
                    return 0.0
        if len(self._line) >= self.queue_limit:
            raise errors.queue_full(self.label)
        turn = asyncio.get_running_loop().create_future()
        with (
            self.board.holding(self._slot) as slot,
            self.board.holding(f"line:{self.name}\n{key_id}") as key,
        ):
            place = key.counter = max(slot.counter, key.counter) + 1
            key.keep(time.time() + self.timeout)  # its place matters while it may wait
            heapq.heappush(self._line, (place, next(self._arrivals), turn))
            slot.set_first(self._line[0][0])
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name=f"gate {self.name}")
        started = self.clock()
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(turn)
        except BaseException as exc:
            if turn.done():  # the turn came, but this request no longer wants it
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
        with self.board.holding(self._slot) as slot:
            slot.change_flight(-1)
        self._dispatch()

    def _forget(self, turn: asyncio.Future[None]) -> None:
        self._line = [waiting for waiting in self._line if waiting[2] is not turn]
        heapq.heapify(self._line)
        with self.board.holding(self._slot) as slot:
            slot.set_first(self._line[0][0] if self._line else 0)

    def _dispatch(self) -> None:
        while self._line:
            with self.board.holding(self._slot) as slot:
                place = self._line[0][0]
                if not slot.try_enter(self.concurrency, place):
                    return
                slot.counter = max(slot.counter, place)
                _, _, turn = heapq.heappop(self._line)
                slot.set_first(self._line[0][0] if self._line else 0)
            turn.set_result(None)

    async def _poll(self) -> None:
        try:
            while self._line:
                await asyncio.sleep(POLL)
                self._dispatch()
        finally:
            self._poller = None
