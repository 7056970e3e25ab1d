"""The fair queue in front of a busy upstream, within one worker."""

import asyncio

import pytest

from services.proxy.board import Board
from services.proxy.board_counters import POLL, BoardCounters
from services.proxy.errors import ProxyError
from services.proxy.gate import Gate


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 30))


async def until(check):
    """Let the loop run until `check()` holds (the scenario's own timeout bounds it)."""
    while not check():  # noqa: ASYNC110 - polls the gate's state, which has no event to await
        await asyncio.sleep(0)


def test_turns_go_round_the_keys_not_first_come(tmp_path):
    async def scenario():
        gate = Gate(
            BoardCounters(Board(tmp_path / "b")), "u", concurrency=1, queue_limit=100, timeout=60
        )
        order = ["heavy"]

        async def request(key):
            await gate.enter(key)
            order.append(key)
            gate.leave()

        assert await gate.enter("heavy") == 0.0  # in at once: the line was empty
        tasks = [asyncio.create_task(request("heavy")) for _ in range(6)]
        await until(lambda: gate.queued == 6)
        tasks += [asyncio.create_task(request("light")) for _ in range(2)]
        await until(lambda: gate.queued == 8)
        gate.leave()
        await asyncio.gather(*tasks)
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
        gate = Gate(
            BoardCounters(Board(tmp_path / "b")),
            "http://gpu.internal:8000/v1",
            1,
            1,
            0.2,
            label="upstream 2",
        )
        await gate.enter("a")
        waiting = asyncio.create_task(gate.enter("b"))
        await until(lambda: gate.queued == 1)
        with pytest.raises(ProxyError) as full:
            await gate.enter("c")  # refused before it awaits anything: "b" is still in line
        with pytest.raises(ProxyError) as late:
            await waiting
        gate.leave()
        assert gate.queued == 0 and await gate.enter("d") == 0.0  # the line is clean again
        return full.value, late.value

    full, late = run(scenario)
    assert (full.status, full.code) == (503, "upstream_queue_full")
    assert (late.status, late.code) == (503, "upstream_queue_timeout")
    assert (b"retry-after", b"1") in late.headers
    # Named as answers name an upstream: its URL (an internal host name) stays in the logs.
    assert full.message == "The upstream 2 is busy and its queue is full"
    assert "gpu.internal" not in late.message and "upstream 2" in late.message


def test_a_request_that_gives_up_in_line_frees_its_place_and_its_turn(tmp_path):
    async def scenario():
        board = Board(tmp_path / "b")
        gate = Gate(BoardCounters(board), "u", concurrency=1, queue_limit=10, timeout=60)
        await gate.enter("a")
        quitter = asyncio.create_task(gate.enter("b"))
        await until(lambda: gate.queued == 1)
        quitter.cancel()
        await asyncio.gather(quitter, return_exceptions=True)
        assert gate.queued == 0
        gate.leave()
        await asyncio.sleep(0)  # the turn handed on, to nobody
        with board.holding("upstream:u") as slot:
            return slot.in_flight()

    assert run(scenario) == 0


def test_a_turn_freed_in_another_worker_is_noticed(tmp_path):
    now = [100.0]

    async def scenario():
        path = tmp_path / "b"
        other = Gate(BoardCounters(Board(path)), "u", concurrency=1, queue_limit=10, timeout=60)
        mine = Gate(
            BoardCounters(Board(path)), "u", 1, queue_limit=10, timeout=60, clock=lambda: now[0]
        )
        await other.enter("a")
        waiting = asyncio.create_task(mine.enter("b"))
        await until(lambda: mine.queued == 1)
        for _ in range(10):  # the poller runs a few times: nothing to notice yet
            await asyncio.sleep(POLL)
        assert not waiting.done()
        now[0] += 2.5
        other.leave()  # another worker's request ends: nothing tells this one but the board
        return await waiting  # noticed by the poller (the scenario's timeout bounds it)

    assert run(scenario) == 2.5  # the seconds waited, by the gate's clock
