"""Cooldown and probing (services/proxy/cooldown.py), alone with a clock of the test's, and in
the proxy against real upstreams that fail."""

from __future__ import annotations

import json
import zlib
from typing import cast

from services.proxy.board import Board
from services.proxy.catalog import Catalog
from services.proxy.cooldown import Circuit, Phase
from services.proxy.upstream import Busy, ConnectFailed, ReadTimeout, UpstreamClient
from shared import files, status
from tests.conftest import eventually, make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_in_a_row_cool_an_upstream_down_and_an_answer_resets_the_count():
    clock = Clock()
    circuit = Circuit(threshold=3, cooldown=30.0, longest=300.0, clock=clock)
    assert not circuit.failed("HTTP 500") and not circuit.failed("HTTP 500")
    assert not circuit.succeeded()  # serving still: the count starts again
    assert circuit.failures == 0
    assert [circuit.failed("HTTP 502") for _ in range(3)] == [False, False, True]
    assert circuit.current() is Phase.COOLING and circuit.remaining() == 30.0
    assert not circuit.admits(in_flight=0)


def test_after_the_cooldown_one_request_at_a_time_probes_it():
    clock = Clock()
    circuit = Circuit(threshold=1, cooldown=30.0, longest=100.0, clock=clock)
    circuit.failed("ReadTimeout")
    clock.now += 29.9
    assert circuit.current() is Phase.COOLING
    clock.now += 0.1
    assert circuit.current() is Phase.PROBING and circuit.remaining() is None
    assert circuit.admits(in_flight=0) and not circuit.admits(in_flight=1)
    assert circuit.failed("HTTP 500")  # the probe failed: twice as long
    assert circuit.period == 60.0 and circuit.remaining() == 60.0
    clock.now += 60.0
    assert circuit.failed("HTTP 500") and circuit.period == 100.0  # at most `longest`
    clock.now += 100.0
    assert circuit.succeeded()  # the probe answered
    assert circuit.current() is Phase.SERVING and circuit.failures == 0
    circuit.failed("HTTP 500")  # the next cooldown starts from the first length again
    assert circuit.period == 30.0


def test_a_threshold_of_zero_never_cools_down():
    circuit = Circuit(threshold=0, clock=Clock())
    assert not any(circuit.failed("HTTP 500") for _ in range(50))
    assert circuit.admits(in_flight=5)


def test_what_the_catalog_counts_as_a_failure(tmp_path):
    settings = make_settings(tmp_path, target_urls="http://127.0.0.1:9", upstream_failures=2)
    catalog = Catalog(settings, cast(UpstreamClient, None))
    catalog.clock = Clock()
    state = catalog.states[0]
    for _ in range(5):  # not a fault of the upstream (a 501 is an answer: it is up)
        catalog.answered(state, 501)
        catalog.failed(state, Busy("every connection in use"))
    assert state.circuit.failures == 0 and state.available
    catalog.answered(state, 500)
    catalog.answered(state, 429)  # a rate limit: an answer, the count starts again
    assert state.circuit.failures == 0
    catalog.answered(state, 502)
    catalog.failed(state, ReadTimeout("silent"))
    assert state.circuit.phase is Phase.COOLING and not state.available
    assert state.healthy  # its models may still answer: cooling is not being down
    catalog.failed(state, ConnectFailed("refused"))
    assert not state.healthy and state.last_error == "connect: refused"


def test_the_webhooks_hear_of_a_cooldown_and_of_the_upstream_back(tmp_path):
    settings = make_settings(tmp_path, target_urls="http://127.0.0.1:9", upstream_failures=2)
    catalog = Catalog(settings, cast(UpstreamClient, None))
    clock = catalog.clock = Clock()
    heard: list[str | None] = []
    catalog.on_health = lambda state, error: heard.append(error)
    state = catalog.states[0]
    catalog.answered(state, 500)
    catalog.answered(state, 503)
    assert heard == ["cooling down after 2 failures: HTTP 503"]
    clock.now += settings.upstream_cooldown
    catalog.answered(state, 500)  # the probe failed: down still, nothing new to say
    assert len(heard) == 1
    clock.now += settings.upstream_cooldown_max
    catalog.answered(state, 200)
    assert heard == ["cooling down after 2 failures: HTTP 503", None]


def use(running, deployments) -> None:
    """An alias `chat` over these upstreams, in this order of priority."""
    upstreams, entries = [], []
    for position, (upstream, model) in enumerate(deployments):
        upstreams.append({"id": f"u{position}", "url": upstream.url + "/v1"})
        entries.append({"upstream": f"u{position}", "model": model, "priority": position})
    document = {
        "version": 1,
        "upstreams": upstreams,
        "aliases": [{"name": "chat", "deployments": entries}],
    }
    files.write_json_atomic(running.settings.fleet_file, document)
    catalog = running.runtime.catalog
    eventually(lambda: "chat" in catalog.aliases and len(catalog.states) == len(upstreams))


def served_by(client) -> str:
    answer = client.post("/v1/chat/completions", json={"model": "chat", "messages": []})
    if answer.status_code != 200:
        return str(answer.status_code)
    return str(answer.json()["choices"][0]["message"]["content"]).removeprefix("hello from ")


def test_a_deployment_that_keeps_failing_cools_down_and_is_probed_back_in(
    proxy, upstreams, api_key
):
    failing = upstreams("failing", ["big"], refuse_status=500)
    spare = upstreams("spare", ["small"])
    running = proxy(failing, spare, upstream_failures=3, upstream_cooldown=30.0)
    use(running, [(failing, "big"), (spare, "small")])
    clock = Clock()
    catalog = running.runtime.catalog
    catalog.clock = clock
    with running.client(api_key) as client:
        # A 500 may have run the request: it reaches the client, and is counted.
        assert [served_by(client) for _ in range(3)] == ["500", "500", "500"]
        assert [served_by(client) for _ in range(2)] == ["spare", "spare"]  # cooling
        report = catalog.states[0].report()
        assert (report["circuit"], report["failures"]) == ("cooling", 3)
        assert report["last_failure"] == "HTTP 500"
        # Seen from /healthz and /api/upstreams, once the worker's heartbeat says so.
        eventually(
            lambda: (
                [
                    u["circuit"]
                    for u in status.health(running.settings)["programs"]["proxy"]["upstreams"]
                ]
                == ["cooling", "serving"]
            )
        )
        clock.now += 30.0  # the cooldown is over: the next request probes it, and fails
        asked = len(failing.seen)
        assert served_by(client) == "500"
        assert len(failing.seen) == asked + 1
        assert catalog.states[0].circuit.period == 60.0
        assert served_by(client) == "spare"
        failing.refuse_status = None  # it recovers; after the longer cooldown, the probe passes
        clock.now += 60.0
        assert served_by(client) == "failing"
        assert catalog.states[0].report()["circuit"] == "serving"
        assert served_by(client) == "failing"


def test_timeouts_count_as_failures(proxy, upstreams, api_key):
    hanging = upstreams("hanging", ["big"], hang=True)
    spare = upstreams("spare", ["small"])
    running = proxy(hanging, spare, upstream_failures=2, upstream_read_timeout=0.3)
    use(running, [(hanging, "big"), (spare, "small")])
    running.runtime.catalog.clock = Clock()  # never moves: the cooldown never ends
    with running.client(api_key) as client:
        assert [served_by(client) for _ in range(3)] == ["504", "504", "spare"]
    report = running.runtime.catalog.states[0].report()
    assert report["circuit"] == "cooling"
    assert report["last_failure"].startswith("ReadTimeout")


def _model_for_first_of_two() -> str:
    """A model name whose stable hash sends its requests to the first of two upstreams."""
    return next(f"m{n}" for n in range(100) if zlib.crc32(f"m{n}".encode()) % 2 == 0)


def test_routing_without_an_alias_leaves_a_cooling_upstream_aside(proxy, upstreams, api_key):
    model = _model_for_first_of_two()
    failing = upstreams("failing", [model], refuse_status=503)
    other = upstreams("other", [model])
    running = proxy(failing, other, upstream_failures=2)
    running.runtime.catalog.clock = Clock()
    eventually(lambda: all(s.model_ids for s in running.runtime.catalog.states))
    with running.client(api_key) as client:
        statuses = []
        for _ in range(4):
            answer = client.post("/v1/chat/completions", json={"model": model, "messages": []})
            statuses.append(answer.status_code)
    assert statuses == [503, 503, 200, 200]
    assert json.loads(other.seen[-1].body)["model"] == model


def test_a_probe_that_was_never_sent_gives_its_turn_up(proxy, upstreams, api_key):
    failing = upstreams("failing", ["big"], refuse_status=500)
    spare = upstreams("spare", ["small"])
    running = proxy(failing, spare, upstream_failures=1, queue_limit=0)
    url = failing.url + "/v1"
    files.write_json_atomic(
        running.settings.fleet_file,
        {
            "version": 1,
            "upstreams": [
                {"id": "f", "url": url, "concurrency": 1},
                {"id": "s", "url": spare.url + "/v1"},
            ],
            "aliases": [
                {
                    "name": "chat",
                    "deployments": [
                        {"upstream": "f", "model": "big", "priority": 0},
                        {"upstream": "s", "model": "small", "priority": 1},
                    ],
                }
            ],
        },
    )
    catalog = running.runtime.catalog
    eventually(lambda: "chat" in catalog.aliases and catalog.states[0].gate is not None)
    clock = catalog.clock = Clock()
    circuit = catalog.states[0].circuit
    with running.client(api_key) as client:
        assert served_by(client) == "500"  # cooling from now
        failing.refuse_status = None
        # Another worker's request holds the upstream's one place (counted on the board).
        board = Board(running.settings.board_file)
        with board.holding("upstream:" + url) as slot:
            slot.change_flight(1)
        clock.now += running.settings.upstream_cooldown
        # The probe is claimed, then refused by the full queue before it was sent: the spare
        # answers, and the claim is given up for the next request.
        assert served_by(client) == "spare"
        assert circuit.store.read(circuit.name).prober == 0
        with board.holding("upstream:" + url) as slot:
            slot.change_flight(-1)
        assert served_by(client) == "failing"  # the next request probed it, and it answered
        assert circuit.current() is Phase.SERVING
