"""The full stack (supervisord, nginx, api, proxy with two workers, certd) with real clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import sqlite3
import time
from typing import Any

import httpx
import openai
import pytest

from services.proxy.errors import payload_too_large
from shared.apikeys import ApiKey
from tests.conftest import eventually
from tests.stack.conftest import Stack


def rows(stack: Stack, where: str = "1", *args: Any) -> list[dict[str, Any]]:
    db = sqlite3.connect(stack.data / "analytics.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM requests WHERE {where}", args)]
    finally:
        db.close()


def test_healthz_through_nginx_reports_every_program(stack):
    r = httpx.get(stack.url + "/healthz")
    assert r.status_code == 200
    programs = r.json()["programs"]
    assert programs["proxy"]["processes"] == 2
    assert programs["certd"]["nginx"]["ok"] is True
    assert [u["healthy"] for u in programs["proxy"]["upstreams"]] == [True, True, True]


def test_openai_sdk_sync(stack, fleet, key):
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key.key, max_retries=0, timeout=10)
    chat = client.chat.completions.create(
        model="model-b", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "hello from b"
    assert chat.usage is not None and chat.usage.total_tokens == 10
    chunks = list(
        client.chat.completions.create(
            model="model-a",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "a0 a1 a2 a3 a4 "
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    completion = client.completions.create(model="model-a", prompt="hi")
    assert completion.choices[0].text == "hello from a"
    embedding = client.embeddings.create(model="embed-b", input="hi")
    assert embedding.data[0].embedding == [0.1, 0.2, 0.3]
    assert [m.id for m in client.models.list()] == [
        "model-a",
        "shared",
        "model-b",
        "embed-b",
        "slow-model",
    ]
    assert client.models.retrieve("embed-b").owned_by == "b"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[])
    assert missing.value.code == "model_not_found"
    # The keyed upstream got its own key, never the client's.
    seen = [s for s in fleet["a"].seen if s.path == "/v1/chat/completions"]
    assert seen and all(s.headers["Authorization"] == "Bearer key-of-a" for s in seen)


def test_openai_sdk_async(stack, key):
    async def scenario() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=stack.url + "/v1", api_key=key.key, max_retries=0, timeout=10
        ) as client:

            async def one(model: str) -> str:
                stream = await client.chat.completions.create(model=model, messages=[], stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream])

            return await asyncio.gather(*(one(m) for m in ["model-a", "model-b"] * 5))

    results = asyncio.run(scenario())
    assert results == ["a0 a1 a2 a3 a4 ", "b0 b1 b2 b3 b4 "] * 5


def test_streaming_is_not_buffered_anywhere(stack, fleet, key):
    """The slow upstream sends a chunk every 200 ms: the first reaches the client through nginx
    and the proxy while the upstream is still streaming (anything buffering would hold it until
    the end)."""
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key.key, max_retries=0)
    streaming = []
    for _ in client.chat.completions.create(model="slow-model", messages=[], stream=True):
        streaming.append(fleet["slow"].active)
    assert len(streaming) == 10
    assert streaming[0] == 1  # the upstream had not finished when the first chunk arrived


def test_client_disconnect_through_nginx_closes_upstream_and_is_recorded(stack, fleet, key):
    slow = fleet["slow"]
    closed_before = len(slow.stream_closed)
    body = json.dumps({"model": "slow-model", "stream": True, "messages": []}).encode()
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + key.key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)
    # Left alone, the stream would end well (in 2 s); closed, it shows as a client gone.
    eventually(lambda: len(slow.stream_closed) > closed_before)
    failed = eventually(
        lambda: rows(
            stack, "key_id = ? AND model = 'slow-model' AND error = 'client disconnected'", key.id
        )
    )
    assert failed[0]["end_ms"] is None and failed[0]["status"] == 200


def test_every_request_gets_an_analytics_row(stack, fleet, key):
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key.key, max_retries=0)
    for _ in range(20):
        client.chat.completions.create(model="shared", messages=[])
    recorded = eventually(
        lambda: len(rows(stack, "key_id = ? AND model = 'shared'", key.id)) == 20 or None
    )
    assert recorded
    # Each row names the upstream that answered, one of those that serve the model.
    used = {r["upstream"] for r in rows(stack, "key_id = ? AND model = 'shared'", key.id)}
    assert used and used <= {fleet["a"].url + "/v1", fleet["b"].url + "/v1"}


def test_key_changes_reach_every_worker_within_a_second(stack, key):
    other = ApiKey.new("other")
    # A new connection per request, straight to the proxy port: the kernel spreads them over
    # the workers.
    fresh = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

    def statuses(k: ApiKey) -> set[int]:
        return {
            fresh.get(
                f"http://127.0.0.1:{stack.proxy_port}/v1/models",
                headers={"Authorization": f"Bearer {k.key}"},
            ).status_code
            for _ in range(20)
        }

    def settles_within_a_second(check) -> None:
        changed = time.monotonic()
        while True:
            sampled = time.monotonic()
            if check():
                return
            assert sampled - changed < 1.0, "not every worker followed within a second"

    with fresh:
        stack.keys(other)
        settles_within_a_second(lambda: statuses(key) == {401} and statuses(other) == {200})
        stack.keys(key, other)
        settles_within_a_second(lambda: statuses(key) == {200})
    # Every worker reports the same key set in its heartbeat.
    eventually(lambda: [w["keys"] for w in stack.workers()] == [2, 2], timeout=5)


def test_corrupt_keys_file_keeps_last_good_keys(stack, key):
    (stack.data / "apikeys.json").write_text('{"keys": [')
    health = eventually(
        lambda: (
            (h := httpx.get(stack.url + "/healthz").json())["programs"]["proxy"].get("last_error")
            and h
        ),
        timeout=5,
    )
    assert "not valid JSON" in health["programs"]["proxy"]["last_error"]
    for _ in range(10):
        r = httpx.get(stack.url + "/v1/models", headers={"Authorization": f"Bearer {key.key}"})
        assert r.status_code == 200
    assert "serving the last good keys" in stack.output()
    stack.keys(key)
    eventually(
        lambda: not httpx.get(stack.url + "/healthz").json()["programs"]["proxy"].get("last_error"),
        timeout=5,
    )


def test_bad_requests_through_nginx(stack, key):
    auth = {"Authorization": f"Bearer {key.key}"}
    assert httpx.get(stack.url + "/v1/models").json()["error"]["code"] == "missing_api_key"
    r = httpx.post(
        stack.url + "/v1/chat/completions",
        content=b"{",
        headers={**auth, "content-type": "application/json"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    big = httpx.post(
        stack.url + "/v1/chat/completions", content=b"x" * (1024 * 1024 + 1), headers=auth
    )
    assert big.json() == json.loads(payload_too_large(1024 * 1024).body())
    assert big.status_code == 413 and big.headers["content-type"] == "application/json"
    assert httpx.get(stack.url + "/v1/models", headers=auth).status_code == 200


def test_a_kept_alive_connection_survives_an_oversized_body(stack, key):
    """Refused by the proxy before nginx had sent the body, an oversized body now and then left
    nginx closing the connection after the answer without saying so, and the client's next
    request on it failed (1 in about 100)."""
    auth = {"Authorization": f"Bearer {key.key}"}
    big = b"x" * (1024 * 1024 + 1)
    with httpx.Client(base_url=stack.url, headers=auth, timeout=10) as client:
        for _ in range(150):
            assert client.post("/v1/completions", content=big).status_code == 413
            assert client.get("/v1/models").status_code == 200


def test_a_kept_alive_connection_survives_refusals_of_large_bodies(stack, key):
    """A request refused for its key was answered before the proxy had read its body, and nginx,
    which streams bodies to the proxy, then closed the client's kept-alive connection now and
    then without saying so (8 in 10 bodies of 1 MB): the client's next request on it failed.
    http.client does not reconnect behind the test's back, as httpx may."""
    body = json.dumps({"model": "model-a", "prompt": "x" * 1_000_000}).encode()
    refusals = [{"Authorization": "Bearer sk-" + "0" * 64}, {}, {"x-api-key": "wrong"}]
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        for headers in refusals * 4:
            connection.request("POST", "/v1/completions", body, headers)
            answer = connection.getresponse()
            assert answer.status == 401 and json.loads(answer.read())["error"]["code"] in (
                "invalid_api_key",
                "missing_api_key",
            )
            assert answer.getheader("connection") == "keep-alive"
        connection.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key.key}"})
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_sigterm_stops_every_program_cleanly(tmp_path, fleet):
    stack = Stack(tmp_path, [fleet["a"]], workers=2).start()
    pids = [b["pid"] for b in stack.workers()]
    t0 = time.monotonic()
    assert stack.stop() == 0
    assert time.monotonic() - t0 < 15
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "var" / "nginx" / "run" / "nginx.pid").exists()


def test_metrics_count_requests_over_every_worker(stack, fleet, key):
    def scrape() -> dict[str, float]:
        text = httpx.get(stack.url + "/metrics").text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    b = fleet["b"].url + "/v1"
    # Upstream b answers 404 to a path it does not know: no other test's requests are counted
    # here, whenever their workers hand over their counts.
    not_found = f'llmp_requests_total{{status="404",upstream="{b}"}}'
    prompt = f'llmp_tokens_total{{kind="prompt",upstream="{b}"}}'
    durations = f'llmp_request_duration_seconds_count{{upstream="{b}"}}'
    refused = 'llmp_requests_total{status="401",upstream="none"}'
    before = scrape()
    fresh = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    with fresh:
        for _ in range(20):  # new connections, spread over both workers
            r = fresh.post(
                stack.url + "/v1/unknown-to-b",
                json={"model": "model-b"},
                headers={"Authorization": f"Bearer {key.key}"},
            )
            assert r.status_code == 404
        r = fresh.post(
            stack.url + "/v1/chat/completions",
            json={"model": "model-b"},
            headers={"Authorization": f"Bearer {key.key}"},
        )
        assert r.status_code == 200
    httpx.get(stack.url + "/v1/models", headers={"Authorization": "Bearer sk-wrong"})

    def counted() -> dict[str, float] | None:
        metrics = scrape()
        every = (
            metrics.get(not_found, 0) >= 20
            and metrics[prompt] >= before.get(prompt, 0) + 7
            and metrics.get(refused, 0) >= before.get(refused, 0) + 1
        )
        return metrics if every else None

    # Each worker hands its counts to the files the api reads once a second.
    after = eventually(counted)
    assert after[not_found] == 20
    assert after[durations] >= before.get(durations, 0) + 21
    assert after['llmp_program_up{program="proxy"}'] == 1.0
    assert after[f'llmp_upstream_healthy{{upstream="{b}"}}'] == 1.0
    assert after[f'llmp_upstream_queued{{upstream="{b}"}}'] == 0.0
