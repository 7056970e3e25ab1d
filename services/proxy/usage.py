"""Token usage read from upstream responses as they pass through, without changing them.

`meter_for(content_type, content_encoding)` picks how: an SSE stream is scanned line by line for
chunks that carry `"usage"` (the last one wins); a JSON body is kept (up to a bound) and its
`prompt_tokens` / `completion_tokens` members are read at the end without parsing the rest (an
unescaped quoted key can only be a real key). Anything else has no usage.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Protocol

MAX_JSON_BODY = 8 * 1024 * 1024
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')

Usage = tuple[int | None, int | None]


def usage_of(document: Any) -> Usage:
    usage = document.get("usage") if isinstance(document, dict) else None
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


class Meter(Protocol):
    def feed(self, chunk: bytes) -> None: ...
    def usage(self) -> Usage: ...


class SseMeter:
    def __init__(self) -> None:
        self._tail = b""
        self._usage: Usage = (None, None)

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self._tail += chunk
            return
        data = self._tail + chunk
        end = data.rfind(b"\n")
        self._tail = data[end + 1 :]
        if b'"usage"' not in data:
            return
        for line in data[:end].split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    found = usage_of(json.loads(line[5:]))
                except ValueError:
                    continue
                if found != (None, None):
                    self._usage = found

    def usage(self) -> Usage:
        return self._usage


class JsonMeter:
    def __init__(self, encoding: str) -> None:
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
        return _last_int(_PROMPT, body), _last_int(_COMPLETION, body)


def _last_int(pattern: re.Pattern[bytes], body: bytes) -> int | None:
    found = pattern.findall(body)
    return int(found[-1]) if found else None


def meter_for(content_type: str, content_encoding: str) -> Meter | None:
    if content_type.startswith("text/event-stream"):
        return SseMeter() if content_encoding in ("", "identity") else None
    if "json" in content_type and content_encoding in ("", "identity", "gzip", "deflate"):
        return JsonMeter(content_encoding)
    return None
