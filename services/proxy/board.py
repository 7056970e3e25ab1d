"""The board: counters shared by every proxy worker on the machine, exact without a server.

A file (`var/limits.board`) mapped into each worker's memory holds fixed-size slots, one per
name (an API key's id, an upstream's URL). Each slot holds

- three token buckets (`used`, `at`): requests per minute, tokens per minute, tokens per day,
  each drained continuously at `capacity / period`;
- or, in a slot that holds no buckets, one counter (see services/proxy/gate.py);
- a small table of `(pid, count, first)`: requests in flight per worker process, so that a
  worker that dies does not leave its requests counted (entries of dead processes are ignored),
  and the place in line (`first`, 0 for none) of the first request the worker has waiting.

Every read-modify-write of a slot holds a POSIX record lock on the slot's bytes (`fcntl`), so
workers never lose an update; one check costs two system calls. Nothing here awaits, so within
a worker no other coroutine can interleave either. A slot, once given a name, keeps it: the
board has room for far more keys and upstreams than a gateway has.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("proxy.board")

MAGIC = b"llmp-board-v1\n"
SLOT = 256
SLOTS = 16384  # slot 0 is the header; the file is sparse
NAME = 16
BUCKETS = 3  # requests/minute, tokens/minute, tokens/day
BUCKET = struct.Struct("<dd")  # used, at
COUNTER = struct.Struct("<q")  # in place of the buckets
FLIGHT = struct.Struct("<iiq")  # pid, in flight, first
FLIGHTS = 12
BUCKETS_AT = NAME
FLIGHTS_AT = BUCKETS_AT + BUCKETS * BUCKET.size
assert FLIGHTS_AT + FLIGHTS * FLIGHT.size <= SLOT


class BoardFull(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Bucket:
    """A leaky bucket: `capacity` units per `period` seconds, index into the slot's buckets."""

    index: int
    capacity: int
    period: float

    @property
    def rate(self) -> float:
        return self.capacity / self.period


@dataclass(slots=True)
class Level:
    """A bucket's state after a check: what is left and when it is empty again."""

    capacity: int
    used: float
    rate: float

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.capacity - self.used))

    @property
    def reset(self) -> float:
        """Seconds until the bucket is empty (the limit back to its initial state)."""
        return max(0.0, self.used / self.rate)

    def wait(self, cost: float) -> float:
        """Seconds until `cost` more units fit (0 if they fit now)."""
        return max(0.0, (self.used + cost - self.capacity) / self.rate)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Board:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self._offsets: dict[str, int] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked(0, SLOT):
            size = os.fstat(self._fd).st_size
            header = os.pread(self._fd, len(MAGIC), 0)
            if size != SLOT * SLOTS or header != MAGIC:
                os.ftruncate(self._fd, 0)
                os.ftruncate(self._fd, SLOT * SLOTS)
                os.pwrite(self._fd, MAGIC, 0)
        self._map = mmap.mmap(self._fd, SLOT * SLOTS)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self, offset: int, length: int) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, length, offset)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, length, offset)

    def slot(self, name: str) -> int:
        """The offset of `name`'s slot, claiming a free one the first time."""
        offset = self._offsets.get(name)
        if offset is not None:
            return offset
        digest = hashlib.blake2b(name.encode(), digest_size=NAME).digest()
        start = int.from_bytes(digest[:4], "little") % (SLOTS - 1) + 1
        with self._locked(0, SLOT):  # claiming is rare: one lock for the whole table
            for probe in range(SLOTS - 1):
                offset = ((start + probe - 1) % (SLOTS - 1) + 1) * SLOT
                found = self._map[offset : offset + NAME]
                if found == digest or found == bytes(NAME):
                    if found != digest:
                        self._map[offset : offset + SLOT] = bytes(SLOT)
                        self._map[offset : offset + NAME] = digest
                    self._offsets[name] = offset
                    return offset
        raise BoardFull(f"{self.path} has no free slot for {name!r}")

    @contextlib.contextmanager
    def holding(self, name: str) -> Iterator[Slot]:
        """The slot of `name`, locked against every other worker for the block's duration."""
        offset = self.slot(name)
        with self._locked(offset, SLOT):
            yield Slot(self, offset)


class Slot:
    """One locked slot; valid only inside `Board.holding`."""

    __slots__ = ("_board", "_offset")

    def __init__(self, board: Board, offset: int) -> None:
        self._board = board
        self._offset = offset

    # Buckets ---------------------------------------------------------------------------

    def level(self, bucket: Bucket, now: float | None = None) -> Level:
        """The bucket drained up to now (and saved so)."""
        now = time.time() if now is None else now
        at = self._offset + BUCKETS_AT + bucket.index * BUCKET.size
        used, then = BUCKET.unpack_from(self._board._map, at)
        used = max(0.0, used - max(0.0, now - then) * bucket.rate)
        BUCKET.pack_into(self._board._map, at, used, now)
        return Level(bucket.capacity, used, bucket.rate)

    def add(self, bucket: Bucket, amount: float, level: Level) -> None:
        """Add `amount` to a bucket just read with `level` (which is updated too)."""
        at = self._offset + BUCKETS_AT + bucket.index * BUCKET.size
        level.used += amount
        struct.pack_into("<d", self._board._map, at, level.used)

    # A counter -------------------------------------------------------------------------

    @property
    def counter(self) -> int:
        return int(COUNTER.unpack_from(self._board._map, self._offset + BUCKETS_AT)[0])

    @counter.setter
    def counter(self, value: int) -> None:
        COUNTER.pack_into(self._board._map, self._offset + BUCKETS_AT, value)

    # In flight -------------------------------------------------------------------------

    def _flights(self) -> Iterator[tuple[int, int, int, int]]:
        for index in range(FLIGHTS):
            at = self._offset + FLIGHTS_AT + index * FLIGHT.size
            yield at, *FLIGHT.unpack_from(self._board._map, at)

    def _dead(self, pid: int) -> bool:
        return pid != self._board.pid and not _alive(pid)

    def in_flight(self, forget_dead: bool = False) -> int:
        """Requests in flight in all workers; with `forget_dead`, only live ones (the entries of
        dead workers are cleared)."""
        total = 0
        for at, pid, count, first in self._flights():
            if forget_dead and (count or first) and self._dead(pid):
                FLIGHT.pack_into(self._board._map, at, 0, 0, 0)
                continue
            total += count
        return total

    def _mine(self) -> int:
        """The offset of this worker's entry, claiming a free one if it has none."""
        free = None
        for at, pid, count, first in self._flights():
            if pid == self._board.pid and (count or first):
                return at
            if free is None and not (count or first):
                free = at
        if free is None:  # more workers than entries: reclaim those of dead workers
            self.in_flight(forget_dead=True)
            free = next((at for at, _, count, first in self._flights() if not count | first), None)
        if free is None:
            raise BoardFull("no free in-flight entry")
        FLIGHT.pack_into(self._board._map, free, self._board.pid, 0, 0)
        return free

    def change_flight(self, delta: int) -> None:
        """Count one more (+1) or one fewer (-1) request in flight for this worker."""
        at = self._mine()
        pid, count, first = FLIGHT.unpack_from(self._board._map, at)
        FLIGHT.pack_into(self._board._map, at, pid, max(0, count + delta), first)

    def set_first(self, place: int) -> None:
        """The place in line of this worker's first waiting request (0: none waits)."""
        at = self._mine()
        pid, count, _ = FLIGHT.unpack_from(self._board._map, at)
        FLIGHT.pack_into(self._board._map, at, pid, count, place)

    def try_enter(self, limit: int, place: int | None = None) -> bool:
        """Count a request in flight if fewer than `limit` are, and if it comes first: with no
        `place`, only while no other worker has a request waiting; with one, only if no other
        worker has one waiting at an earlier place (between equal places, the lower pid)."""
        if self.in_flight() >= limit and self.in_flight(forget_dead=True) >= limit:
            return False
        for _, pid, _, first in self._flights():
            if not first or pid == self._board.pid or self._dead(pid):
                continue
            if place is None or (first, pid) < (place, self._board.pid):
                return False
        self.change_flight(1)
        return True
