"""Where the circuits of the upstreams (services/proxy/cooldown.py) are kept: the seam.

A `CircuitStore` holds one `Record` per name (an upstream's), read and changed whole, each
change atomic against every other user of the store. `MemoryCircuits` keeps them in this
process (a catalog without a board: tests of the catalog alone); `BoardCircuits`
(services/proxy/board_circuits.py) on the limits board, shared by every proxy worker of the box.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol


class Phase(enum.Enum):
    SERVING = "serving"
    COOLING = "cooling"
    PROBING = "probing"


@dataclass(slots=True)
class Record:
    """An upstream's circuit as every worker sees it. Times are `Circuit.clock()` readings
    (time.monotonic by default, one clock for every process of the machine)."""

    phase: Phase = Phase.SERVING
    failures: int = 0  # in a row
    until: float = 0.0  # the end of a cooldown
    period: float = 0.0  # the length of the last cooldown
    prober: int = 0  # the process id of the worker whose request probes it; 0: none
    probe_until: float = 0.0  # after which another worker may probe it (no verdict came)


Edit = Callable[[Record], bool]


class CircuitStore(Protocol):
    def read(self, name: str) -> Record:
        """The record of `name` (a new one if there is none)."""
        ...

    def change(self, name: str, edit: Edit) -> tuple[Record, bool]:
        """Apply `edit` to the record of `name` and keep the result, atomically; the record
        after it, and what `edit` answered."""
        ...


class MemoryCircuits:
    """Records in this process only."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}

    def read(self, name: str) -> Record:
        return replace(self._records.get(name) or Record())

    def change(self, name: str, edit: Edit) -> tuple[Record, bool]:
        record = self.read(name)
        answer = edit(record)
        self._records[name] = record
        return replace(record), answer
