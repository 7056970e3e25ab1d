"""Retries within an alias's deployments and fallbacks to other aliases
(services/proxy/fallbacks.py)."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpx
import openai
import pytest

from services.proxy.errors import ProxyError, bad_gateway, upstream_dropped
from services.proxy.fallbacks import Attempt, Route, forward, retry_after
from services.proxy.upstream_limits import AtLimit
from shared import files
from shared.analytics import RequestRow
from tests.conftest import eventually
from tests.upstream import FakeUpstream


def use(
    running, deployments: list[tuple[Any, str]], fallback: list[tuple[Any, str]] | None = None
) -> None:
    """An alias `chat` over these upstreams (FakeUpstream or a URL), in this order of priority;
    with `fallback`, its fallback alias `chat-long` over those."""
    upstreams: list[dict[str, str]] = []

    def entries(pairs: list[tuple[Any, str]]) -> list[dict[str, Any]]:
        listed = []
        for position, (upstream, model) in enumerate(pairs):
            url = upstream if isinstance(upstream, str) else upstream.url
            upstreams.append({"id": f"u{len(upstreams)}", "url": url + "/v1"})
            listed.append({"upstream": upstreams[-1]["id"], "model": model, "priority": position})
        return listed

    aliases: list[dict[str, Any]] = [{"name": "chat", "deployments": entries(deployments)}]
    if fallback is not None:
        aliases[0]["fallback"] = "chat-long"
        aliases.append({"name": "chat-long", "deployments": entries(fallback)})
    document = {"version": 1, "upstreams": upstreams, "aliases": aliases}
    files.write_json_atomic(running.settings.fleet_file, document)
    catalog = running.runtime.catalog
    eventually(
        lambda: len(catalog.aliases) == len(aliases) and len(catalog.states) == len(upstreams)
    )


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
    catalog = running.runtime.catalog
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
    """A stand-in for one deployment's upstream: its answers in order (a status, a status and
    its body, or a failure)."""

    def __init__(
        self, *answers: int | tuple[int, bytes] | ProxyError, retry: str | None = None
    ) -> None:
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
        status, content = answer if isinstance(answer, tuple) else (answer, body)
        headers = [(b"retry-after", upstream.retry.encode())] if upstream.retry else []
        if content[:2] == b"\x1f\x8b":
            headers.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})

    return run


def drive(attempts: list[Attempt] | Route, upstreams, clock_start: float = 100.0):
    sent: list[dict[str, Any]] = []
    now = [clock_start]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def send(message):
        sent.append(message)

    row = RequestRow("r", "k", "u", 0)
    route = attempts if isinstance(attempts, Route) else Route("chat", attempts)
    asyncio.run(forward(route, run_for(upstreams, sent), row, send, lambda: now[0], sleep))
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


# Fallback aliases ------------------------------------------------------------------------------

TOO_LONG = json.dumps(
    {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
).encode()


def chain(
    first: list[Attempt], then: list[Attempt] | None, asked: list[str] | None = None
) -> Route:
    """`chat` over `first`, falling back to `chat-long` over `then` (None: gone); each time the
    fallback is resolved, it says so in `asked`."""
    asked = [] if asked is None else asked

    def fallback() -> Route | None:
        asked.append("chat-long")
        return None if then is None else Route("chat-long", then)

    return Route("chat", first, fallback)


def test_when_every_deployment_refused_the_fallback_alias_answers():
    a, b, long = Upstream(429), Upstream(503), Upstream(200)
    route = chain([attempt(b"a", a), attempt(b"b", b)], [attempt(b"long", long)])
    sent, _ = drive(route, {b"a": a, b"b": b, b"long": long})
    assert (a.asked, b.asked, long.asked) == (1, 1, 1)
    assert [m.get("status") for m in sent] == [200, None]  # the refusals never reached the client
    assert (b"x-llmp-attempts", b"3") in sent[0]["headers"]
    assert sent[1]["body"] == b"long"


def test_a_fallback_does_not_wait_for_a_cooling_deployment():
    only, long = Upstream(429, 200, retry="2"), Upstream(200)
    sent, now = drive(
        chain([attempt(b"only", only)], [attempt(b"long", long)]), {b"only": only, b"long": long}
    )
    assert (only.asked, long.asked, now) == (1, 1, 100.0)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"long"


def test_a_context_too_long_goes_to_the_fallback_at_once():
    a, b, long = Upstream((400, TOO_LONG)), Upstream(200), Upstream(200)
    sent, _ = drive(
        chain([attempt(b"a", a), attempt(b"b", b)], [attempt(b"long", long)]),
        {b"a": a, b"b": b, b"long": long},
    )
    assert (a.asked, b.asked, long.asked) == (1, 0, 1)  # the same alias's others: as short
    assert sent[0]["status"] == 200 and (b"x-llmp-attempts", b"2") in sent[0]["headers"]


def test_a_gzipped_context_error_is_read_too():
    a, long = Upstream((400, gzip.compress(TOO_LONG))), Upstream(200)
    sent, _ = drive(chain([attempt(b"a", a)], [attempt(b"long", long)]), {b"a": a, b"long": long})
    assert long.asked == 1 and sent[0]["status"] == 200


def test_any_other_400_is_the_answer():
    other = json.dumps({"error": {"message": "bad", "code": "invalid_value"}}).encode()
    a, long = Upstream((400, other)), Upstream(200)
    resolved: list[str] = []
    route = chain([attempt(b"a", a)], [attempt(b"long", long)], resolved)
    sent, _ = drive(route, {b"a": a, b"long": long})
    assert long.asked == 0 and resolved == []
    assert sent[0]["status"] == 400 and sent[1]["body"] == other
    assert (b"x-llmp-attempts", b"1") in sent[0]["headers"]


def test_without_a_fallback_left_the_last_answer_held_goes_out_as_it_came():
    a = Upstream((400, TOO_LONG))
    resolved: list[str] = []
    route = chain([attempt(b"a", a)], None, resolved)  # named, but gone (or no upstream there)
    sent, _ = drive(route, {b"a": a})
    assert resolved == ["chat-long"]
    assert sent[0]["status"] == 400 and sent[1]["body"] == TOO_LONG


def test_failures_before_sending_fall_back_and_others_never_do():
    a, long = Upstream(bad_gateway("upstream 1")), Upstream(200)
    sent, _ = drive(chain([attempt(b"a", a)], [attempt(b"long", long)]), {b"a": a, b"long": long})
    assert long.asked == 1 and sent[0]["status"] == 200
    a, long = Upstream(upstream_dropped("upstream 1")), Upstream(200)
    resolved: list[str] = []
    route = chain([attempt(b"a", a)], [attempt(b"long", long)], resolved)
    with pytest.raises(ProxyError) as caught:
        drive(route, {b"a": a, b"long": long})
    assert caught.value.code == "upstream_dropped"
    assert long.asked == 0 and resolved == []


def test_the_fallback_alias_serves_a_context_too_long_through_the_proxy(proxy, upstreams, api_key):
    short = upstreams(
        "short", ["small-ctx"], refuse_status=400, refuse_code="context_length_exceeded"
    )
    spare = upstreams("spare", ["small-ctx-2"])
    long = upstreams("long", ["big-ctx"])
    running = proxy(short, spare, long)
    use(running, [(short, "small-ctx"), (spare, "small-ctx-2")], fallback=[(long, "big-ctx")])
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "a long story"}]
    )
    assert raw.headers["x-llmp-attempts"] == "2"
    assert raw.parse().choices[0].message.content == "hello from long"
    assert json.loads(long.seen[-1].body)["model"] == "big-ctx"
    assert not [s for s in spare.seen if s.path == "/v1/chat/completions"]
    rows = [r for r in running.rows() if r["path"] == "/v1/chat/completions"]
    assert [(r["model"], r["upstream_model"], r["upstream"], r["status"]) for r in rows] == [
        ("chat", "big-ctx", long.url + "/v1", 200)
    ]


def test_the_fallback_alias_serves_when_every_deployment_refused(proxy, upstreams, api_key):
    busy = upstreams("busy", ["a"], refuse_status=503)
    gone = FakeUpstream("gone", ["b"]).start()  # stopped by the test
    long = upstreams("long", ["c"])
    running = proxy(busy, gone, long)
    use(running, [(busy, "a"), (gone, "b")], fallback=[(long, "c")])
    gone.stop()
    with running.client(api_key) as client:
        answer = ask(client)
    assert answer.status_code == 200 and answer.headers["x-llmp-attempts"] == "3"
    assert answer.json()["choices"][0]["message"]["content"] == "hello from long"


def test_a_stream_that_started_is_never_sent_to_the_fallback(proxy, upstreams, api_key):
    cut = upstreams("cut", ["a"], cut_after=1)
    long = upstreams("long", ["c"])
    running = proxy(cut, long)
    use(running, [(cut, "a")], fallback=[(long, "c")])
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    stream = client.chat.completions.create(model="chat", messages=[], stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    dropping = upstreams("dropping", ["d"], drop=True)  # may have run it: not sent again
    use(running, [(dropping, "d")], fallback=[(long, "c")])
    with running.client(api_key) as plain:
        assert ask(plain).json()["error"]["code"] == "upstream_dropped"
    assert not [s for s in long.seen if s.path == "/v1/chat/completions"]


def test_deployments_at_their_limit_are_no_attempts_and_the_soonest_limit_is_the_answer():
    late, soon = AtLimit("requests", "1 a minute", 40.0), AtLimit("tokens", "9 a minute", 3.0)
    a, b, c = Upstream(late), Upstream(soon), Upstream(200)
    sent, _ = drive(
        [attempt(b"a", a), attempt(b"b", b), attempt(b"c", c)], {b"a": a, b"b": b, b"c": c}
    )
    assert sent[0]["status"] == 200 and (b"x-llmp-attempts", b"1") in sent[0]["headers"]
    a, b = Upstream(late), Upstream(soon)
    with pytest.raises(AtLimit) as caught:
        drive([attempt(b"a", a), attempt(b"b", b)], {b"a": a, b"b": b})
    assert caught.value is soon and (b"retry-after", b"3") in caught.value.headers
    assert (b"x-llmp-attempts", b"0") in caught.value.headers  # none was asked
    # With a fallback alias, its deployments take what every one of the first refused.
    a, long = Upstream(late), Upstream(200)
    sent, _ = drive(chain([attempt(b"a", a)], [attempt(b"long", long)]), {b"a": a, b"long": long})
    assert long.asked == 1 and sent[0]["status"] == 200
