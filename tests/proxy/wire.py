"""Upstreams that answer in the exact wire formats of real servers, for the usage tests.

Each format is written as the real server writes it (member order, separators, which chunk
carries what, with and without `stream_options.include_usage`):
- `litellm`: LiteLLM's proxy (pydantic, `exclude_none`): its usage chunk keeps one empty
  choice, `"choices":[{"index":0,"delta":{}}]`; its legacy completion chunks carry
  `"usage":null` when asked, and its usage chunk an empty text choice.
- `llamacpp`: llama.cpp's llama-server (ordered JSON, compact): `timings` go on the last chunk
  it sends, the finishing chunk when not asked for usage and the usage chunk when asked.
- `zeros`: a server that puts a zero usage in every chunk whether asked or not.
Beside them, the Responses API (`/v1/responses`: usage as `input_tokens` / `output_tokens`,
streamed inside `response.completed`) and Anthropic's `/v1/messages` (usage in `message_start`
and `message_delta`), in JSON and streamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.upstream import FakeUpstream

CREATED = 1733250000
TIMINGS = {
    "prompt_n": 9,
    "prompt_ms": 12.5,
    "prompt_per_token_ms": 1.388888888888889,
    "prompt_per_second": 720.0,
    "predicted_n": 3,
    "predicted_ms": 30.25,
    "predicted_per_token_ms": 10.083333333333334,
    "predicted_per_second": 99.17355371900827,
}
WORDS = ("Hello", " from", " the", " wire")
RESPONSE_USAGE = {
    "input_tokens": 100,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 23,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 123,
}
MESSAGE_USAGE = {
    "input_tokens": 25,
    "cache_creation_input_tokens": 10,
    "cache_read_input_tokens": 5,
    "output_tokens": 1,
}


def compact(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))


def events(*documents: Any) -> bytes:
    return b"".join(b"data: " + compact(d).encode() + b"\n\n" for d in documents)


def named(*pairs: tuple[str, Any]) -> bytes:
    return b"".join(f"event: {name}\ndata: {compact(d)}\n\n".encode() for name, d in pairs)


def litellm_chat(model: str, asked: bool) -> bytes:
    head = {
        "id": "chatcmpl-lite",
        "created": CREATED,
        "model": model,
        "object": "chat.completion.chunk",
        "system_fingerprint": "fp_lite",
    }
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"content": w, "role": "assistant"}}]}
        for w in WORDS
    ]
    chunks.append({**head, "choices": [{"finish_reason": "stop", "index": 0, "delta": {}}]})
    if asked:
        usage = {"completion_tokens": 4, "prompt_tokens": 9, "total_tokens": 13}
        chunks.append({**head, "choices": [{"index": 0, "delta": {}}], "usage": usage})
    return events(*chunks) + b"data: [DONE]\n\n"


def litellm_text(model: str, asked: bool) -> bytes:
    head = {"id": "cmpl-lite", "object": "text_completion", "created": CREATED, "model": model}
    extra: dict[str, Any] = {"usage": None} if asked else {}
    chunks = [
        {
            **head,
            "choices": [{"text": w, "index": 0, "logprobs": None, "finish_reason": None}],
            **extra,
        }
        for w in WORDS
    ]
    chunks.append(
        {
            **head,
            "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}],
            **extra,
        }
    )
    if asked:
        chunks.append(
            {
                **head,
                "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": None}],
                "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10},
            }
        )
    return events(*chunks) + b"data: [DONE]\n\n"


def llamacpp_chat(model: str, asked: bool) -> bytes:
    def chunk(choices: list[Any]) -> dict[str, Any]:
        return {
            "choices": choices,
            "created": CREATED,
            "id": "chatcmpl-llama",
            "model": model,
            "system_fingerprint": "b6097-9515c613",
            "object": "chat.completion.chunk",
        }

    first = {"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}
    chunks = [chunk([first])]
    chunks += [chunk([{"finish_reason": None, "index": 0, "delta": {"content": w}}]) for w in WORDS]
    chunks.append(chunk([{"finish_reason": "stop", "index": 0, "delta": {}}]))
    if asked:
        usage = {"completion_tokens": 4, "prompt_tokens": 9, "total_tokens": 13}
        chunks.append({**chunk([]), "usage": usage})
    chunks[-1]["timings"] = TIMINGS
    return events(*chunks) + b"data: [DONE]\n\n"


def zeros_chat(model: str, asked: bool) -> bytes:
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    head = {"id": "c0", "object": "chat.completion.chunk", "created": CREATED, "model": model}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"content": w}}], "usage": zero} for w in WORDS
    ]
    if asked:
        usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        chunks.append({**head, "choices": [], "usage": usage})
    return events(*chunks) + b"data: [DONE]\n\n"


STREAMS = {"litellm": litellm_chat, "llamacpp": llamacpp_chat, "zeros": zeros_chat}


def response_object(model: str, status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    output = []
    if status == "completed":
        text = {"type": "output_text", "text": "".join(WORDS), "annotations": []}
        output = [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [text],
            }
        ]
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def responses_stream(model: str) -> bytes:
    pairs: list[tuple[str, Any]] = [
        (
            "response.created",
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": response_object(model, "in_progress", None),
            },
        )
    ]
    for i, word in enumerate(WORDS):
        delta = {
            "type": "response.output_text.delta",
            "sequence_number": i + 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": word,
        }
        pairs.append(("response.output_text.delta", delta))
    done = {
        "type": "response.completed",
        "sequence_number": len(WORDS) + 1,
        "response": response_object(model, "completed", RESPONSE_USAGE),
    }
    return named(*pairs, ("response.completed", done))


def message_object(model: str, usage: dict[str, Any], done: bool) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(WORDS)}] if done else [],
        "stop_reason": "end_turn" if done else None,
        "stop_sequence": None,
        "usage": usage,
    }


def messages_stream(model: str) -> bytes:
    pairs: list[tuple[str, Any]] = [
        (
            "message_start",
            {"type": "message_start", "message": message_object(model, MESSAGE_USAGE, False)},
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for word in WORDS:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": word},
        }
        pairs.append(("content_block_delta", delta))
    pairs += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return named(*pairs)


@dataclass
class WireUpstream(FakeUpstream):
    """A fake upstream whose chat completions and legacy completions stream in `flavour`'s
    format, that serves `/v1/responses` and `/v1/messages`, adds `headers` to its answers, and
    answers 401 to every request when `refuse` (its key is not the one it expects), and drops the
    connection instead of sending a usage chunk when `cut_at_usage`."""

    flavour: str = "litellm"
    headers: dict[str, str] = field(default_factory=dict)
    refuse: bool = False
    cut_at_usage: bool = False  # drop the connection where the usage chunk would go

    async def complete(self, request: web.Request, path: str, body: bytes) -> web.StreamResponse:
        if self.refuse:
            error = {
                "message": "Incorrect API key provided: sk-up***key.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
            return web.json_response({"error": error}, status=401, headers=self.headers)
        document: dict[str, Any] = json.loads(body) if body else {}
        model = document.get("model", "")
        streamed = document.get("stream") is True
        asked = (document.get("stream_options") or {}).get("include_usage") is True
        if path == "/v1/responses":
            if streamed:
                return await self.sse(request, responses_stream(model))
            return self.json(response_object(model, "completed", RESPONSE_USAGE))
        if path == "/v1/messages":
            if streamed:
                return await self.sse(request, messages_stream(model))
            usage = {**MESSAGE_USAGE, "output_tokens": 15}
            return self.json(message_object(model, usage, True))
        if path == "/v1/completions" and streamed:
            return await self.sse(request, litellm_text(model, asked))
        if path == "/v1/chat/completions" and streamed:
            return await self.sse(request, STREAMS[self.flavour](model, asked))
        response = await super().complete(request, path, body)
        if not response.prepared:
            response.headers.update(self.headers)
        return response

    def json(self, document: Any) -> web.Response:
        return web.Response(
            body=compact(document).encode(),
            content_type="application/json",
            headers=self.headers,
        )

    async def sse(self, request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **self.headers})
        await response.prepare(request)
        for event in body.split(b"\n\n")[:-1]:  # one write per event, as servers flush them
            if self.cut_at_usage and b'"usage":{' in event and request.transport is not None:
                request.transport.abort()
                return response
            await response.write(event + b"\n\n")
        await response.write_eof()
        return response
