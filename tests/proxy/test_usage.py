import gzip
import json

from services.proxy.usage import UsageStripper, ask_for_usage, meter_for


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
    asked = ask_for_usage("/v1/chat/completions", body)
    assert asked is not None
    assert json.loads(asked) == {**json.loads(body), "stream_options": {"include_usage": True}}
    assert asked.endswith(body[1:])  # every byte of the client's body is still there
    assert ask_for_usage("/v1/completions", body) is not None
    assert ask_for_usage("/v1/embeddings", body) is None
    not_streamed = b'{"model": "m", "messages": [{"content": "\\"stream\\": true"}]}'
    assert ask_for_usage("/v1/chat/completions", not_streamed) is None
    already = b'{"stream": true, "stream_options": {"include_usage": true}}'
    assert ask_for_usage("/v1/chat/completions", already) is None
    declined = b'{"stream": true, "stream_options": {"include_usage": false, "x": 1}}'
    assert json.loads(ask_for_usage("/v1/chat/completions", declined) or b"")["stream_options"] == {
        "include_usage": True,
        "x": 1,
    }
    assert ask_for_usage("/v1/chat/completions", b'{"stream": true') is None  # not JSON
    deep = b'{"stream": true, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert ask_for_usage("/v1/chat/completions", deep) is None


def test_pieces_count_the_text_deltas_streamed():
    meter = meter_for("text/event-stream", "")
    meter.feed(sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]}))
    meter.feed(sse(chunk(1), chunk(2), {"choices": [{"delta": {"reasoning_content": "hm"}}]}))
    assert meter.pieces == 3
