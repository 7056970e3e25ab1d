"""Latency-aware choice (services/proxy/latency.py): the average alone, with a clock of the
test's, the order it gives an alias's deployments, and the proxy against upstreams of known
pace, one of which starts its streams at once and sends their first token late."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.proxy.aliases import order
from services.proxy.latency import ALPHA, Latencies
from shared.fleet import Alias, Deployment
from tests.proxy.test_aliases import catalog_of, first, models_of, weighted_against


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Answer:
    """An upstream's answer whose body comes when the test says."""

    def __init__(self, clock: Clock, status: int = 200) -> None:
        self.clock = clock
        self.status = status
        self.headers: list[tuple[bytes, bytes]] = []
        self.ended = ""

    def header(self, name: bytes) -> bytes:
        return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        self.clock.now += 0.8  # the first token, 0.8 s after the request went out
        yield b"data: 1\n\n"
        self.clock.now += 5.0  # the rest is not the first token
        yield b"data: 2\n\n"

    def release(self) -> None:
        self.ended = "released"

    def close(self) -> None:
        self.ended = "closed"


def relay(answer) -> list[bytes]:
    async def read() -> list[bytes]:
        return [chunk async for chunk in answer.chunks()]

    return asyncio.run(read())


def latency_alias(*deployments: Deployment) -> Alias:
    return Alias(name="chat", strategy="latency", deployments=list(deployments))


def test_time_to_first_token_is_averaged_for_watched_upstreams_only():
    clock = Clock()
    latencies = Latencies(clock)
    latencies.watch([latency_alias(Deployment(upstream="u1", model="m"))])
    sent = clock.now
    timed = latencies.timed("u1", "m", Answer(clock), sent)
    assert relay(timed) == [b"data: 1\n\n", b"data: 2\n\n"]
    timed.release()
    assert latencies.of("u1", "m") == pytest.approx(0.8)
    sent = clock.now
    relay(latencies.timed("u1", "m", Answer(clock), sent))
    assert latencies.of("u1", "m") == pytest.approx(0.8)
    latencies.observe("u1", "m", 1.8)
    assert latencies.of("u1", "m") == pytest.approx(0.8 + ALPHA * 1.0)
    # Not watched, another model, or an error: passed on as it is, and not measured.
    unwatched, error = Answer(clock), Answer(clock, status=500)
    assert latencies.timed("u2", "m", unwatched, sent) is unwatched
    assert latencies.timed("u1", "m", error, sent) is error
    assert latencies.of("u2", "m") is None and latencies.of("u1", "other") is None


def test_the_soonest_first_those_not_measured_before_them(tmp_path):
    catalog = catalog_of(tmp_path, 3)
    alias = latency_alias(
        Deployment(upstream="u1", model="a"),
        Deployment(upstream="u2", model="b"),
        Deployment(upstream="u3", model="c", priority=1),
    )
    catalog.latencies.watch([alias])
    assert models_of(order(catalog, alias, first, now=0.0)) == ["a", "b", "c"]  # as drawn
    catalog.latencies.observe("u1", "a", 0.9)
    assert models_of(order(catalog, alias, first, now=0.0)) == ["b", "a", "c"]  # b: unknown
    catalog.latencies.observe("u2", "b", 0.2)
    catalog.latencies.observe("u3", "c", 0.01)  # a later priority stays later
    assert models_of(order(catalog, alias, first, now=0.0)) == ["b", "a", "c"]
    catalog.states[1].healthy = False  # the soonest, but down
    assert models_of(order(catalog, alias, first, now=0.0)) == ["a", "c", "b"]


def test_requests_go_to_the_deployment_whose_first_token_comes_soonest(tmp_path, proxy, upstreams):
    # Both start their streams at once; `thinker` sends the first token 1.5 s later.
    thinker = upstreams("thinker", ["big"], think=1.5)
    quick = upstreams("quick", ["small"])
    client = weighted_against(tmp_path, proxy, "latency", thinker, quick)

    def ask() -> str:
        stream = client.chat.completions.create(model="chat", messages=[], stream=True)
        return next(chunk.model for chunk in stream)

    # Neither is measured yet: the first goes where the draw says, the second to the other.
    assert sorted([ask(), ask()]) == ["big", "small"]
    assert [ask() for _ in range(5)] == ["small"] * 5
    streams = [s for s in thinker.seen if s.path.endswith("/chat/completions")]
    assert len(streams) == 1
