"""The upstreams' circuits on the board (services/proxy/board_circuits.py): two workers' views
of one circuit in this process, with a clock of the test's, then `python -m services.proxy` with
two workers against upstreams that fail, recover and are held mid-probe."""

from __future__ import annotations

import threading
import time

import pytest

from services.proxy.board import Board
from services.proxy.board_circuits import BoardCircuits, pack, unpack
from services.proxy.circuit_store import Phase, Record
from services.proxy.cooldown import REFRESH, Circuit
from shared.apikeys import ApiKey
from shared.heartbeat import read_heartbeats
from tests.conftest import eventually
from tests.proxy.fleet_workers import alias, ask, completions, fleet_workers, ready
from tests.proxy.test_sharing import Workers, worker_ids
from tests.upstream import FakeUpstream

__all__ = ["fleet_workers"]  # the fixture


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_record_is_kept_whole_and_a_new_slot_serves():
    record = Record(Phase.COOLING, 3, 1030.5, 30.0, 4242, 1060.5)
    assert unpack(pack(record) + bytes(12)) == record
    assert unpack(bytes(48)) == Record()
    assert unpack(b"\x07" + bytes(47)).phase is Phase.SERVING  # not ours: serving


def two_workers(
    tmp_path, clock: Clock, threshold: int = 2, live: set[int] | None = None
) -> tuple[Circuit, Circuit]:
    """One upstream's circuit as two workers hold it: each its own board handle and pid
    (`live`: the pids alive, both by default)."""
    live = {101, 102} if live is None else live
    return tuple(  # type: ignore[return-value]
        Circuit(
            threshold,
            30.0,
            300.0,
            clock,
            BoardCircuits(Board(tmp_path / "board")),
            "c",
            pid,
            probe_limit=60.0,
            alive=lambda pid: pid in live,
        )
        for pid in (101, 102)
    )


def test_failures_of_both_workers_count_together_and_cool_it_for_both(tmp_path):
    clock = Clock()
    one, two = two_workers(tmp_path, clock)
    assert one.admits(0) and two.admits(0)
    assert not one.failed("HTTP 500")
    assert two.failed("HTTP 502")  # the second in a row, whichever worker saw it
    assert not one.failed("HTTP 500")  # cooling already: only the first tells the webhooks
    assert one.phase is Phase.COOLING and one.failures == 3
    clock.now += REFRESH  # the other worker's view of a serving upstream is this old at most
    assert not two.admits(0) and not one.admits(0)


def test_one_request_of_one_worker_probes_and_its_verdict_is_everyones(tmp_path):
    clock = Clock()
    one, two = two_workers(tmp_path, clock, threshold=1)
    one.failed("ReadTimeout")
    clock.now += 30.0  # the cooldown is over
    assert one.admits(0) and two.admits(0)
    probe = one.claim()  # the first request sent to it is the probe
    assert probe is not None
    assert not two.admits(0)  # the other worker leaves it alone meanwhile
    assert two.claim() is None  # a request it sends anyway (nothing else left) is no probe
    assert one.view.prober == 101 and two.view.prober == 101
    assert one.succeeded()  # the probe answered: serving, for both
    one.unclaim(probe)  # its stream ends later: nothing to give up
    assert not two.succeeded()  # told already: it was not this worker's verdict
    assert two.admits(5) and two.phase is Phase.SERVING


def test_a_probe_without_a_verdict_lets_another_worker_probe(tmp_path):
    clock = Clock()
    live = {101, 102}
    one, two = two_workers(tmp_path, clock, threshold=1, live=live)
    one.failed("ReadTimeout")
    clock.now += 30.0
    claim = one.claim()
    assert claim is not None and one.claim() is None  # a second request is no probe
    one.unclaim(claim)  # its client went away before the answer started: no verdict
    assert two.admits(0)
    assert two.claim() is not None  # the next probe is the other worker's
    one.unclaim(claim)  # the first request's end again: not the claim in force
    assert not one.admits(0)
    assert not one.admits(0)
    live.discard(102)  # that worker dies mid-probe
    assert one.admits(0)
    one.claim()
    clock.now += 59.0
    assert not two.admits(0)
    clock.now += 1.0  # a probe hanging past `probe_limit` lets another be sent
    assert two.admits(0)
    two.claim()
    assert two.failed("HTTP 500")  # that probe failed: twice as long, for both
    clock.now += REFRESH
    one.sync()  # as a heartbeat reads it
    assert one.remaining() == two.remaining() == 60.0 - REFRESH


# Through the workers ------------------------------------------------------------------------


def circuits(running: Workers, url: str) -> list[str]:
    """The upstream's circuit as each worker's heartbeat reports it."""
    return [
        u["circuit"]
        for beat in read_heartbeats(running.data / "run")
        for u in beat.get("upstreams", [])
        if u["url"] == url
    ]


def served_by(answer) -> str:
    if answer.status_code != 200:
        return str(answer.status_code)
    return answer.json()["choices"][0]["message"]["content"].removeprefix("hello from ")


def failing_then_spare(
    upstreams, fleet_workers, failures: str, cooldown: str
) -> tuple[FakeUpstream, Workers, ApiKey]:
    """Two workers serving `chat` on `failing` (every answer a 500), then on `spare`, with
    these UPSTREAM_FAILURES and UPSTREAM_COOLDOWN, and a key they know."""
    failing = upstreams("failing", ["model-a"], refuse_status=500)
    spare = upstreams("spare", ["model-a"])
    running = fleet_workers(
        [{"id": "f", "url": failing.url}, {"id": "s", "url": spare.url}],
        aliases=[alias("f", "s")],
        UPSTREAM_FAILURES=failures,
        UPSTREAM_COOLDOWN=cooldown,
    )
    key = ApiKey.new("fleet")
    ready(running, key)
    return failing, running, key


@pytest.mark.slow
def test_one_workers_cooldown_applies_to_every_worker(upstreams, fleet_workers):
    failing, running, key = failing_then_spare(upstreams, fleet_workers, "2", "600")
    # A 500 may have run the request: it reaches the client, and is counted, by either worker.
    assert [served_by(ask(running, key)) for _ in range(2)] == ["500", "500"]
    # Both workers cool it down within a second; from then on, neither sends it anything.
    eventually(lambda: circuits(running, failing.url + "/v1") == ["cooling", "cooling"])
    time.sleep(2 * REFRESH)
    assert {served_by(ask(running, key)) for _ in range(20)} == {"spare"}
    assert completions(failing) == 2
    eventually(lambda: len(worker_ids(running.rows())) == 2)  # both took requests


@pytest.mark.slow
def test_one_probe_brings_an_upstream_back_for_every_worker(upstreams, fleet_workers):
    failing, running, key = failing_then_spare(upstreams, fleet_workers, "1", "1")
    assert served_by(ask(running, key)) == "500"
    failing.refuse_status, failing.held = None, True  # it recovers, and holds the probe's answer
    eventually(lambda: circuits(running, failing.url + "/v1") == ["probing", "probing"])
    probe: list[str] = []
    asking = threading.Thread(target=lambda: probe.append(served_by(ask(running, key))))
    asking.start()
    eventually(lambda: failing.active == 1)  # the probe, held
    # Meanwhile every other request, in either worker, goes to the spare (a second probe to
    # the held upstream would hang until the timeout).
    assert {served_by(ask(running, key, timeout=20)) for _ in range(20)} == {"spare"}
    assert failing.active == 1 and completions(failing) == 2
    failing.held = False
    failing.release()
    asking.join(30)
    assert probe == ["failing"]
    eventually(lambda: circuits(running, failing.url + "/v1") == ["serving", "serving"])
    time.sleep(2 * REFRESH)
    assert {served_by(ask(running, key)) for _ in range(10)} == {"failing"}  # back, for both
    eventually(lambda: len(worker_ids(running.rows())) == 2)
