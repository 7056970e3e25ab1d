"""An upstream's request and token limits (services/proxy/upstream_limits.py): alone on a board
with a clock of the test's, through the proxy in the test's process, and through
`python -m services.proxy` with two workers, whose counts are one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import openai
import pytest

from services.proxy.board import Board
from services.proxy.board_counters import BoardCounters
from services.proxy.upstream_limits import AtLimit, Rates, UpstreamLimits, sooner
from shared import files
from shared.apikeys import ApiKey
from shared.targets import Upstream
from tests.conftest import eventually
from tests.proxy.fleet_workers import alias, ask, completions, fleet_workers, ready
from tests.proxy.test_sharing import worker_ids
from tests.upstream import FakeUpstream

__all__ = ["fleet_workers"]  # the fixture


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def upstream(rpm: int = 0, tpm: int = 0) -> Upstream:
    return Upstream(
        "http://gpu:8000", "/v1", requests_per_minute=rpm, tokens_per_minute=tpm, id="gpu"
    )


def test_an_upstream_without_limits_never_touches_the_board():
    assert Rates.of(upstream()) is None
    rates = Rates.of(upstream(rpm=5))
    assert rates is not None and rates.tokens is None and rates.name == "upstream-rate:gpu"


def on_board(tmp_path, clock: Clock) -> UpstreamLimits:
    return UpstreamLimits(BoardCounters(Board(tmp_path / "board"), clock))


def take(limits: UpstreamLimits, rates: Rates) -> None:
    asyncio.run(limits.take(rates))


def test_requests_per_minute_drain_and_say_when_to_come_back(tmp_path):
    clock = Clock()
    limits = on_board(tmp_path, clock)
    rates = Rates.of(upstream(rpm=2))
    assert rates is not None
    take(limits, rates)
    take(limits, rates)
    with pytest.raises(AtLimit) as refused:
        take(limits, rates)
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.wait == pytest.approx(30.0)  # one of 2 drains in 30 s
    assert dict(refused.value.headers)[b"retry-after"] == b"30"
    clock.now += 30.0
    take(limits, rates)  # one drained: one more


def test_tokens_are_charged_when_an_answer_ends(tmp_path):
    clock = Clock()
    limits = on_board(tmp_path, clock)
    rates = Rates.of(upstream(tpm=100))
    assert rates is not None
    take(limits, rates)
    limits.charge(rates, 150)  # one long answer overdraws it
    with pytest.raises(AtLimit) as refused:
        take(limits, rates)
    assert refused.value.type == "tokens"
    assert refused.value.wait == pytest.approx(30.6)  # 51 of 100 a minute must drain
    clock.now += 31.0
    take(limits, rates)


def test_the_soonest_refusal_is_the_answer():
    late, early = AtLimit("requests", "1", 30.0), AtLimit("tokens", "1", 2.0)
    assert sooner(sooner(None, late), early) is early
    assert sooner(early, late) is early


def one_a_minute(a: FakeUpstream, b: FakeUpstream) -> list[dict]:
    """Upstreams `a` and `b`, each taking one request a minute."""
    return [
        {"id": "a", "url": a.url + "/v1", "requestsPerMinute": 1},
        {"id": "b", "url": b.url + "/v1", "requestsPerMinute": 1},
    ]


def refused_at_their_limits(
    client: openai.OpenAI, model: str, *upstreams: FakeUpstream
) -> Mapping[str, str]:
    """Ask for `model` when every upstream of it is at its request limit: a 429 in OpenAI's
    shape with Retry-After, and nothing sent to any of them. Returns the 429's headers."""
    asked = [completions(u) for u in upstreams]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=model, messages=[])
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "rate_limit_exceeded"
    assert error["type"] == "requests" and "upstreams of this model" in error["message"]
    headers = refused.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert 0 < int(headers["retry-after-ms"]) <= 60_000
    assert [completions(u) for u in upstreams] == asked  # nothing sent
    return headers


# Through the proxy --------------------------------------------------------------------------


def test_an_alias_whose_every_deployment_is_at_its_limit_answers_429_having_tried_none(
    proxy, upstreams, api_key
):
    a = upstreams("a", ["model-a"])
    b = upstreams("b", ["model-a"])
    running = proxy(a, b)
    document = {"version": 1, "upstreams": one_a_minute(a, b), "aliases": [alias("a", "b")]}
    files.write_json_atomic(running.settings.fleet_file, document)
    catalog = running.runtime.catalog
    eventually(lambda: len(catalog.aliases) == 1 and len(catalog.states) == 2)
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    for _ in range(2):  # the first to a, which is then at its limit, the second to b
        answer = client.chat.completions.with_raw_response.create(model="chat", messages=[])
        assert answer.headers["x-llmp-attempts"] == "1"
    assert (completions(a), completions(b)) == (1, 1)
    headers = refused_at_their_limits(client, "chat", a, b)
    assert headers["x-llmp-attempts"] == "0"  # a deployment at its limit is not asked


# Through the workers ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("limit", "drain"),
    [
        ({"requestsPerMinute": 2}, 30),  # one of 2 drains every 30 s
        # Every answer reports 7 + 3 tokens: two (20) overdraw 15; 6 must drain before the
        # next (24 s).
        ({"tokensPerMinute": 15}, 24),
    ],
    ids=["requests", "tokens"],
)
def test_a_deployment_at_its_limit_is_passed_over_across_workers(
    upstreams, fleet_workers, limit, drain
):
    a = upstreams("a", ["model-a"])
    b = upstreams("b", ["model-a"])
    running = fleet_workers(
        [{"id": "a", "url": a.url + "/v1", **limit}, {"id": "b", "url": b.url}],
        aliases=[alias("a", "b")],
    )
    key = ApiKey.new("fleet")
    ready(running, key)
    started = time.time()
    answers = [ask(running, key) for _ in range(20)]
    elapsed = time.time() - started
    assert {r.status_code for r in answers} == {200}
    assert {r.headers["x-llmp-attempts"] for r in answers} == {"1"}  # a limit is no attempt
    # a's limit is counted once for both workers.
    assert 2 <= completions(a) <= 2 + int(elapsed / drain), (completions(a), elapsed)
    assert completions(a) + completions(b) == 20
    eventually(lambda: len(worker_ids(running.rows())) == 2)  # both took requests


@pytest.mark.slow
def test_when_every_upstream_is_at_its_limit_the_client_gets_a_429(upstreams, fleet_workers):
    a = upstreams("a", ["model-a"])
    b = upstreams("b", ["model-a"])
    running = fleet_workers(one_a_minute(a, b))  # no alias: both serve model-a as they list it
    key = ApiKey.new("fleet")
    ready(running, key)
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=key.key, max_retries=0)
    eventually(lambda: len(client.models.list().data) == 1)
    for _ in range(2):  # one to each: whichever comes first, the other is left
        client.chat.completions.create(model="model-a", messages=[])
    assert (completions(a), completions(b)) == (1, 1)
    refused_at_their_limits(client, "model-a", a, b)
