"""The board: exact counters across processes."""

import asyncio
import json
import multiprocessing
import os
import time
from dataclasses import replace

import pytest

from services.proxy.board import MAGIC, SLOT, SLOTS, Board, BoardFull, Bucket
from services.proxy.board_counters import BoardCounters
from services.proxy.errors import ProxyError
from services.proxy.limits import Limiter, Policy
from shared.apikeys import ApiKey, Limits

NO_DRAIN = Bucket(0, 300, 1e12)  # drains too slowly to matter: only the locking counts


def take(path, tries):
    board = Board(path)
    taken = 0
    for _ in range(tries):
        with board.holding("key:shared") as slot:
            level = slot.level(NO_DRAIN)
            if level.wait(1) == 0:
                slot.add(NO_DRAIN, 1, level)
                taken += 1
    board.close()
    return taken


@pytest.mark.slow  # four processes, spawned
def test_a_bucket_is_exact_across_processes(tmp_path):
    path = tmp_path / "limits.board"
    Board(path).close()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        taken = pool.starmap(take, [(path, 200)] * 4)
    assert sum(taken) == 300, taken  # 800 tries, not one unit more or fewer than the capacity


def test_a_bucket_drains_at_its_rate(tmp_path):
    board = Board(tmp_path / "limits.board")
    bucket = Bucket(1, 60, 60.0)  # one unit a second
    with board.holding("k") as slot:
        level = slot.level(bucket, now=1000.0)
        slot.add(bucket, 60, level)
        assert (level.remaining, level.wait(1)) == (0, 1.0)
    with board.holding("k") as slot:
        level = slot.level(bucket, now=1000.0 + 15)
        assert level.remaining == 15 and level.reset == 45.0 and level.wait(1) == 0


def test_in_flight_counts_every_worker_and_forgets_dead_ones(tmp_path):
    path = tmp_path / "limits.board"
    board = Board(path)
    gone = multiprocessing.get_context("spawn").Process(target=_enter_and_exit, args=(path,))
    gone.start()
    gone.join(30)
    assert gone.exitcode == 0
    with board.holding("upstream:u") as slot:
        assert slot.in_flight() == 1  # the dead worker's entry is still there...
        assert slot.try_enter(1)  # ...but a limit forgets it
        assert slot.in_flight() == 1
        assert not slot.try_enter(1)
        slot.change_flight(-1)
        assert slot.in_flight() == 0


def _enter_and_exit(path):
    board = Board(path)
    with board.holding("upstream:u") as slot:
        slot.change_flight(1)
    os._exit(0)  # dies with its request counted


def test_a_board_of_another_layout_is_replaced(tmp_path):
    path = tmp_path / "limits.board"
    path.write_bytes(b"something else")
    board = Board(path)
    with board.holding("k") as slot:
        assert slot.in_flight() == 0
    assert path.stat().st_size > 1024


def test_a_board_of_the_old_mapped_layout_is_replaced(tmp_path):
    path = tmp_path / "limits.board"
    path.write_bytes(b"llmp-board-v1\n" + bytes(SLOT * SLOTS - 14))
    Board(path).close()
    assert path.read_bytes()[: len(MAGIC)] == MAGIC


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def admit(limiter: Limiter, policy: Policy):
    return asyncio.run(limiter.admit(policy))


def limited(i: int, **limits: int) -> Policy:
    return Policy.of(replace(ApiKey.new(f"user{i}"), limits=Limits(**limits)))


def test_key_churn_beyond_the_slot_count_reuses_idle_slots(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    limiter = Limiter(BoardCounters(Board(tmp_path / "limits.board", slots=16), clock))
    busy = limited(0, maxConcurrent=1)
    held = admit(limiter, busy)  # in flight through the whole churn: its slot is kept
    assert held is not None
    for i in range(1, 200):  # 199 keys through a board of 15 slots
        policy = limited(i, requestsPerMinute=60, tokensPerMinute=600, maxConcurrent=2)
        admission = admit(limiter, policy)
        assert admission is not None
        limiter.release(admission, 100)
        clock.now += 61  # drained: the slot holds nothing worth keeping
    with pytest.raises(ProxyError) as caught:
        admit(limiter, busy)  # still counted: the same slot, never given away
    assert caught.value.code == "concurrency_limit_exceeded"
    limiter.release(held, None)


def test_a_slot_in_use_or_not_drained_is_never_taken_and_a_full_board_is_a_503(
    tmp_path, monkeypatch
):
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    limiter = Limiter(BoardCounters(Board(tmp_path / "limits.board", slots=4), clock))
    policies = [limited(i, tokensPerMinute=600) for i in range(3)]
    for policy in policies:
        admission = admit(limiter, policy)
        assert admission is not None
        limiter.release(admission, 300)  # half the minute's tokens: 30 s to drain
    with pytest.raises(BoardFull) as caught:
        admit(limiter, limited(9, tokensPerMinute=600))
    assert (caught.value.status, caught.value.code) == (503, "limits_board_full")
    assert json.loads(caught.value.body())["error"]["type"] == "server_error"
    clock.now += 31
    assert admit(limiter, limited(9, tokensPerMinute=600)) is not None


def test_a_worker_whose_slot_was_given_to_another_name_looks_again(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    path = tmp_path / "limits.board"
    one, other = Board(path, slots=2), Board(path, slots=2)  # two workers, one slot
    bucket = Bucket(0, 60, 60.0)
    with one.holding("key:a") as slot:
        slot.add(bucket, 10, slot.level(bucket))
    clock.now += 61
    with other.holding("key:b") as slot:  # a's slot, idle, goes to b
        slot.add(bucket, 50, slot.level(bucket))
    with pytest.raises(BoardFull), one.holding("key:a") as slot:  # taken; no other free
        slot.add(bucket, 1, slot.level(bucket))
    with other.holding("key:b") as slot:
        assert slot.level(bucket).used == 50  # untouched by a
