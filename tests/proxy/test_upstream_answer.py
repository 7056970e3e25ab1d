"""What of an upstream's answer reaches the client: headers (an allowlist) and a 401 that the
upstream gave the gateway's own key, with the openai SDK as the client."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from services.proxy.upstream_answer import passed_to_client
from tests.conftest import eventually
from tests.proxy.wire import WireUpstream

DIAGNOSTIC = {
    "x-litellm-key-spend": "0.0012",
    "x-litellm-model-api-base": "https://internal.example/v1",
    "x-litellm-response-cost": "0.00042",
    "x-litellm-model-id": "deployment-7",
    "llm_provider-openai-organization": "org-secret",
    "openai-organization": "org-secret",
    "openai-project": "proj_secret",
    "x-ratelimit-remaining-tokens": "149000",
    "anthropic-ratelimit-tokens-remaining": "9000",
    "set-cookie": "route=internal; Path=/",
    "server": "uvicorn",
    "x-request-id": "req_upstream",
    "openai-processing-ms": "42",
    "openai-version": "2020-10-01",
    "cache-control": "no-cache",
}
KEPT = {"openai-processing-ms", "openai-version", "cache-control", "content-type"}


@pytest.fixture
def wire() -> Iterator[Callable[..., WireUpstream]]:
    started: list[WireUpstream] = []

    def start(**options) -> WireUpstream:
        upstream = WireUpstream("w", ["m"], **options).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.stop()


def test_only_allowed_upstream_headers_reach_the_client(wire, proxy, api_key):
    running = proxy(wire(headers=DIAGNOSTIC))
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    plain = client.chat.completions.with_raw_response.create(**body)
    with client.chat.completions.with_streaming_response.create(**body, stream=True) as streamed:
        streamed.read()
    responses = client.responses.with_raw_response.create(model="m", input="hi")
    for answer in (plain, streamed, responses):
        names = {name.lower() for name in answer.headers}
        assert names >= KEPT
        refused = set(DIAGNOSTIC) - KEPT - {"x-request-id"}  # that one is llmp's own
        assert not names & refused, names & refused
        assert answer.headers.get_list("x-request-id") == [answer.request_id]
        assert answer.request_id != "req_upstream"
    assert plain.parse().choices[0].message.content == "hello from w"


def test_the_allowlist_keeps_order_and_repeated_headers():
    headers = [
        (b"vary", b"origin"),
        (b"x-litellm-key-spend", b"1"),
        (b"content-type", b"application/json"),
        (b"vary", b"accept-encoding"),
    ]
    assert passed_to_client(headers) == [
        (b"vary", b"origin"),
        (b"content-type", b"application/json"),
        (b"vary", b"accept-encoding"),
    ]


def test_an_upstream_refusing_the_gateways_key_is_a_502_not_the_users_401(
    wire, proxy, api_key, caplog
):
    upstream = wire(refuse=True, key="sk-stale")
    running = proxy(upstream)
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert not isinstance(refused.value, openai.AuthenticationError)
    assert refused.value.status_code == 502
    error = refused.value.body
    assert error["code"] == "upstream_auth_failed" and error["type"] == "server_error"
    assert "refused the gateway's credentials" in error["message"]
    assert "sk-stale" not in error["message"] and "sk-up" not in error["message"]
    row = eventually(lambda: running.rows())[0]
    assert (row["status"], row["error"]) == (502, "upstream_auth_failed")
    assert "upstream refused the gateway's credentials" in caplog.text
    assert "sk-stale" not in caplog.text
