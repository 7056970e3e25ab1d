"""services/proxy/limits.py: per-key policy at the proxy (enabled, expiry, models, limits), and
the usage it can trust."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import struct
import time
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from services.proxy.board import IDLE_AT, NAME, SLOT, SLOTS
from shared.apikeys import ApiKey, Limits, format_time, write_keys
from tests.conftest import eventually
from tests.proxy.test_app import analytics_for, error_of, raw_chat


def until_applied(client: httpx.Client, body: dict, header: str, value: str) -> None:
    """Requests until the key's new limits show in the answers (each worker reloads the key
    file on its own, within a second)."""
    eventually(lambda: client.post("/v1/chat/completions", json=body).headers.get(header) == value)


def with_policy(running, key: ApiKey, **changes) -> ApiKey:
    changed = dataclasses.replace(key, **changes)
    write_keys(running.settings.apikeys_file, [changed])
    return changed


def test_a_disabled_or_expired_key_is_refused_and_recorded(upstreams, proxy, api_key):
    running = proxy(upstreams("a", ["model-a"]))
    body = {"model": "model-a", "messages": []}
    with running.client(api_key) as client:

        def refused_with(code: str) -> httpx.Response:
            def check() -> httpx.Response | None:
                r = client.post("/v1/chat/completions", json=body)
                return r if r.status_code == 401 and error_of(r)["code"] == code else None

            return eventually(check)

        assert client.post("/v1/chat/completions", json=body).status_code == 200
        with_policy(running, api_key, enabled=False)
        assert refused_with("api_key_disabled").headers["www-authenticate"] == "Bearer"
        past = format_time(datetime.now(UTC) - timedelta(seconds=1))
        with_policy(running, api_key, expiresAt=past)
        r = refused_with("api_key_expired")
        assert past in error_of(r)["message"]
        future = format_time(datetime.now(UTC) + timedelta(days=1))
        with_policy(running, api_key, expiresAt=future)
        eventually(lambda: client.post("/v1/chat/completions", json=body).status_code == 200)
    row = analytics_for(running, r.headers["x-request-id"])
    assert (row["status"], row["error"], row["key_id"]) == (401, "api_key_expired", api_key.id)


def test_a_key_sees_and_uses_only_its_models(upstreams, proxy, api_key):
    a = upstreams("a", ["llama3:8b", "llama3:70b", "qwen2.5:7b", "mistral"])
    running = proxy(a)
    with_policy(running, api_key, models=("llama3:*", "mistral"))
    with running.client(api_key) as client:
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert listed == ["llama3:8b", "llama3:70b", "mistral"]
        ok = client.post("/v1/chat/completions", json={"model": "llama3:70b", "messages": []})
        assert ok.status_code == 200
        refused = client.post("/v1/chat/completions", json={"model": "qwen2.5:7b"})
        assert refused.status_code == 403 and error_of(refused)["code"] == "model_not_allowed"
        assert client.get("/v1/models/qwen2.5:7b").status_code == 403
        assert client.get("/v1/models/mistral").json()["id"] == "mistral"
        # "mistral" is a whole pattern, not a prefix
        assert (
            client.post("/v1/chat/completions", json={"model": "mistral-large"}).status_code == 403
        )
        nameless = client.post("/v1/chat/completions", json={"messages": []})
        assert nameless.status_code == 403 and error_of(nameless)["code"] == "model_required"
    assert [s.path for s in a.seen if s.path != "/v1/models"] == ["/v1/chat/completions"]


def test_a_key_limited_to_models_cannot_name_another_one_the_upstream_reads(
    upstreams, proxy, api_key
):
    allowed = upstreams("a", ["allowed"])
    forbidden = upstreams("b", ["forbidden"])
    running = proxy(allowed, forbidden)
    with_policy(running, api_key, models=("allowed",))
    sdk = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    hello: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    eventually(lambda: forbidden_refused(sdk))
    assert sdk.chat.completions.create(model="allowed", messages=hello).model == "allowed"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="allowed", messages=hello, extra_body={"Model": "x"})
    assert caught.value.code == "ambiguous_model"
    escaped = b'{"\\u006dodel": "forbidden", "messages": [], "metadata": {"model": "allowed"}}'
    bodies = {
        escaped: 403,
        b'{"model": "allowed", "messages": [], "model": "forbidden"}': 400,
        b'{"messages": [], "model": "allowed", "m\\u006fdel": "forbidden"}': 400,
        b'{"model": "allowed", "MODEL": "forbidden"}': 400,
    }
    with running.client(api_key) as client:
        for body, status in bodies.items():
            r = client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == status, body
            assert error_of(r)["code"] in ("model_not_allowed", "ambiguous_model")
        form = (
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nallowed\r\n'
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nforbidden\r\n--b--\r\n'
        )
        r = client.post(
            "/v1/audio/transcriptions",
            content=form,
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert r.status_code == 400 and error_of(r)["code"] == "ambiguous_model"
    assert [s.body for s in forbidden.seen if s.path != "/v1/models"] == []
    models = [row["model"] for row in running.rows()]
    assert "forbidden" in models and models.count("allowed") == 1  # the one served


def forbidden_refused(sdk: openai.OpenAI) -> bool:
    try:
        sdk.chat.completions.create(model="forbidden", messages=[])
    except openai.PermissionDeniedError:
        return True
    return False


def stream_bytes(url: str, headers: dict[str, str], body: dict) -> bytes:
    with httpx.Client(timeout=10) as client:
        r = client.post(url + "/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200
        return r.content


def test_streamed_usage_is_recorded_and_the_client_gets_exactly_what_it_asked_for(
    upstreams, proxy, api_key
):
    a = upstreams("a", ["model-a"], chunks=4)
    running = proxy(a)
    auth = {"Authorization": f"Bearer {api_key.key}"}
    plain = {"model": "model-a", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with_usage = {**plain, "stream_options": {"include_usage": True}}
    seen = []
    for body in (plain, with_usage):
        direct = stream_bytes(a.url, {}, body)
        through = stream_bytes(running.url, auth, body)
        assert through == direct  # byte for byte
        assert json.loads(a.seen[-1].body)["stream_options"] == {"include_usage": True}
        seen.append(through)
    assert b'"usage"' not in seen[0]  # the client that did not ask gets no usage...
    assert seen[1].count(b'"usage": null') == 4 and b'"usage": {"prompt_tokens": 11' in seen[1]
    rows = eventually(lambda: len(r := running.rows()) == 2 and r)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["usage_estimated"]) for r in rows] == [
        (11, 4, 0),
        (11, 4, 0),
    ]


def test_an_upstream_without_usage_is_missing_not_zero_nor_estimated(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"], chunks=4, usage=False)
    running = proxy(a)
    body = {"model": "model-a", "stream": True}
    direct = stream_bytes(a.url, {}, body)
    assert stream_bytes(running.url, {"Authorization": f"Bearer {api_key.key}"}, body) == direct
    row = eventually(lambda: running.rows())[0]
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_estimated"]) == (
        None,
        None,
        0,
    )


def test_asking_for_usage_can_be_turned_off(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"], chunks=2)
    running = proxy(a, stream_usage=False)
    body = {"model": "model-a", "stream": True}
    stream_bytes(running.url, {"Authorization": f"Bearer {api_key.key}"}, body)
    assert "stream_options" not in json.loads(a.seen[-1].body)


def test_a_stream_cut_by_its_client_records_an_estimate(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"], pace=0.1, chunks=100)
    running = proxy(a)
    body = json.dumps({"model": "model-a", "stream": True}).encode()
    received = b""
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(raw_chat(api_key, body))
        deadline = time.monotonic() + 5
        while received.count(b"data: ") < 6 and time.monotonic() < deadline:
            received += sock.recv(65536)
    delivered = received.count(b"data: ")
    row = eventually(lambda: running.rows())[0]
    assert row["error"] == "client disconnected" and row["usage_estimated"] == 1
    assert row["prompt_tokens"] is None
    assert delivered <= row["completion_tokens"] <= delivered + 2  # what left before the cut


class Clock:
    """The limiter's wall clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def stopped_clock(running) -> Clock:
    """Stop the running proxy's limiter clock, a minute on: every bucket has drained."""
    clock = Clock()
    clock.now += 60
    running.runtime.limiter.clock = clock
    return clock


def test_rate_headers_refusals_and_their_end(upstreams, proxy, api_key):
    running = proxy(upstreams("a", ["model-a"]))
    with_policy(running, api_key, limits=Limits(requestsPerMinute=120, tokensPerMinute=100_000))
    body = {"model": "model-a", "messages": []}
    with running.client(api_key) as client:
        until_applied(client, body, "x-ratelimit-limit-requests", "120")
        clock = stopped_clock(running)
        answers = [client.post("/v1/chat/completions", json=body) for _ in range(130)]
        assert answers[0].headers["x-ratelimit-limit-tokens"] == "100000"
        assert [r.status_code for r in answers] == [200] * 120 + [429] * 10
        r = answers[120]
        assert error_of(r)["code"] == "rate_limit_exceeded" and error_of(r)["type"] == "requests"
        assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("1", "500")  # 2 a s
        clock.now += 0.5
        again = client.post("/v1/chat/completions", json=body)
        assert again.status_code == 200 and again.headers["x-ratelimit-remaining-requests"] == "0"
        assert client.post("/v1/chat/completions", json=body).status_code == 429


def test_tokens_are_charged_from_usage_and_refused_when_spent(upstreams, proxy, api_key):
    running = proxy(upstreams("a", ["model-a"]))
    with_policy(running, api_key, limits=Limits(tokensPerMinute=600, tokensPerDay=10_000))
    body = {"model": "model-a", "messages": []}
    with running.client(api_key) as client:
        until_applied(client, body, "x-ratelimit-limit-tokens", "600")
        stopped_clock(running)
        answers: list[httpx.Response] = []
        while len(answers) < 100 and (not answers or answers[-1].status_code == 200):
            answers.append(client.post("/v1/chat/completions", json=body))
    # 600 tokens, 10 an answer: 60 answers (one more if an answer's tokens were charged just
    # after the next request was let in).
    assert 60 <= len(answers) - 1 <= 61, len(answers)
    tokens = answers[-1]
    assert error_of(tokens)["type"] == "tokens"
    assert "600 tokens per minute" in error_of(tokens)["message"]
    assert "x-ratelimit-limit-requests" not in tokens.headers
    assert int(answers[-2].headers["x-ratelimit-remaining-tokens"]) < 20  # its 10 spent the rest


def test_tokens_per_day_refuse_until_the_day_has_drained(upstreams, proxy, api_key):
    running = proxy(upstreams("a", ["model-a"]))
    with_policy(running, api_key, limits=Limits(tokensPerDay=50))
    body = {"model": "model-a", "messages": []}
    with running.client(api_key) as client:
        until_applied(client, body, "x-ratelimit-limit-tokens", "50")
        answers = [client.post("/v1/chat/completions", json=body) for _ in range(6)]
    assert [r.status_code for r in answers].count(200) == 4  # 10 tokens each, 50 a day
    refused = answers[-1]
    assert refused.status_code == 429 and "50 tokens per day" in error_of(refused)["message"]
    assert int(refused.headers["retry-after"]) > 60  # a token comes back every 28.8 minutes
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"


def test_a_full_limits_board_is_an_openai_503_not_a_crash(upstreams, proxy, api_key):
    running = proxy(upstreams("a", ["model-a"]))
    board = running.settings.board_file
    # every slot taken by a name that keeps it for a long time
    idle_at = struct.pack("<d", time.time() + 3600)
    filled = b"".join(
        os.urandom(NAME) + bytes(IDLE_AT - NAME) + idle_at + bytes(SLOT - IDLE_AT - 8)
        for _ in range(SLOTS - 1)
    )
    with open(board, "r+b") as f:
        f.seek(SLOT)
        f.write(filled)
    with_policy(running, api_key, limits=Limits(requestsPerMinute=100))
    with running.client(api_key) as client:

        def refused() -> httpx.Response | None:
            r = client.post("/v1/chat/completions", json={"model": "model-a"})
            return r if r.status_code == 503 else None

        r = eventually(refused)
    assert error_of(r)["code"] == "limits_board_full" and r.headers["retry-after"] == "5"
    row = analytics_for(running, r.headers["x-request-id"])
    assert (row["status"], row["error"]) == (503, "limits_board_full")
