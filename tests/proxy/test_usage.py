import gzip
import json

from services.proxy.usage import meter_for


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
