"""The fair queue in front of a busy upstream, within one worker."""

import asyncio

import pytest

from services.proxy.board import Board
from services.proxy.errors import ProxyError
from services.proxy.gate import Gate


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 30))


def test_turns_go_round_the_keys_not_first_come(tmp_path):
    async def scenario():
        gate = Gate(Board(tmp_path / "b"), "u", concurrency=1, queue_limit=100, timeout=10)
        order = []

        async def request(key):
            await gate.enter(key)
            order.append(key)
            await asyncio.sleep(0.002)
            gate.leave()

        first = asyncio.create_task(request("heavy"))
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(request("heavy")) for _ in range(6)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(request("light")) for _ in range(2)]
        await asyncio.gather(first, *tasks)
        return order

    order = run(scenario)
    # Six heavy requests queued before the light ones; the light ones still come second and
    # fourth, each after one heavy turn.
    assert order == [
        "heavy",
        "heavy",
        "light",
        "heavy",
        "light",
        "heavy",
        "heavy",
        "heavy",
        "heavy",
    ]


def test_a_full_line_and_a_long_wait_are_503s(tmp_path):
    async def scenario():
        gate = Gate(Board(tmp_path / "b"), "u", concurrency=1, queue_limit=1, timeout=0.2)
        await gate.enter("a")
        waiting = asyncio.create_task(gate.enter("b"))
        await asyncio.sleep(0.01)
        with pytest.raises(ProxyError) as full:
            await gate.enter("c")
        with pytest.raises(ProxyError) as late:
            await waiting
        gate.leave()
        assert gate.queued == 0 and await gate.enter("d") == 0.0  # the line is clean again
        return full.value, late.value

    full, late = run(scenario)
    assert (full.status, full.code) == (503, "upstream_queue_full")
    assert (late.status, late.code) == (503, "upstream_queue_timeout")
    assert (b"retry-after", b"1") in late.headers


def test_a_request_that_gives_up_in_line_frees_its_place_and_its_turn(tmp_path):
    async def scenario():
        board = Board(tmp_path / "b")
        gate = Gate(board, "u", concurrency=1, queue_limit=10, timeout=10)
        await gate.enter("a")
        quitter = asyncio.create_task(gate.enter("b"))
        await asyncio.sleep(0.01)
        quitter.cancel()
        await asyncio.gather(quitter, return_exceptions=True)
        assert gate.queued == 0
        gate.leave()
        with board.holding("upstream:u") as slot:
            return slot.in_flight()

    assert run(scenario) == 0


def test_a_turn_freed_in_another_worker_is_noticed(tmp_path):
    async def scenario():
        path = tmp_path / "b"
        other = Gate(Board(path), "u", concurrency=1, queue_limit=10, timeout=10)
        mine = Gate(Board(path), "u", concurrency=1, queue_limit=10, timeout=10)
        await other.enter("a")
        waiting = asyncio.create_task(mine.enter("b"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        other.leave()  # another worker's request ends: nothing tells this one but the board
        return await waiting

    assert 0.05 <= run(scenario) < 0.2
