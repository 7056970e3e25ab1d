"""The board: counters shared by every proxy worker on the machine, exact without a server.

A file (`var/limits.board`) holds fixed-size slots, one per name (an API key's id, an
upstream's URL, a key's place in an upstream's line). Each slot holds

- three token buckets (`used`, `at`): requests per minute, tokens per minute, tokens per day,
  each drained continuously at `capacity / period`;
- or, in a slot that holds no buckets, one counter (see services/proxy/gate.py), or a record
  of its user's own layout, at most RECORD bytes (see services/proxy/board_circuits.py);
- a small table of `(pid, count, first)`: requests in flight per worker process, so that a
  worker that dies does not leave its requests counted (entries of dead processes are ignored),
  and the place in line (`first`, 0 for none) of the first request the worker has waiting;
- `idle_at`: the time from which the slot holds nothing worth keeping (its buckets drained, its
  line places long served); 0 for a slot that is never given up (an upstream's).

Every read-modify-write of a slot holds a POSIX record lock on the slot's bytes (`fcntl`), so
workers never lose an update; the slot is read with one `pread` and written back with one
`pwrite` (not mapped into memory: a file truncated under a mapping kills the process with
SIGBUS; a short read here means the file was damaged, and it is made again, counters reset).
Nothing here awaits, so within a worker no other coroutine can interleave either.

Slots are reclaimed: a name that needs a slot may take one whose `idle_at` has passed and that
has no request in flight in a live worker (checked under the slot's lock, taken without waiting:
a slot someone holds is in use), such as a deleted key's once its buckets have drained. A worker
remembers where its names are, so every `holding` checks, under the lock, that the slot still
bears the name, and looks again if not. A board with no slot left answers 503 (`BoardFull`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.proxy.errors import ProxyError

log = logging.getLogger("proxy.board")

MAGIC = b"llmp-board-v2\n"
SLOT = 256
SLOTS = 16384  # slot 0 is the header; the file is sparse
NAME = 16
BUCKETS = 3  # requests/minute, tokens/minute, tokens/day
BUCKET = struct.Struct("<dd")  # used, at
COUNTER = struct.Struct("<q")  # in place of the buckets
IDLE = struct.Struct("<d")  # idle_at
FLIGHT = struct.Struct("<iiq")  # pid, in flight, first
FLIGHTS = 11
BUCKETS_AT = NAME
IDLE_AT = BUCKETS_AT + BUCKETS * BUCKET.size
FLIGHTS_AT = IDLE_AT + 16
RECORD = IDLE_AT - BUCKETS_AT  # bytes of a record, in place of the buckets
assert FLIGHTS_AT + FLIGHTS * FLIGHT.size <= SLOT
PROBE_CHUNK = 64
EMPTY = bytes(NAME)  # a slot never used: the end of every probe through it


class BoardFull(ProxyError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            503,
            "The gateway cannot count this key's limits now (its limits board is full); "
            "try again later",
            "limits_board_full",
            type="server_error",
            headers=((b"retry-after", b"5"),),
        )
        self.detail = detail


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


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _digest(name: str) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=NAME).digest()


class Board:
    def __init__(self, path: Path, slots: int = SLOTS) -> None:
        self.path = path
        self.slots = slots
        self.size = SLOT * slots
        self.pid = os.getpid()
        self._offsets: dict[str, tuple[int, bytes]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._check(initial=True)

    def close(self) -> None:
        os.close(self._fd)

    def _check(self, initial: bool = False) -> None:
        """Make the file again if it is not a board of this layout (counters reset)."""
        with self._locked(0, SLOT):
            size = os.fstat(self._fd).st_size
            header = os.pread(self._fd, len(MAGIC), 0)
            if size != self.size or header != MAGIC:
                if not initial:
                    log.error("limits board damaged; made again, counters reset")
                os.ftruncate(self._fd, 0)
                os.ftruncate(self._fd, self.size)
                os.pwrite(self._fd, MAGIC, 0)
                self._offsets.clear()

    @contextlib.contextmanager
    def _locked(self, offset: int, length: int) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, length, offset)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, length, offset)

    def _read(self, offset: int, length: int = SLOT) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # truncated under us
            raise _Damaged
        return data

    def _chain(self, digest: bytes) -> Iterator[tuple[int, bytes]]:
        """The slots `digest` may be in, in probing order, with the name each bears, up to
        the first never used (the header lock held)."""
        count = self.slots - 1
        start = int.from_bytes(digest[:4], "little") % count
        for first in range(0, count, PROBE_CHUNK):
            n = min(PROBE_CHUNK, count - first)
            for k in range(n):
                offset = ((start + first + k) % count + 1) * SLOT
                name_at = self._read(offset, NAME)
                yield offset, name_at
                if name_at == EMPTY:
                    return

    def slot(self, name: str) -> int:
        """The offset of `name`'s slot, claiming a free or idle one the first time."""
        found = self._offsets.get(name)
        if found is not None:
            return found[0]
        digest = _digest(name)
        with self._locked(0, SLOT):  # claiming is rare: one lock for the whole table
            free = None
            for offset, name_at in self._chain(digest):
                if name_at == digest:
                    self._offsets[name] = (offset, digest)
                    return offset
                if free is None and (name_at == EMPTY or self._idle(offset)):
                    free = offset  # taken if the name has no slot further on
            if free is None:
                raise BoardFull(f"{self.path} has no free slot for {name!r}")
            os.pwrite(self._fd, digest + bytes(SLOT - NAME), free)
            self._offsets[name] = (free, digest)
            return free

    def _idle(self, offset: int) -> bool:
        """Does the slot at `offset` hold nothing worth keeping? Only a slot nobody holds now
        is looked at (the lock is tried, not waited for)."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, SLOT, offset)
        except OSError:
            return False
        try:
            slot = Slot(self, offset, bytearray(self._read(offset)))
            return slot.idle(time.time())
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, SLOT, offset)

    @contextlib.contextmanager
    def holding(self, name: str) -> Iterator[Slot]:
        """The slot of `name`, locked against every other worker for the block's duration."""
        for _ in range(3):
            try:
                offset = self.slot(name)
                digest = self._offsets[name][1]
                fcntl.lockf(self._fd, fcntl.LOCK_EX, SLOT, offset)
                try:
                    data = bytearray(self._read(offset))
                    if data[:NAME] == digest:
                        slot = Slot(self, offset, data)
                        try:
                            yield slot
                        finally:
                            if slot.dirty:
                                os.pwrite(self._fd, slot.data, offset)
                        return
                finally:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN, SLOT, offset)
                self._offsets.pop(name, None)  # given to another name meanwhile: look again
            except _Damaged:
                self._check()
        raise BoardFull(f"{self.path}: no stable slot for {name!r}")


class _Damaged(Exception):
    """The board file is shorter than a board (truncated by something else)."""


class Slot:
    """One locked slot, read into memory; valid only inside `Board.holding`, which writes it
    back if it changed."""

    __slots__ = ("_board", "_offset", "data", "dirty")

    def __init__(self, board: Board, offset: int, data: bytearray) -> None:
        self._board = board
        self._offset = offset
        self.data = data
        self.dirty = False

    # Keeping ---------------------------------------------------------------------------

    def keep(self, until: float) -> None:
        """The slot holds something worth keeping until `until` (a time.time())."""
        (idle_at,) = IDLE.unpack_from(self.data, IDLE_AT)
        if until > idle_at:
            IDLE.pack_into(self.data, IDLE_AT, until)
            self.dirty = True

    def idle(self, now: float) -> bool:
        """`idle_at` passed (a slot never kept, idle_at 0, never is) and nothing in flight in a
        live worker."""
        (idle_at,) = IDLE.unpack_from(self.data, IDLE_AT)
        if not 0 < idle_at <= now:
            return False
        return all(
            not (count or first) or self._dead(pid) for _, pid, count, first in self._flights()
        )

    # Buckets ---------------------------------------------------------------------------

    def level(self, bucket: Bucket, now: float | None = None) -> Level:
        """The bucket drained up to now (and saved so)."""
        now = time.time() if now is None else now
        at = BUCKETS_AT + bucket.index * BUCKET.size
        used, then = BUCKET.unpack_from(self.data, at)
        used = max(0.0, used - max(0.0, now - then) * bucket.rate)
        BUCKET.pack_into(self.data, at, used, now)
        self.dirty = True
        self.keep(now + used / bucket.rate)
        return Level(bucket.capacity, used, bucket.rate)

    def add(self, bucket: Bucket, amount: float, level: Level) -> None:
        """Add `amount` to a bucket just read with `level` (which is updated too)."""
        at = BUCKETS_AT + bucket.index * BUCKET.size
        level.used += amount
        then = BUCKET.unpack_from(self.data, at)[1]
        BUCKET.pack_into(self.data, at, level.used, then)
        self.dirty = True
        self.keep(then + level.used / bucket.rate)

    # A counter -------------------------------------------------------------------------

    @property
    def counter(self) -> int:
        return int(COUNTER.unpack_from(self.data, BUCKETS_AT)[0])

    @counter.setter
    def counter(self, value: int) -> None:
        COUNTER.pack_into(self.data, BUCKETS_AT, value)
        self.dirty = True

    # A record --------------------------------------------------------------------------

    @property
    def record(self) -> bytes:
        """The RECORD bytes of a slot that holds neither buckets nor a counter (zeros in a new
        slot)."""
        return bytes(self.data[BUCKETS_AT:IDLE_AT])

    @record.setter
    def record(self, value: bytes) -> None:
        if len(value) > RECORD:
            raise ValueError(f"a record is at most {RECORD} bytes")
        self.data[BUCKETS_AT : BUCKETS_AT + len(value)] = value
        self.dirty = True

    # In flight -------------------------------------------------------------------------

    def _flights(self) -> Iterator[tuple[int, int, int, int]]:
        for index in range(FLIGHTS):
            at = FLIGHTS_AT + index * FLIGHT.size
            yield at, *FLIGHT.unpack_from(self.data, at)

    def _dead(self, pid: int) -> bool:
        return pid != self._board.pid and not process_alive(pid)

    def in_flight(self, forget_dead: bool = False) -> int:
        """Requests in flight in all workers; with `forget_dead`, only live ones (the entries of
        dead workers are cleared)."""
        total = 0
        for at, pid, count, first in self._flights():
            if forget_dead and (count or first) and self._dead(pid):
                FLIGHT.pack_into(self.data, at, 0, 0, 0)
                self.dirty = True
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
        FLIGHT.pack_into(self.data, free, self._board.pid, 0, 0)
        self.dirty = True
        return free

    def change_flight(self, delta: int) -> None:
        """Count one more (+1) or one fewer (-1) request in flight for this worker."""
        at = self._mine()
        pid, count, first = FLIGHT.unpack_from(self.data, at)
        FLIGHT.pack_into(self.data, at, pid, max(0, count + delta), first)
        self.dirty = True

    def set_first(self, place: int) -> None:
        """The place in line of this worker's first waiting request (0: none waits)."""
        at = self._mine()
        pid, count, _ = FLIGHT.unpack_from(self.data, at)
        FLIGHT.pack_into(self.data, at, pid, count, place)
        self.dirty = True

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
