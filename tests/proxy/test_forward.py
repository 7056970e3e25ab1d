"""What the client gets when the upstream's answer is unusual or the upstream fails: headers
fixed where the proxy changes the body, upstreams named by label, each failure its own 502,
with both upstream clients."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import eventually
from tests.proxy.conformance.servers import Certificates, Scripted, openssl_server
from tests.proxy.test_app import analytics_for, error_of

MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()


@pytest.fixture(params=["own", "aiohttp"])
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def answer(head: bytes, body: bytes = b"") -> bytes:
    return head.replace(b"\n", b"\r\n") + b"\r\n" + body


def upstream(chat: Callable[[bytes], bytes]) -> Scripted:
    """A scripted upstream: its models, and `chat(request)` as the bytes of every other answer."""

    async def handler(server: Scripted, reader, writer) -> None:
        while request := await server.read(reader):
            if request.startswith(b"GET /v1/models "):
                writer.write(answer(b"HTTP/1.1 200 OK\nContent-Length: %d\n" % len(MODELS), MODELS))
            else:
                writer.write(chat(request))
            await writer.drain()

    return Scripted(handler)


def sse(events: list[dict]) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )


def test_a_stream_whose_usage_is_stripped_loses_its_content_length(proxy, api_key, client_kind):
    chunk = {"choices": [{"delta": {"content": "hi"}}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    body = sse([chunk, usage])
    head = b"HTTP/1.1 200 OK\nContent-Type: text/event-stream\nContent-Length: %d\n" % len(body)
    with upstream(lambda request: answer(head, body)) as up:
        running = proxy(up.url + "/v1", upstream_client=client_kind)
        with running.client(api_key) as client:
            r = client.post(
                "/v1/chat/completions", json={"model": "m", "stream": True, "messages": []}
            )
    assert r.status_code == 200
    assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"
    assert b'"usage"' not in r.content and r.content.endswith(b"data: [DONE]\n\n")
    row = analytics_for(running, r.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 1)


def test_a_304_with_a_content_length_goes_out_without_one(proxy, api_key, client_kind):
    head = b'HTTP/1.1 304 Not Modified\nETag: "a"\nContent-Length: 120\n'
    with upstream(lambda request: answer(head)) as up:
        running = proxy(up.url + "/v1", upstream_client=client_kind)
        with running.client(api_key) as client:
            first = client.get("/v1/files/f1", headers={"if-none-match": '"a"'})
            second = client.get("/v1/files/f1", headers={"if-none-match": '"a"'})
    assert [first.status_code, second.status_code] == [304, 304]
    assert "content-length" not in first.headers and first.headers["etag"] == '"a"'


def test_one_x_request_id_ours_and_the_upstream_s_beside_it(proxy, api_key, client_kind):
    head = b"HTTP/1.1 200 OK\nContent-Type: application/json\nX-Request-Id: req_up\n"
    head += b"Content-Length: 2\n"
    with upstream(lambda request: answer(head, b"{}")) as up:
        running = proxy(up.url + "/v1", upstream_client=client_kind)
        with running.client(api_key) as client:
            r = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.headers.get_list("x-request-id") != ["req_up"]
    assert len(r.headers.get_list("x-request-id")) == 1
    assert r.headers["x-upstream-request-id"] == "req_up"


def test_a_malformed_answer_is_a_502_saying_so_sent_once_logged_once(
    proxy, api_key, client_kind, caplog
):
    bad = answer(
        b"HTTP/1.1 200 OK\nContent-Length: 2\nTransfer-Encoding: chunked\n", b"2\r\nok\r\n0\r\n\r\n"
    )
    with upstream(lambda request: bad) as up:
        running = proxy(up.url + "/v1", upstream_client=client_kind)
        with caplog.at_level(logging.WARNING), running.client(api_key) as client:
            r = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        chats = [q for q in up.requests if b"/chat/" in q]
    assert r.status_code == 502
    error = error_of(r)
    assert error["code"] == "upstream_bad_answer" and "could not be reached" not in error["message"]
    assert "127.0.0.1" not in error["message"] and "upstream 1" in error["message"]
    assert len(chats) == 1
    failures = [rec for rec in caplog.records if rec.getMessage() == "upstream failed"]
    assert len(failures) == 1 and failures[0].exc_info is None
    assert up.url in str(failures[0].__dict__.get("fields"))  # the URL is in the log


def test_a_refused_certificate_is_not_a_missing_model(proxy, api_key, client_kind, tmp_path):
    certs = Certificates(tmp_path)
    plain = upstream(lambda request: answer(b"HTTP/1.1 200 OK\nContent-Length: 2\n", b"{}"))
    with openssl_server(certs) as tls, plain:
        running = proxy(plain.url + "/v1", tls + "/v1", upstream_client=client_kind)
        state = running.runtime.catalog.states[1]
        eventually(lambda: state.last_error is not None)
        with running.client(api_key) as client:
            r = client.post("/v1/chat/completions", json={"model": "tls-only", "messages": []})
    assert r.status_code == 502
    error = error_of(r)
    assert "upstream 2: its TLS certificate was refused" in error["message"]
    assert "127.0.0.1" not in error["message"]


def test_an_unexpected_failure_is_an_openai_shaped_500_and_its_row_says_so(
    proxy, api_key, client_kind, monkeypatch
):
    with upstream(lambda request: answer(b"HTTP/1.1 200 OK\nContent-Length: 2\n", b"{}")) as up:
        running = proxy(up.url + "/v1", upstream_client=client_kind)

        async def broken(*args: object) -> None:
            raise RuntimeError("a defect")

        monkeypatch.setattr(running.app, "plan", broken)
        with running.client(api_key) as client:
            r = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 500 and error_of(r)["code"] == "internal_error"
    row = analytics_for(running, r.headers["x-request-id"])
    assert (row["status"], row["error"]) == (500, "internal error: RuntimeError")


def test_a_failure_after_the_answer_started_aborts_it_and_its_row_says_so(
    proxy, api_key, client_kind, monkeypatch
):
    import services.proxy.forward as forward

    class Exploding:
        pieces = 0

        def feed(self, chunk: bytes) -> None:
            raise RuntimeError("a defect")

        def usage(self) -> tuple[None, None]:
            return None, None

    body = b"x" * 1000
    head = b"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 1000\n"
    with upstream(lambda request: answer(head, body)) as up:
        running = proxy(up.url + "/v1", upstream_client=client_kind)
        monkeypatch.setattr(forward, "meter_for", lambda *a: Exploding())
        with running.client(api_key) as client, pytest.raises(httpx.RemoteProtocolError):
            client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    row = eventually(lambda: next(iter(running.rows()), None))
    assert (row["status"], row["error"]) == (
        200,
        "internal error after the answer started: RuntimeError",
    )


def test_the_heartbeat_is_written_off_the_event_loop(proxy, api_key, upstreams):
    import threading

    a = upstreams("a", ["model-a"])
    running = proxy(a)
    entered, release = threading.Event(), threading.Event()

    def slow_beat() -> None:  # a disk that takes its time with the fsync
        entered.set()
        release.wait(120)  # until the test lets it go

    running.runtime.heartbeat.beat = slow_beat
    try:
        assert entered.wait(30)
        with running.client(api_key) as client:  # served while the write is stuck
            r = client.post("/v1/chat/completions", json={"model": "model-a", "messages": []})
        assert r.status_code == 200
        assert not release.is_set() and entered.is_set()  # answered with the beat still stuck
    finally:
        release.set()
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), running.server_loop()).result(5)


def test_a_body_cut_short_aborts_the_answer_without_a_traceback(
    proxy, api_key, client_kind, caplog
):
    async def cuts(server: Scripted, reader, writer) -> None:
        while request := await server.read(reader):
            if request.startswith(b"GET /v1/models "):
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(MODELS)
                writer.write(head + MODELS)
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            await writer.drain()
            return  # and the connection closes

    with Scripted(cuts) as up:
        running = proxy(up.url + "/v1", upstream_client=client_kind)
        with caplog.at_level(logging.INFO), running.client(api_key) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                client.post("/v1/chat/completions", json={"model": "m", "messages": []})
            row = eventually(lambda: next(iter(running.rows()), None))
    assert row["error"].startswith("upstream cut")
    assert not [r for r in caplog.records if r.exc_info is not None]


def test_each_upstream_gets_its_own_credentials_as_configured_never_the_clients(
    proxy, api_key, upstreams, client_kind
):
    bearer, azure, basic = (upstreams(n, [f"model-{n}"]) for n in ("bearer", "azure", "basic"))
    running = proxy(
        f"{bearer.url}|bearer-key",
        f"{azure.url}|azure-key|auth=api-key",  # Azure OpenAI's header
        basic.url.replace("://", "://alice:p%40ss@"),  # user:pass@ in the URL: Basic auth
        upstream_client=client_kind,
    )
    with running.client(api_key) as client:
        for name in ("bearer", "azure", "basic"):
            r = client.post("/v1/chat/completions", json={"model": f"model-{name}", "messages": []})
            assert r.status_code == 200, r.text
    sent = {
        name: {k.lower(): v for k, v in up.seen[-1].headers.items()}
        for name, up in (("bearer", bearer), ("azure", azure), ("basic", basic))
    }
    assert sent["bearer"]["authorization"] == "Bearer bearer-key"
    assert sent["azure"]["api-key"] == "azure-key" and "authorization" not in sent["azure"]
    assert sent["basic"]["authorization"] == "Basic " + base64.b64encode(b"alice:p@ss").decode()
    for headers in sent.values():  # the client's own key never goes on
        assert api_key.key not in json.dumps(headers)
