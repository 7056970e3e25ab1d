"""The board: exact counters across processes."""

import multiprocessing
import os

import pytest

from services.proxy.board import Board, Bucket

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
