"""The counter store on the board (services/proxy/board.py): exact across the workers of one
machine, nothing to run beside llmp. Each step is one locked read-modify-write of a slot; none
awaits anything, so the `async` steps finish without giving the loop away."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from services.proxy.board import Board, BoardFull, Bucket
from services.proxy.counters import Verdict

log = logging.getLogger("proxy.board")

POLL = 0.005  # how often a waiting line looks for a turn freed by another worker


class BoardCounters:
    def __init__(self, board: Board, clock: Callable[[], float] = time.time) -> None:
        self.board = board
        self.clock = clock  # the buckets drain by it (wall-clock seconds, shared by workers)
        self.last_error: str | None = None  # a board always counts
        self.replicas = 1

    def start(self) -> None:
        """Nothing to start: the board needs no connection."""

    async def admit(
        self, name: str, requests: Bucket | None, tokens: Sequence[Bucket], most: int | None
    ) -> Verdict:
        return self.admit_now(name, requests, tokens, most)

    def admit_now(
        self, name: str, requests: Bucket | None, tokens: Sequence[Bucket], most: int | None
    ) -> Verdict:
        """`admit`, synchronously."""
        now = self.clock()
        with self.board.holding(name) as slot:
            slot.keep(now)  # a slot with only a request in flight is kept while it is
            level = slot.level(requests, now) if requests else None
            levels = [slot.level(bucket, now) for bucket in tokens]
            verdict = Verdict(level, levels)
            if level is not None and level.wait(1) > 0:
                verdict.refused = "requests"
                return verdict
            for index, token_level in enumerate(levels):
                if token_level.remaining <= 0:
                    verdict.refused, verdict.bucket = "tokens", index
                    return verdict
            if most is not None and not slot.try_enter(most):
                verdict.refused = "concurrency"
                return verdict
            if requests is not None and level is not None:
                slot.add(requests, 1, level)
        return verdict

    def release(self, name: str, concurrent: bool, tokens: Sequence[Bucket], used: int) -> None:
        if not concurrent and not (used and tokens):
            return
        try:
            with self.board.holding(name) as slot:
                if concurrent:
                    slot.change_flight(-1)
                if used:
                    now = self.clock()
                    for bucket in tokens:
                        slot.add(bucket, used, slot.level(bucket, now))
        except BoardFull as exc:  # the answer is sent already: the charge is lost, said once
            log.error("tokens not charged", extra={"fields": {"error": exc.detail}})

    async def enter(self, name: str, limit: int, place: int, then_first: int) -> bool:
        return self.enter_now(name, limit, place, then_first)

    def enter_now(self, name: str, limit: int, place: int, then_first: int) -> bool:
        with self.board.holding(name) as slot:
            if not slot.try_enter(limit, place or None):
                return False
            if place:
                slot.counter = max(slot.counter, place)
                slot.set_first(then_first)
        return True

    async def join(self, name: str, key: str, keep: float) -> int:
        with self.board.holding(name) as slot, self.board.holding(f"line:{name}\n{key}") as line:
            place = line.counter = max(slot.counter, line.counter) + 1
            line.keep(time.time() + keep)  # its place matters while it may wait
        return place

    async def set_first(self, name: str, place: int) -> None:
        self.set_first_now(name, place)

    def set_first_now(self, name: str, place: int) -> None:
        with self.board.holding(name) as slot:
            slot.set_first(place)

    def leave(self, name: str) -> None:
        with self.board.holding(name) as slot:
            slot.change_flight(-1)

    async def turn_freed(self, name: str) -> None:
        await asyncio.sleep(POLL)

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self.board.close()
