"""Token usage read from upstream responses as they pass through.

`meter_for(content_type, content_encoding)` picks how: an SSE stream is scanned line by line for
events that carry `"usage"` (each count the latest given) and counts the pieces of text it
delivers (the estimate of a stream cut short); a JSON body is kept (up to a bound) and its
counts are read at the end without parsing the rest (an unescaped quoted key can only be a real
key). Anything else has no usage.

Usage is read in the shapes of every API an upstream may speak: chat and legacy completions
(`prompt_tokens` / `completion_tokens`), the Responses API (`input_tokens` / `output_tokens`,
streamed inside `response.completed`), and Anthropic's `/v1/messages` (`input_tokens`, to which
its separately counted cache reads and writes are added, and `output_tokens`; streamed in
`message_start` and, cumulatively, `message_delta`).

A streamed completion whose client did not ask for usage is sent upstream with
`stream_options.include_usage` (`ask_for_usage`), and `UsageStripper` takes back what that adds
to the stream (`"usage": null` members and the usage chunk, whether its `choices` are empty or
hold one empty choice), so the client receives the bytes it would have without it, llama.cpp's
`timings` included (see `UsageStripper`).
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Protocol

from services.proxy.body import RequestBody
from services.proxy.json_members import Member, appended, members, without
from shared.analytics import RequestRow

MAX_JSON_BODY = 8 * 1024 * 1024
# An SSE line longer than this cannot be a usage chunk; it is not kept (a stream that never ends
# its line would otherwise be held whole, and copied again for every chunk).
MAX_SSE_LINE = 64 * 1024
# The meter keeps longer lines: a Responses stream's `response.completed` event repeats the whole
# answer before its usage.
MAX_USAGE_LINE = 1024 * 1024
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_INPUT = re.compile(rb'"input_tokens"\s*:\s*(\d+)')
_OUTPUT = re.compile(rb'"output_tokens"\s*:\s*(\d+)')
_CACHE_INPUT = re.compile(rb'"cache_(?:creation|read)_input_tokens"\s*:\s*(\d+)')
# A streamed piece of text, about one token: a non-empty delta of a chat or text completion, of
# a Responses stream (`"delta":"..."`) or of an Anthropic one (`"text":"..."`).
_PIECE = re.compile(rb'"(?:content|text|reasoning_content|delta)"\s*:\s*"(?!")')
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
USAGE_PATHS = ("/v1/chat/completions", "/v1/completions")
# Where an event of a stream carries its usage when not at its top: in the Responses API's
# `response.*` events and in Anthropic's `message_start`.
_INNER = ("response", "message")

Usage = tuple[int | None, int | None]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_of(document: Any) -> Usage:
    """The (prompt, completion) tokens a document or stream event reports, None where not."""
    if not isinstance(document, dict):
        return None, None
    usage = document.get("usage")
    for name in _INNER:
        inner = document.get(name)
        if usage is None and isinstance(inner, dict):
            usage = inner.get("usage")
    if not isinstance(usage, dict):
        return None, None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return _reported(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
    prompt = _int(usage.get("input_tokens"))
    if prompt is not None:
        for cached in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            prompt += _int(usage.get(cached)) or 0
    return _reported(prompt, _int(usage.get("output_tokens")))


def _reported(prompt: int | None, completion: int | None) -> Usage:
    """No counts where every count is zero: some servers put a zero usage in every chunk
    whether asked or not, and a real request has at least one prompt token."""
    return (None, None) if not prompt and not completion else (prompt, completion)


class Meter(Protocol):
    """Reads usage from an answer as it passes: its counts, and the pieces of text it
    delivered (the estimate of an answer that gave no counts)."""

    pieces: int

    def feed(self, chunk: bytes) -> None: ...
    def usage(self) -> Usage: ...


class SseMeter:
    def __init__(self) -> None:
        self._tail = b""
        self._skip = False  # in the rest of a line longer than MAX_SSE_LINE
        self._usage: Usage = (None, None)
        self.pieces = 0

    def feed(self, chunk: bytes) -> None:
        self.pieces += len(_PIECE.findall(chunk))
        if chunk[-1:] == b"\n" and not self._tail and not self._skip and b'"usage"' not in chunk:
            return  # whole lines without usage (most chunks of a stream): nothing to keep
        if b"\n" not in chunk:
            if self._skip or len(self._tail) + len(chunk) > MAX_USAGE_LINE:
                self._tail, self._skip = b"", True
            else:
                self._tail += chunk
            return
        if self._skip:
            self._skip = False
            chunk = chunk[chunk.index(b"\n") + 1 :]
        data = self._tail + chunk
        end = data.rfind(b"\n")
        self._tail = data[end + 1 :]
        if len(self._tail) > MAX_USAGE_LINE:
            self._tail, self._skip = b"", True
        if b'"usage"' not in data:
            return
        for line in data[:end].split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    found = usage_of(json.loads(line[5:]))
                except ValueError:
                    continue
                self._usage = (
                    self._usage[0] if found[0] is None else found[0],
                    self._usage[1] if found[1] is None else found[1],
                )

    def usage(self) -> Usage:
        return self._usage


class JsonMeter:
    def __init__(self, encoding: str) -> None:
        self.pieces = 0  # a JSON answer is counted whole or not at all
        self._encoding = encoding
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= MAX_JSON_BODY:
            self._chunks.append(chunk)

    def usage(self) -> Usage:
        if self._size > MAX_JSON_BODY:
            return None, None
        body = b"".join(self._chunks)
        if self._encoding in ("gzip", "deflate"):
            try:
                body = zlib.decompressobj(wbits=47).decompress(body, MAX_JSON_BODY)  # gzip/zlib
            except zlib.error:
                return None, None
        prompt, completion = _last_int(_PROMPT, body), _last_int(_COMPLETION, body)
        if (prompt, completion) != (None, None):
            return _reported(prompt, completion)
        prompt = _last_int(_INPUT, body)
        if prompt is not None:
            prompt += sum(int(n) for n in _CACHE_INPUT.findall(body))
        return _reported(prompt, _last_int(_OUTPUT, body))


def tokens_used(row: RequestRow, meter: Meter | None) -> int:
    """The tokens a request costs its key: the upstream's count, else an estimate (text pieces
    streamed, plus a quarter of the request's bytes), nothing for an answer never relayed."""
    if not row.usage_estimated and (row.prompt_tokens, row.completion_tokens) != (None, None):
        return (row.prompt_tokens or 0) + (row.completion_tokens or 0)
    if not row.bytes_out:
        return 0
    if row.usage_estimated:  # the pieces of a stream cut short, counted as it passed
        return (row.completion_tokens or 0) + row.bytes_in // 4
    return (0 if meter is None else meter.pieces) + row.bytes_in // 4


def _last_int(pattern: re.Pattern[bytes], body: bytes) -> int | None:
    found = pattern.findall(body)
    return int(found[-1]) if found else None


def meter_for(content_type: str, content_encoding: str) -> Meter | None:
    if content_type.startswith("text/event-stream"):
        return SseMeter() if content_encoding in ("", "identity") else None
    if "json" in content_type and content_encoding in ("", "identity", "gzip", "deflate"):
        return JsonMeter(content_encoding)
    return None


def ask_for_usage(path: str, body: RequestBody) -> bytes | None:
    """The body with `stream_options.include_usage` set, for a streamed completion that did
    not ask for usage; None for anything else."""
    raw = body.raw
    if path not in USAGE_PATHS or not _STREAM_TRUE.search(raw):
        return None
    document = body.members  # not JSON, or nested too deep: the upstream says so
    if document is None or document.get("stream") is not True:
        return None
    options = document.get("stream_options")
    if options is None:  # the common case: insert the member, leave every other byte alone
        start = raw.index(b"{") + 1
        return raw[:start] + b'"stream_options":{"include_usage":true},' + raw[start:]
    if not isinstance(options, dict) or options.get("include_usage") is True:
        return None
    return json.dumps({**document, "stream_options": {**options, "include_usage": True}}).encode()


# The members of a chat or text completion chunk that every chunk of a stream carries: they are
# not news when the chunk that ask_for_usage added carries them too.
_ENVELOPE = frozenset(
    {"id", "object", "created", "model", "system_fingerprint", "service_tier", "obfuscation"}
)
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')
# `"usage": null` and the comma joining it to a neighbour. A quoted name not escaped can only be
# a real name, so on a line that holds it once this is the member itself: removed without
# parsing the line (the common case, every chunk of a stream asked for usage).
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,\s*')
_BLANK = (b"", b"\r")


class UsageStripper:
    """Takes back from an SSE stream what `ask_for_usage` added, so that the client receives
    the bytes the upstream would have sent it without `stream_options.include_usage`:

    - a `"usage": null` member is removed from any chunk;
    - the chunk that only carries usage (its `choices` empty, or each choice empty, as LiteLLM
      sends it: `[{"index":0,"delta":{}}]`) is removed with the blank line that ends it;
    - what else that chunk carries (llama.cpp's `timings`) goes back where the upstream puts it
      when not asked for usage: at the end of the chunk that finished the answer. That chunk (a
      choice with a `finish_reason`, without usage of its own) is held until the next line
      shows whether usage follows it.

    A chunk whose usage comes with content is the upstream's own doing and passes untouched.
    Whole lines pass through untouched unless they carry `"usage"` or a finish reason; a
    partial line waits for its end (unless it grows longer than MAX_SSE_LINE: then it passes as
    it comes)."""

    def __init__(self) -> None:
        self._tail = b""
        self._drop_blank = False
        self._passing = False  # in a line too long to be one that ask_for_usage added
        self._held: list[bytes] | None = None  # the finishing event's lines, from its data line
        self._held_ended = False  # its blank line has come

    def feed(self, chunk: bytes) -> bytes:
        if (
            chunk[-1:] == b"\n"
            and not self._tail
            and not self._passing
            and not self._drop_blank
            and self._held is None
            and b'"usage"' not in chunk
            and not _FINISH.search(chunk)
        ):
            return chunk  # whole lines with nothing to take back (most chunks of a stream)
        if self._passing:  # relayed as it comes, not held until its end
            newline = chunk.find(b"\n") + 1
            if not newline:
                return chunk
            self._passing = False
            return chunk[:newline] + self.feed(chunk[newline:])
        data = self._tail + chunk if self._tail else chunk
        end = data.rfind(b"\n") + 1
        self._tail, long = data[end:], b""
        if len(self._tail) > MAX_SSE_LINE:
            self._tail, long, self._passing = b"", self._tail, True
        lines = data[:end]
        if (
            b'"usage"' not in lines
            and not self._drop_blank
            and self._held is None
            and not _FINISH.search(lines)
        ):
            return lines + long
        out: list[bytes] = []
        for line in lines.split(b"\n")[:-1]:
            self._line(line, out)
        if long:
            self._release(out)
        return (b"\n".join(out) + b"\n" if out else b"") + long

    def flush(self) -> bytes:
        out: list[bytes] = []
        self._release(out)
        tail, self._tail = self._tail, b""
        return (b"\n".join(out) + b"\n" if out else b"") + tail

    def _release(self, out: list[bytes]) -> None:
        if self._held is not None:
            out.extend(self._held)
            self._held = None

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if self._held is not None:
            if line in _BLANK or not self._held_ended:  # still the finishing event
                self._held.append(line)
                self._held_ended = line in _BLANK
                return
            if self._merge_usage_chunk(line):
                self._release(out)
                self._drop_blank = True
                return
            self._release(out)
        if self._drop_blank and line in _BLANK:
            self._drop_blank = False
            return
        if not line.startswith(b"data:"):
            out.append(line)
            return
        null = _USAGE_NULL.search(line) if b'"usage"' in line else None
        if null is not None and line.count(b'"usage"') == 1:
            line = line[: null.start()] + line[null.end() :]
        elif b'"usage"' in line:
            stripped = self._strip(line)
            if stripped is None:
                self._drop_blank = True
                return
            line = stripped
        if _FINISH.search(line) and _finishes(line[5:]):
            self._held, self._held_ended = [line], False
            return
        out.append(line)

    def _strip(self, line: bytes) -> bytes | None:
        """The data line without what ask_for_usage added; None when nothing is left of it."""
        text, found = _parse(line[5:])
        usage = found.get("usage") if found is not None else None
        if found is None or usage is None:
            return line
        if usage.value is None:
            return line[:5] + without(text, found, "usage").encode()
        if not _usage_only(found):
            return line
        extra = [m for m in found.values() if m.name not in _ENVELOPE | {"choices", "usage"}]
        if not extra:
            return None
        return line[:5] + without(text, found, "usage").encode()  # what the upstream said too

    def _merge_usage_chunk(self, line: bytes) -> bool:
        """When `line` is the usage chunk after the held finishing chunk: its other members go
        to the end of the held chunk, as the upstream sends them when not asked for usage."""
        if not line.startswith(b"data:") or b'"usage"' not in line:
            return False
        text, found = _parse(line[5:])
        if found is None or "usage" not in found or not _usage_only(found):
            return False
        assert self._held is not None
        held_text, held = _parse(self._held[0][5:])
        if held is None:
            return False
        extra = [
            text[m.start : m.end]
            for m in found.values()
            if m.name not in held and m.name not in ("choices", "usage")
        ]
        if extra:
            self._held[0] = b"data:" + appended(held_text, extra).encode()
        return True


def _parse(data: bytes) -> tuple[str, dict[str, Member] | None]:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return "", None
    return text, members(text)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | dict | list) and not value)


def _empty_choice(choice: Any) -> bool:
    """A choice that says nothing: `{"index":0,"delta":{}}`, `{"index":0,"text":""}`, nulls."""
    if not isinstance(choice, dict):
        return False
    return all(
        name == "index"
        or _empty(value)
        or (name == "delta" and isinstance(value, dict) and all(map(_empty, value.values())))
        for name, value in choice.items()
    )


def _usage_only(found: dict[str, Member]) -> bool:
    choices = found["choices"].value if "choices" in found else []
    return (
        isinstance(found["usage"].value, dict)
        and isinstance(choices, list)
        and all(map(_empty_choice, choices))
    )


def _finishes(data: bytes) -> bool:
    """Whether the chunk `data` finishes a choice and the usage chunk may follow it: not when it
    carries the usage itself (as Mistral's API and TGI send it)."""
    _, found = _parse(data)
    if found is None or ("usage" in found and isinstance(found["usage"].value, dict)):
        return False
    choices = found["choices"].value if "choices" in found else None
    return isinstance(choices, list) and any(
        isinstance(c, dict) and isinstance(c.get("finish_reason"), str) for c in choices
    )
