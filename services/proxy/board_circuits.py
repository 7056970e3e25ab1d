"""The circuits of the upstreams on the limits board (services/proxy/board.py): one record per
upstream in a slot of its own, read and changed under the slot's lock, so every proxy worker of
the box sees one verdict (a `CircuitStore`, services/proxy/circuit_store.py).

A board with no slot left (`BoardFull`) keeps that upstream's circuit in this worker alone,
said once in the log: a cooldown is a preference of routing, never a reason to refuse.
"""

from __future__ import annotations

import logging
import struct

from services.proxy.board import Board, BoardFull
from services.proxy.circuit_store import Edit, MemoryCircuits, Phase, Record

log = logging.getLogger("proxy.circuits")

LAYOUT = struct.Struct("<iiddid")  # phase, failures, until, period, prober, probe_until
PHASES = (Phase.SERVING, Phase.COOLING, Phase.PROBING)


def unpack(data: bytes) -> Record:
    phase, failures, until, period, prober, probe_until = LAYOUT.unpack_from(data)
    if not 0 <= phase < len(PHASES):
        phase = 0  # not ours: a circuit that serves
    return Record(PHASES[phase], failures, until, period, prober, probe_until)


def pack(record: Record) -> bytes:
    return LAYOUT.pack(
        PHASES.index(record.phase),
        record.failures,
        record.until,
        record.period,
        record.prober,
        record.probe_until,
    )


class BoardCircuits:
    def __init__(self, board: Board) -> None:
        self.board = board
        self._alone = MemoryCircuits()  # for names the board has no slot for
        self._full: set[str] = set()

    def read(self, name: str) -> Record:
        if name not in self._full:
            try:
                with self.board.holding(name) as slot:
                    return unpack(slot.record)
            except BoardFull as exc:
                self._board_full(name, exc)
        return self._alone.read(name)

    def change(self, name: str, edit: Edit) -> tuple[Record, bool]:
        if name not in self._full:
            try:
                with self.board.holding(name) as slot:
                    record = unpack(slot.record)
                    answer = edit(record)
                    slot.record = pack(record)
                    return record, answer
            except BoardFull as exc:
                self._board_full(name, exc)
        return self._alone.change(name, edit)

    def _board_full(self, name: str, exc: BoardFull) -> None:
        log.error(
            "upstream circuit kept in this worker alone",
            extra={"fields": {"circuit": name, "error": exc.detail}},
        )
        self._full.add(name)
