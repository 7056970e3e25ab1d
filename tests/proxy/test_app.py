"""The proxy against real fake upstreams, served by a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from typing import Any

import httpx
import pytest

from shared.apikeys import ApiKey
from tests.conftest import eventually, free_port


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def raw_chat(key: ApiKey, body: bytes) -> bytes:
    """A chat completion request as bytes on the wire, for tests that hang up mid-answer."""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + key.key.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def test_routing_model_goes_to_the_upstream_that_serves_it(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a", "shared"])
    b = upstreams("b", ["model-b", "shared"])
    with proxy(a, b).client(api_key) as client:
        for model, name in (("model-a", "a"), ("model-b", "b"), ("model-b", "b")):
            r = client.post("/v1/chat/completions", json={"model": model, "messages": []})
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == f"hello from {name}"
    assert [s.path for s in a.seen if s.path != "/v1/models"] == ["/v1/chat/completions"]


def test_routing_unknown_model_is_404_model_not_found(upstreams, proxy, api_key):
    a, b = upstreams("a", ["model-a"]), upstreams("b", ["model-b"])
    with proxy(a, b).client(api_key) as client:
        r = client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": []})
    assert r.status_code == 404
    assert error_of(r)["code"] == "model_not_found"
    assert not [s for s in a.seen + b.seen if s.path != "/v1/models"]


def test_routing_single_upstream_takes_every_model(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    with proxy(a).client(api_key) as client:
        r = client.post("/v1/chat/completions", json={"model": "unlisted", "messages": []})
    assert r.status_code == 200


def test_routing_shared_model_is_balanced_by_requests_in_flight(upstreams, proxy, api_key):
    a = upstreams("a", ["shared"], pace=0.3, chunks=2)
    b = upstreams("b", ["shared"], pace=0.3, chunks=2)
    running = proxy(a, b)
    body = {"model": "shared", "stream": True, "messages": []}
    with (
        running.client(api_key) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as first,
    ):
        lines = first.iter_lines()  # kept referenced: a dropped iterator closes the stream
        first_upstream = next(lines)
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200
    # While the first stream is in flight, the second request goes to the other upstream.
    assert first_upstream.startswith("data:")
    assert ("a0" in first_upstream) != ("a0" in r.text)


def test_failover_from_an_upstream_that_refuses_connections(upstreams, proxy, api_key):
    dead = f"http://127.0.0.1:{free_port()}"
    b = upstreams("b", ["model-b"])
    running = proxy(dead, b)
    with running.client(api_key) as client:
        r = client.post("/v1/echo", content=b"{}", headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["upstream"] == "b"
        health = eventually(lambda: running.runtime.catalog.states[0].healthy is False)
    assert health


def test_all_upstreams_refusing_is_502(proxy, api_key):
    running = proxy(f"http://127.0.0.1:{free_port()}")
    with running.client(api_key) as client:
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 502
    assert error_of(r)["code"] == "upstream_unreachable"


def test_models_list_is_not_held_up_by_a_hanging_upstream(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    hanging = upstreams("h", ["model-h"], hang_models=True)
    running = proxy(a, hanging, models_timeout_seconds=1.0)

    def asked() -> int:
        return sum(s.path == "/v1/models" for s in hanging.seen)

    with running.client(api_key) as client:
        r = client.get("/v1/models")  # a hang would outlast the client's 10 s timeout
        assert r.status_code == 200
        assert [m["id"] for m in r.json()["data"]] == ["model-a"]
        before = asked()
        assert client.get("/v1/models").status_code == 200
        assert asked() == before == 1  # served from the catalog, nobody asked again
    assert running.runtime.catalog.states[1].healthy is False


def test_models_union_and_retrieve(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a", "shared"])
    b = upstreams("b", ["model-b", "shared", "org/model-c"])
    with proxy(a, b).client(api_key) as client:
        listed = client.get("/v1/models").json()
        one = client.get("/v1/models/org/model-c")
        missing = client.get("/v1/models/nope")
    assert list(listed) == ["data", "object"] and listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["model-a", "shared", "model-b", "org/model-c"]
    assert one.json() == {"id": "org/model-c", "object": "model", "owned_by": "b"}
    assert missing.status_code == 404 and error_of(missing)["code"] == "model_not_found"


def test_upstream_gets_its_own_key_and_never_the_clients(upstreams, proxy, api_key):
    keyed = upstreams("a", ["model-a"], key="upstream-secret")
    bare = upstreams("b", ["model-b"])
    with proxy(keyed, bare).client(api_key) as client:
        for model in ("model-a", "model-b"):
            r = client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": []},
                headers={"x-api-key": api_key.key, "cookie": "auth_token=jwt"},
            )
            assert r.status_code == 200
    sent = [s for s in keyed.seen + bare.seen if s.path == "/v1/chat/completions"]
    assert sent[0].headers["Authorization"] == "Bearer upstream-secret"
    assert "Authorization" not in sent[1].headers
    for seen in sent:
        assert api_key.key not in json.dumps(seen.headers)
        assert "Cookie" not in seen.headers


def test_query_string_body_bytes_and_method_arrive_unchanged(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    body = b'{"model": "model-a",  "x": 1.0, "y": 1e2}'
    with proxy(a).client(api_key) as client:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            r = client.request(
                method,
                "/v1/echo?a=1&b=%20two&c=%7e",
                content=body,
                headers={"content-type": "application/json"},
            )
            echoed = r.json()
            assert echoed["method"] == method
            assert echoed["raw_path"] == "/v1/echo?a=1&b=%20two&c=%7e"
            assert echoed["body"].encode("latin-1") == body


def test_hop_by_hop_headers_are_stripped(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    with proxy(a).client(api_key) as client:
        r = client.get(
            "/v1/echo",
            headers={
                "Connection": "keep-alive, x-secret-hop",
                "x-secret-hop": "1",
                "te": "trailers",
                "x-custom": "kept",
            },
        )
    seen = {k.lower() for k in r.json()["headers"]}
    assert "x-custom" in seen
    assert not seen & {"x-secret-hop", "te", "proxy-connection", "keep-alive"}


def test_gzip_response_arrives_whole_and_still_compressed(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    with (
        proxy(a).client(api_key) as client,
        client.stream("GET", "/v1/gzip", headers={"accept-encoding": "gzip"}) as r,
    ):
        raw = b"".join(r.iter_raw())
    assert r.headers["content-encoding"] == "gzip"
    assert int(r.headers["content-length"]) == len(raw)
    assert json.loads(gzip.decompress(raw))["filler"] == "x" * 20000


def test_upstream_errors_pass_through_with_their_body(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    with proxy(a).client(api_key) as client:
        r = client.post("/v1/no-such-route", json={"model": "model-a"})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "no route /v1/no-such-route"}}


def test_bad_input_gets_openai_shaped_errors(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    running = proxy(a, payload_limit=1024)
    with running.client(None) as anonymous, running.client(api_key) as client:
        cases = [
            (anonymous.get("/v1/models"), 401, "missing_api_key"),
            (
                anonymous.get("/v1/models", headers={"Authorization": "Basic abc"}),
                401,
                "missing_api_key",
            ),
            (
                anonymous.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"}),
                401,
                "invalid_api_key",
            ),
            (
                client.post(
                    "/v1/chat/completions",
                    content=b'{"model": ',
                    headers={"content-type": "application/json"},
                ),
                400,
                "invalid_json",
            ),
            (client.post("/v1/chat/completions", content=b"x" * 2048), 413, "payload_too_large"),
            (client.get("/v2/models"), 404, "unknown_url"),
        ]
        for response, status, code in cases:
            assert (response.status_code, error_of(response)["code"]) == (status, code)
        assert client.get("/v1/models").status_code == 200  # still up
    assert cases[0][0].headers["www-authenticate"] == "Bearer"


def test_payload_limit_applies_to_chunked_bodies(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    running = proxy(a, payload_limit=1024)

    def chunks():
        for _ in range(4):
            yield b"x" * 512

    with running.client(api_key) as client:
        r = client.post("/v1/echo", content=chunks())
    assert r.status_code == 413


def test_key_in_api_key_headers_is_accepted(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    running = proxy(a)
    with running.client(None) as client:
        for header in ("api-key", "x-api-key"):
            assert client.get("/v1/models", headers={header: api_key.key}).status_code == 200
        r = client.get("/v1/models", headers={"Authorization": f"bearer {api_key.key}"})
        assert r.status_code == 200


def test_streaming_relays_chunks_as_they_arrive(upstreams, proxy, api_key):
    # The upstream sends its first chunk and holds the rest until the client has that one: a
    # proxy that buffered would leave the client waiting until its timeout.
    a = upstreams("a", ["model-a"], chunks=5, held=True)
    with proxy(a).client(api_key) as client:
        events = []
        with client.stream(
            "POST", "/v1/chat/completions", json={"model": "model-a", "stream": True}
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(line)
                    if len(events) == 1:
                        a.release()
    assert len(events) == 6  # 5 chunks and [DONE]


def analytics_for(running, request_id: str) -> dict[str, Any]:
    return eventually(
        lambda: next((r for r in running.rows() if r["request_id"] == request_id), None)
    )


def test_analytics_row_for_stream_has_usage_and_timings(upstreams, proxy, api_key: ApiKey):
    a = upstreams("a", ["model-a"], chunks=3)
    running = proxy(a)
    with running.client(api_key) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": "model-a", "stream": True, "stream_options": {"include_usage": True}},
        )
        plain = client.post("/v1/chat/completions", json={"model": "model-a"})
    row = analytics_for(running, r.headers["x-request-id"])
    assert row["key_id"] == api_key.id and row["username"] == "tester"
    assert row["status"] == 200 and row["stream"] == 1 and row["model"] == "model-a"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 3)
    assert row["end_ms"] >= row["start_ms"] and row["ttfb_ms"] > 0
    assert row["upstream"] == a.url + "/v1" and row["bytes_out"] == len(r.content)
    plain_row = analytics_for(running, plain.headers["x-request-id"])
    assert (plain_row["prompt_tokens"], plain_row["completion_tokens"]) == (7, 3)
    assert plain_row["stream"] == 0


def test_client_disconnect_mid_stream_cancels_upstream_and_is_recorded(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"], pace=0.2, chunks=1000)  # 200 s, unless it is cancelled
    running = proxy(a)
    body = json.dumps({"model": "model-a", "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(raw_chat(api_key, body))
        assert b"200" in sock.recv(65536)
        time.sleep(0.3)
    eventually(lambda: a.stream_closed)
    rows = eventually(lambda: [r for r in running.rows() if r["path"] == "/v1/chat/completions"])
    assert rows[0]["error"] == "client disconnected" and rows[0]["end_ms"] is None


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_a_client_that_leaves_after_done_got_the_whole_stream(upstreams, proxy, api_key, line_end):
    """openai-python closes the connection once it has read `data: [DONE]`, maybe before the
    upstream (and so the proxy) has ended the body: that answer was delivered whole, and its
    row said "client disconnected" now and then. Whichever line end the stream uses."""
    # The upstream ends its body 60 s after [DONE], unless closed first.
    a = upstreams("a", ["model-a"], chunks=3, linger=60, line_end=line_end)
    running = proxy(a)
    body = json.dumps({"model": "model-a", "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(raw_chat(api_key, body))
        got = b""
        while b"data: [DONE]" not in got:
            got += sock.recv(65536)
    rows = eventually(lambda: [r for r in running.rows() if r["path"] == "/v1/chat/completions"])
    assert (rows[0]["status"], rows[0]["error"]) == (200, None)
    assert rows[0]["completion_tokens"] == 3


def test_upstream_cut_mid_stream_ends_the_stream_with_an_error_event(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"], chunks=5, cut_after=2)
    running = proxy(a)
    with running.client(api_key) as client:
        r = client.post("/v1/chat/completions", json={"model": "model-a", "stream": True})
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and len(events) == 3
    assert json.loads(events[-1])["error"]["code"] == "upstream_cut"
    row = analytics_for(running, r.headers["x-request-id"])
    assert row["error"].startswith("upstream cut") and row["end_ms"] is None


def test_upstream_that_never_answers_is_504_after_the_read_timeout(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"], hang=True)
    running = proxy(a, upstream_read_timeout=0.5)
    with running.client(api_key) as client:
        t0 = time.monotonic()
        r = client.post("/v1/chat/completions", json={"model": "model-a"})
        elapsed = time.monotonic() - t0
        assert client.get("/v1/models").status_code == 200  # the proxy is still fine
    assert r.status_code == 504 and error_of(r)["code"] == "upstream_timeout"
    assert 0.5 <= elapsed < 8  # the read timeout, not the hang (which outlasts the client)
    # Named as the client may see it: the upstream's address (a host name inside) is logged only.
    assert error_of(r)["message"] == "The upstream 1 did not answer in time"
    assert "127.0.0.1" not in r.text


def test_cors_for_browser_clients_when_configured(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    running = proxy(a, cors_origin="https://chat.example")
    with running.client(None) as client:
        preflight = client.options(
            "/v1/chat/completions",
            headers={
                "Origin": "https://chat.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        allowed = client.get(
            "/v1/models",
            headers={"Origin": "https://chat.example", "Authorization": f"Bearer {api_key.key}"},
        )
        other = client.get(
            "/v1/models",
            headers={"Origin": "https://evil.example", "Authorization": f"Bearer {api_key.key}"},
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://chat.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
    assert "x-request-id" in allowed.headers["access-control-expose-headers"]
    assert "x-llmp-attempts" in allowed.headers["access-control-expose-headers"]  # aliases
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_by_default(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    with proxy(a).client(api_key) as client:
        r = client.get("/v1/models", headers={"Origin": "https://chat.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_failover_from_an_upstream_that_never_completes_the_connection(upstreams, proxy, api_key):
    """A listener whose backlog is full drops new SYNs: connecting times out."""
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    filler = socket.create_connection(stuck.getsockname(), timeout=1)  # the backlog's one place
    try:
        b = upstreams("b", ["model-b"])
        running = proxy(
            f"http://127.0.0.1:{stuck.getsockname()[1]}", b, upstream_connect_timeout=0.3
        )
        with running.client(api_key) as client:
            t0 = time.monotonic()
            r = client.post("/v1/echo", content=b"{}", headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["upstream"] == "b"
        assert time.monotonic() - t0 < 8  # the connect timeout, not the client's (10 s)
    finally:
        filler.close()
        stuck.close()


def test_a_refused_request_has_its_body_read_before_its_answer(upstreams, proxy, api_key):
    """nginx streams bodies to the proxy; answered before it had sent the whole body, it closed
    the client's kept-alive connection now and then (tests/stack: the same through nginx)."""
    running = proxy(upstreams("a", ["model-a"]))

    def events(path: str, headers: list[tuple[bytes, bytes]]) -> list[str]:
        seen: list[str] = []
        parts = [b'{"model": "model-a", ', b'"messages": []}']

        async def receive() -> dict[str, Any]:
            part = parts.pop(0)
            seen.append("body")
            return {"type": "http.request", "body": part, "more_body": bool(parts)}

        async def send(message: dict[str, Any]) -> None:
            seen.append(message["type"])

        scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
        handled = running.app.handle(scope, receive, send)
        asyncio.run_coroutine_threadsafe(handled, running.server_loop()).result(10)
        return seen

    own = [(b"authorization", f"Bearer {api_key.key}".encode())]
    refused = {
        "no key": ("/v1/chat/completions", []),
        "a wrong key": ("/v1/chat/completions", [(b"authorization", b"Bearer sk-wrong")]),
        "a path outside /v1": ("/v2/chat", own),
    }
    for why, (path, headers) in refused.items():
        assert events(path, headers) == [
            "body",
            "body",
            "http.response.start",
            "http.response.body",
        ], why
