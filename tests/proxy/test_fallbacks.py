"""Retries and fallbacks within an alias's deployments (services/proxy/fallbacks.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from services.proxy.errors import ProxyError, bad_gateway, upstream_dropped
from services.proxy.fallbacks import Attempt, forward, retry_after
from shared import files
from shared.analytics import RequestRow
from tests.conftest import eventually
from tests.upstream import FakeUpstream


def use(running, deployments: list[tuple[Any, str]]) -> None:
    """An alias `chat` over these upstreams (FakeUpstream or a URL), in this order of priority."""
    upstreams, entries = [], []
    for position, (upstream, model) in enumerate(deployments):
        url = upstream if isinstance(upstream, str) else upstream.url
        upstreams.append({"id": f"u{position}", "url": url + "/v1"})
        entries.append({"upstream": f"u{position}", "model": model, "priority": position})
    document = {
        "version": 1,
        "upstreams": upstreams,
        "aliases": [{"name": "chat", "deployments": entries}],
    }
    files.write_json_atomic(running.settings.fleet_file, document)
    catalog = running.app.catalog
    eventually(lambda: "chat" in catalog.aliases and len(catalog.states) == len(upstreams))


def ask(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": "chat", "messages": []})


def test_a_429_goes_to_the_next_deployment_and_its_retry_after_cools_it(proxy, upstreams, api_key):
    limited = upstreams("limited", ["big"], refuse_status=429, retry_after="30")
    spare = upstreams("spare", ["small"])
    running = proxy(limited, spare)
    use(running, [(limited, "big"), (spare, "small")])
    with running.client(api_key) as client:
        answer = ask(client)
        assert answer.status_code == 200
        assert answer.headers["x-llmp-attempts"] == "2"
        assert answer.json()["choices"][0]["message"]["content"] == "hello from spare"
        assert json.loads(spare.seen[-1].body)["model"] == "small"
        asked = len(limited.seen)
        again = ask(client)  # the first is cooling down for 30 s: not asked at all
        assert again.headers["x-llmp-attempts"] == "1"
        assert len(limited.seen) == asked
    rows = [r for r in running.rows() if r["path"] == "/v1/chat/completions"]
    assert [(r["status"], r["upstream"], r["upstream_model"]) for r in rows] == [
        (200, spare.url + "/v1", "small"),
        (200, spare.url + "/v1", "small"),
    ]


def test_a_refused_connection_goes_to_the_next_deployment(proxy, upstreams, api_key):
    gone = FakeUpstream("gone", ["big"]).start()  # stopped by the test
    spare = upstreams("spare", ["small"])
    running = proxy(gone, spare, models_refresh_seconds=3600.0)
    use(running, [(gone, "big"), (spare, "small")])
    catalog = running.app.catalog
    eventually(lambda: all(s.last_ok for s in catalog.states))  # both known healthy
    gone.stop()  # and then down, before anyone noticed
    with running.client(api_key) as client:
        answer = ask(client)
    assert answer.status_code == 200 and answer.headers["x-llmp-attempts"] == "2"
    assert not catalog.states[0].healthy


def test_a_request_that_may_have_run_is_never_sent_to_another_upstream(proxy, upstreams, api_key):
    dropping = upstreams("dropping", ["big"], drop=True)
    spare = upstreams("spare", ["small"])
    running = proxy(dropping, spare)
    use(running, [(dropping, "big"), (spare, "small")])
    with running.client(api_key) as client:
        answer = ask(client)
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_dropped"
    assert not [s for s in spare.seen if s.path == "/v1/chat/completions"]


def test_the_last_429_reaches_the_client_as_the_upstream_sent_it(proxy, upstreams, api_key):
    first = upstreams("first", ["big"], refuse_status=429, retry_after="3600")
    second = upstreams("second", ["small"], refuse_status=503)
    running = proxy(first, second)
    use(running, [(first, "big"), (second, "small")])
    with running.client(api_key) as client:
        answer = ask(client)
    assert answer.status_code == 503
    assert answer.json()["error"]["message"] == "second refused"
    assert answer.headers["x-llmp-attempts"] == "2"


# The loop itself, with an injected clock ------------------------------------------------------


class Upstream:
    """A stand-in for one deployment's upstream: its answers in order."""

    def __init__(self, *answers: int | ProxyError, retry: str | None = None) -> None:
        self.answers = list(answers)
        self.retry = retry
        self.cool_until = 0.0
        self.asked = 0


def run_for(upstreams: dict[bytes, Upstream], sent: list[dict[str, Any]]):
    async def run(plan, body, send):
        upstream = upstreams[body]
        upstream.asked += 1
        answer = upstream.answers.pop(0)
        if isinstance(answer, ProxyError):
            raise answer
        headers = [(b"retry-after", upstream.retry.encode())] if upstream.retry else []
        await send({"type": "http.response.start", "status": answer, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return run


def drive(attempts: list[Attempt], upstreams, clock_start: float = 100.0):
    sent: list[dict[str, Any]] = []
    now = [clock_start]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def send(message):
        sent.append(message)

    row = RequestRow("r", "k", "u", 0)
    asyncio.run(forward(attempts, run_for(upstreams, sent), row, send, lambda: now[0], sleep))
    return sent, now[0]


def attempt(name: bytes, upstream: Upstream) -> Attempt:
    return Attempt(upstream, name, name.decode())  # type: ignore[arg-type]


def test_a_short_retry_after_is_waited_for_when_no_other_deployment_is_left():
    only = Upstream(429, 200, retry="2")
    sent, now = drive([attempt(b"only", only)], {b"only": only})
    assert only.asked == 2 and now == 102.0
    assert sent[0]["status"] == 200 and (b"x-llmp-attempts", b"2") in sent[0]["headers"]


def test_attempts_stop_at_the_limit_with_the_last_answer():
    only = Upstream(429, 429, 429, 429, 429, retry="1")
    sent, _ = drive([attempt(b"only", only)], {b"only": only})
    assert only.asked == 4
    assert sent[0]["status"] == 429 and (b"x-llmp-attempts", b"4") in sent[0]["headers"]
    assert sent[1]["body"] == b"only"


def test_failures_before_sending_move_on_and_others_end_it():
    a, b = Upstream(bad_gateway("upstream 1")), Upstream(200)
    sent, _ = drive([attempt(b"a", a), attempt(b"b", b)], {b"a": a, b"b": b})
    assert sent[0]["status"] == 200 and b.asked == 1
    a, b = Upstream(upstream_dropped("upstream 1")), Upstream(200)
    with pytest.raises(ProxyError) as caught:
        drive([attempt(b"a", a), attempt(b"b", b)], {b"a": a, b"b": b})
    assert caught.value.code == "upstream_dropped" and b.asked == 0


def test_retry_after_as_seconds_or_a_date():
    assert retry_after([(b"retry-after", b"7")], 0.0) == 7.0
    date = b"Thu, 01 Jan 1970 00:01:40 GMT"
    assert retry_after([(b"retry-after", date)], 90.0) == 10.0
    assert retry_after([(b"retry-after", b"soon")], 0.0) is None
    assert retry_after([], 0.0) is None


def test_a_deployment_cooling_for_long_is_still_asked_when_it_is_the_only_one():
    only = Upstream(200)
    only.cool_until = 100.0 + 3600  # an earlier request's Retry-After: prefer others, if any
    sent, now = drive([attempt(b"only", only)], {b"only": only})
    assert only.asked == 1 and now == 100.0 and sent[0]["status"] == 200
