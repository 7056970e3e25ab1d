import dataclasses
import gzip
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from services.proxy.body import RequestBody
from services.proxy.usage import UsageStripper, ask_for_usage, meter_for
from shared.apikeys import ApiKey, Limits, write_keys
from tests.conftest import eventually
from tests.proxy.wire import (
    TIMINGS,
    WireUpstream,
    litellm_chat,
    litellm_text,
    llamacpp_chat,
    messages_stream,
    responses_stream,
)


def sse(*documents):
    return b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in documents)


def test_sse_usage_split_across_chunks_at_any_byte():
    stream = sse(
        {"choices": [{"delta": {"content": "hi"}}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}},
    ) + (b"data: [DONE]\n\n")
    for cut in range(1, len(stream)):
        meter = meter_for("text/event-stream", "")
        meter.feed(stream[:cut])
        meter.feed(stream[cut:])
        assert meter.usage() == (5, 9), cut


def test_sse_without_usage_is_missing_not_zero():
    meter = meter_for("text/event-stream; charset=utf-8", "")
    meter.feed(sse({"choices": [{"delta": {"content": "usage"}}]}, {"usage": None}))
    assert meter.usage() == (None, None)


def test_json_usage_plain_and_gzip():
    body = json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()
    plain = meter_for("application/json", "")
    plain.feed(body[:10])
    plain.feed(body[10:])
    assert plain.usage() == (3, 4)
    zipped = meter_for("application/json", "gzip")
    zipped.feed(gzip.compress(body))
    assert zipped.usage() == (3, 4)


def test_no_meter_for_other_bodies():
    assert meter_for("audio/mpeg", "") is None
    assert meter_for("text/event-stream", "br") is None


def test_json_usage_with_detail_objects_and_quoted_lookalikes():
    body = json.dumps(
        {
            "choices": [{"message": {"content": 'ignore "prompt_tokens": 999'}}],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
        }
    ).encode()
    meter = meter_for("application/json", "")
    meter.feed(body)
    assert meter.usage() == (12, 5)


def chunk(i, **extra):
    return {"id": "c", "choices": [{"index": 0, "delta": {"content": f"t{i}"}}], **extra}


USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def test_stripping_restores_the_stream_the_client_asked_for_at_any_split():
    asked = sse(
        *(chunk(i, usage=None) for i in range(3)), {"id": "c", "choices": [], "usage": USAGE}
    )
    asked += b"data: [DONE]\n\n"
    plain = sse(*(chunk(i) for i in range(3))) + b"data: [DONE]\n\n"
    for cut in range(1, len(asked)):
        stripper = UsageStripper()
        out = stripper.feed(asked[:cut]) + stripper.feed(asked[cut:]) + stripper.flush()
        assert out == plain, cut
    compact = asked.replace(b'": ', b'":').replace(b", ", b",")
    stripper = UsageStripper()
    assert stripper.feed(compact) == plain.replace(b'": ', b'":').replace(b", ", b",")


def test_a_stream_fed_line_by_line_is_read_and_stripped_as_when_fed_whole():
    """Whole lines without usage take a shorter way through the meter and the stripper."""
    finishing = {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    asked = sse(
        *(chunk(i, usage=None) for i in range(3)),
        finishing,  # without `"usage": null`, as llama.cpp sends it
        {"id": "c", "choices": [], "usage": USAGE, "timings": TIMINGS},
    )
    asked += b": comment\n\ndata: [DONE]\n\n"
    lines = asked.splitlines(True)
    halves = [half for line in lines for half in (line[: len(line) // 2], line[len(line) // 2 :])]
    events = [p + b"\n\n" for p in asked.split(b"\n\n")[:-1]]
    for parts in (events, lines, halves):
        assert b"".join(parts) == asked
        whole, by_part = meter_for("text/event-stream", ""), meter_for("text/event-stream", "")
        assert whole is not None and by_part is not None
        whole.feed(asked)
        for part in parts:
            by_part.feed(part)
        assert (by_part.usage(), by_part.pieces) == (whole.usage(), whole.pieces) == (USAGE_READ, 3)
        stripper = UsageStripper()
        expected = stripper.feed(asked) + stripper.flush()
        stripper = UsageStripper()
        assert b"".join(map(stripper.feed, parts)) + stripper.flush() == expected
        assert b'"usage"' not in expected and expected.count(b"data:") == 5
        assert b'"finish_reason": "stop"}],"timings"' in expected  # where llama.cpp puts them


USAGE_READ = (11, 3)


def test_stripping_leaves_other_lines_and_usage_in_content_alone():
    stream = (
        b": keep-alive comment\r\n\r\n"
        + sse({"choices": [{"delta": {"content": 'say "usage": null, please'}}]})
        + b"event: other\ndata: {}\n\n"
    )
    stripper = UsageStripper()
    assert stripper.feed(stream) == stream


def test_usage_is_asked_only_for_streamed_completions_that_did_not_ask():
    body = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    asked = ask_for_usage("/v1/chat/completions", RequestBody(body))
    assert asked is not None
    assert json.loads(asked) == {**json.loads(body), "stream_options": {"include_usage": True}}
    assert asked.endswith(body[1:])  # every byte of the client's body is still there
    assert ask_for_usage("/v1/completions", RequestBody(body)) is not None
    assert ask_for_usage("/v1/embeddings", RequestBody(body)) is None
    not_streamed = b'{"model": "m", "messages": [{"content": "\\"stream\\": true"}]}'
    assert ask_for_usage("/v1/chat/completions", RequestBody(not_streamed)) is None
    already = b'{"stream": true, "stream_options": {"include_usage": true}}'
    assert ask_for_usage("/v1/chat/completions", RequestBody(already)) is None
    declined = b'{"stream": true, "stream_options": {"include_usage": false, "x": 1}}'
    assert json.loads(ask_for_usage("/v1/chat/completions", RequestBody(declined)) or b"")[
        "stream_options"
    ] == {
        "include_usage": True,
        "x": 1,
    }
    assert (
        ask_for_usage("/v1/chat/completions", RequestBody(b'{"stream": true')) is None
    )  # not JSON
    deep = b'{"stream": true, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert ask_for_usage("/v1/chat/completions", RequestBody(deep)) is None


def test_pieces_count_the_text_deltas_streamed():
    meter = meter_for("text/event-stream", "")
    meter.feed(sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]}))
    meter.feed(sse(chunk(1), chunk(2), {"choices": [{"delta": {"reasoning_content": "hm"}}]}))
    assert meter.pieces == 3


# Through the proxy, with the openai SDK, against upstreams speaking real servers' formats.


@pytest.fixture
def wire() -> Iterator[Callable[..., WireUpstream]]:
    started: list[WireUpstream] = []

    def start(flavour: str = "litellm", **options) -> WireUpstream:
        upstream = WireUpstream(flavour, ["m"], flavour=flavour, **options).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.stop()


def sdk(running, key: ApiKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=running.url + "/v1", api_key=key.key, max_retries=0)


def direct(upstream: WireUpstream, path: str, body: dict) -> bytes:
    """What the upstream sends for `body` when nobody asks it for usage."""
    r = httpx.post(upstream.url + path, json=body, timeout=10)
    assert r.status_code == 200 and "stream_options" not in body
    return r.content


def rows_of(running, count: int) -> list[dict]:
    return eventually(lambda: len(r := running.rows()) >= count and r)


def test_a_litellm_usage_chunk_with_an_empty_choice_is_taken_back(wire, proxy, api_key):
    upstream = wire("litellm")
    running = proxy(upstream)
    client = sdk(running, api_key)
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with client.chat.completions.with_streaming_response.create(**body, stream=True) as r:
        relayed = b"".join(r.iter_bytes())
    assert json.loads(upstream.seen[-1].body)["stream_options"] == {"include_usage": True}
    assert relayed == direct(upstream, "/v1/chat/completions", {**body, "stream": True})
    chunks = list(client.chat.completions.create(**body, stream=True))
    assert [c.usage for c in chunks] == [None] * 5
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the wire"
    asked = list(
        client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    )
    assert asked[-1].usage is not None and asked[-1].usage.prompt_tokens == 9
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows_of(running, 3)] == [
        (9, 4)
    ] * 3


def test_a_legacy_completion_stream_gets_back_what_it_asked_for(wire, proxy, api_key):
    upstream = wire("litellm")
    running = proxy(upstream)
    client = sdk(running, api_key)
    with client.completions.with_streaming_response.create(
        model="m", prompt="Say hello", stream=True
    ) as r:
        relayed = b"".join(r.iter_bytes())
    body = {"model": "m", "prompt": "Say hello", "stream": True}
    assert relayed == direct(upstream, "/v1/completions", body)
    chunks = list(client.completions.create(model="m", prompt="Say hello", stream=True))
    assert [c.usage for c in chunks] == [None] * 5
    assert "".join(c.choices[0].text for c in chunks) == "Hello from the wire"
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows_of(running, 2)] == [
        (6, 4)
    ] * 2


def test_llama_cpp_timings_stay_where_llama_cpp_puts_them(wire, proxy, api_key):
    upstream = wire("llamacpp")
    running = proxy(upstream)
    client = sdk(running, api_key)
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with client.chat.completions.with_streaming_response.create(**body, stream=True) as r:
        relayed = b"".join(r.iter_bytes())
    assert relayed == direct(upstream, "/v1/chat/completions", {**body, "stream": True})
    chunks = list(client.chat.completions.create(**body, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is None
    assert chunks[-1].model_extra["timings"] == TIMINGS
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows_of(running, 2)] == [
        (9, 4)
    ] * 2


@pytest.mark.parametrize(
    "asked,plain",
    [
        (wire_format(True), wire_format(False))
        for wire_format in (
            lambda asked: litellm_chat("m", asked),
            lambda asked: litellm_text("m", asked),
            lambda asked: llamacpp_chat("m", asked),
            lambda asked: llamacpp_chat("m", asked).replace(b"\n", b"\r\n"),
        )
    ],
)
def test_stripping_real_formats_at_any_split(asked, plain):
    for cut in range(1, len(asked)):
        stripper = UsageStripper()
        out = stripper.feed(asked[:cut]) + stripper.feed(asked[cut:]) + stripper.flush()
        assert out == plain, cut


def test_a_finishing_chunk_is_held_only_until_the_next_line():
    stripper = UsageStripper()
    finish = sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assert stripper.feed(finish) == b""
    assert stripper.feed(b"data: [DONE]\n\n") == finish + b"data: [DONE]\n\n"
    stripper = UsageStripper()
    assert stripper.feed(finish) == b""
    assert stripper.flush() == finish  # the stream ended there


def test_a_finishing_chunk_with_its_own_usage_is_not_held():
    """Mistral's API and TGI send the usage in the chunk that finishes the answer: no usage
    chunk will follow it, so it goes to the client as it comes, however long the upstream then
    takes to send `[DONE]`."""
    stripper = UsageStripper()
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    finish = sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage})
    assert stripper.feed(finish) == finish
    assert stripper.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert stripper.flush() == b""


def limited(running, key: ApiKey, **limits) -> None:
    write_keys(running.settings.apikeys_file, [dataclasses.replace(key, limits=Limits(**limits))])


def test_responses_api_usage_is_recorded_and_charged(wire, proxy, api_key):
    running = proxy(wire())
    limited(running, api_key, tokensPerMinute=100)
    client = sdk(running, api_key)
    eventually(
        lambda: (
            client.responses.with_raw_response.create(model="m", input="hi").headers.get(
                "x-ratelimit-limit-tokens"
            )
            == "100"
        )
    )
    outcomes = []
    for _ in range(6):
        try:
            outcomes.append(client.responses.create(model="m", input="hi").usage.total_tokens)
        except openai.RateLimitError as exc:
            outcomes.append(exc.body["type"])
    assert outcomes == ["tokens"] * 6  # the first answer's 123 tokens spent the minute's 100
    rows = rows_of(running, 7)
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (100, 23)


def test_responses_api_streamed_usage_is_recorded(wire, proxy, api_key):
    running = proxy(wire())
    client = sdk(running, api_key)
    events = list(client.responses.create(model="m", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens == 23
    row = rows_of(running, 1)[0]
    assert (row["prompt_tokens"], row["completion_tokens"], row["stream"]) == (100, 23, 1)


def test_messages_usage_is_recorded_from_json_and_streams(wire, proxy, api_key):
    running = proxy(wire())
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": api_key.key, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=running.url, headers=headers, timeout=10) as client:
        plain = client.post("/v1/messages", json=body)
        streamed = client.post("/v1/messages", json={**body, "stream": True})
    assert plain.json()["usage"]["output_tokens"] == 15
    assert b"event: message_delta" in streamed.content
    rows = rows_of(running, 2)
    # Anthropic counts cached input apart: 25 + 10 written to the cache + 5 read from it.
    assert [(r["prompt_tokens"], r["completion_tokens"], r["stream"]) for r in rows] == [
        (40, 15, 0),
        (40, 15, 1),
    ]


def test_zero_usage_in_every_chunk_is_missing_not_zero(wire, proxy, api_key):
    """An upstream that puts `"usage": {"prompt_tokens": 0, ...}` in every chunk says nothing
    about usage: with STREAM_USAGE=false it is all the proxy sees, and no prompt is 0 tokens."""
    upstream = wire("zeros")
    running = proxy(upstream, stream_usage=False)
    client = sdk(running, api_key)
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    chunks = list(client.chat.completions.create(**body, stream=True))
    assert chunks[0].usage.prompt_tokens == 0  # the client gets them as they came
    row = rows_of(running, 1)[0]
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_estimated"]) == (
        None,
        None,
        0,
    )
    asked = proxy(upstream)  # asked for usage, the real counts come last and are kept
    list(sdk(asked, api_key).chat.completions.create(**body, stream=True))
    row = rows_of(asked, 2)[-1]  # the two proxies share the data directory
    assert (row["prompt_tokens"], row["completion_tokens"]) == (9, 4)


def test_zero_counts_are_no_counts():
    meter = meter_for("application/json", "")
    meter.feed(b'{"usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}')
    assert meter.usage() == (None, None)
    meter = meter_for("application/json", "")
    meter.feed(b'{"usage": {"prompt_tokens": 7, "completion_tokens": 0}}')
    assert meter.usage() == (7, 0)  # a real answer that stopped at once


def test_a_stream_cut_after_its_finishing_chunk_keeps_that_chunk(wire, proxy, api_key):
    """The stripper holds the finishing chunk until it sees what follows; an upstream that
    drops the connection there must not take the chunk with it."""
    upstream = wire("llamacpp", cut_at_usage=True)
    running = proxy(upstream)
    client = sdk(running, api_key)
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    received = []
    with pytest.raises(openai.APIError) as cut:
        received.extend(client.chat.completions.create(**body, stream=True))
    assert cut.value.body["code"] == "upstream_cut"
    assert received[-1].choices[0].finish_reason == "stop"


def test_responses_and_messages_streams_are_metered_at_any_split():
    for stream, usage in ((responses_stream("m"), (100, 23)), (messages_stream("m"), (40, 15))):
        for cut in range(1, len(stream), 7):
            meter = meter_for("text/event-stream", "")
            meter.feed(stream[:cut])
            meter.feed(stream[cut:])
            assert meter.usage() == usage, cut
    # What a stream cut short is estimated by: the four words streamed as deltas.
    for stream in (responses_stream("m"), messages_stream("m")):
        meter = meter_for("text/event-stream", "")
        meter.feed(
            stream[: stream.index(b"event: response.completed")] if b"resp_" in stream else stream
        )
        assert meter.pieces == 4


def test_a_responses_stream_with_a_long_answer_is_still_metered():
    """`response.completed` repeats the whole answer before its usage: a line far longer than
    any chat chunk."""
    long = responses_stream("m").replace(b"Hello from the wire", b"x" * 500_000)
    meter = meter_for("text/event-stream", "")
    for start in range(0, len(long), 16384):
        meter.feed(long[start : start + 16384])
    assert meter.usage() == (100, 23)
