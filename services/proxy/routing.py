"""Which upstream gets a request: pure functions over the request body and the catalog.

- The model comes from the JSON body (`"model"`), or from the `model` field of a multipart form.
  A JSON body is parsed only as deep as that needs: when the text holds exactly one string
  member named "model" that is taken as is (prompts can be large, and parsing them costs more
  than the rest of the request); otherwise the body is parsed in full.
- Upstreams that list the model are candidates; healthy ones first, then the fewest requests in
  flight, ties broken by a stable hash of the model (so one model's traffic sticks to one
  upstream while load is even, which keeps its KV cache warm).
- A request without a model may go to any upstream, healthy ones first, in TARGET_URLS order.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from typing import Any

from services.proxy.catalog import UpstreamState
from services.proxy.errors import invalid_json

_JSON_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]*)"')
_MULTIPART_MODEL = re.compile(
    rb'content-disposition:[^\r\n]*\bname="model"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n',
    re.IGNORECASE,
)
_DOT_SEGMENT = re.compile(r"/\.\.?(?:;[^/]*)?(?:/|$)")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise invalid_json(str(exc)) from exc


def inside_v1(path: str) -> bool:
    """Is this (decoded) path under `/v1`, however an upstream might resolve it?

    Dot segments (`..`, `.`, also with `;` parameters) and backslashes are refused: nginx has
    resolved what it recognizes, and what is left could take a request to an upstream's routes
    outside its `/v1` (Ollama's `/api/delete`, say).
    """
    if path != "/v1" and not path.startswith("/v1/"):
        return False
    return "\\" not in path and ("." not in path or _DOT_SEGMENT.search(path) is None)


def request_model(content_type: str, body: bytes) -> str | None:
    """The model a request asks for, if any.

    Raises ProxyError (400) for a JSON body that does not parse, when it had to be parsed.
    """
    if not body:
        return None
    if "json" in content_type or (not content_type and body[:1] == b"{"):
        found: list[bytes] = _JSON_MODEL.findall(body)
        if len(found) == 1:
            return found[0].decode(errors="replace")
        document = parse_json(body)
        model = document.get("model") if isinstance(document, dict) else None
        return model if isinstance(model, str) else None
    if content_type.startswith("multipart/form-data"):
        match = _MULTIPART_MODEL.search(body)
        return match.group(1).decode(errors="replace") if match else None
    return None


def rank(states: Sequence[UpstreamState], model: str | None) -> list[UpstreamState]:
    """Order candidates: healthy first, then fewest in flight, then a stable rotation by model."""
    count = len(states)
    if count <= 1:
        return list(states)
    offset = zlib.crc32(model.encode()) % count if model else 0
    order = sorted(
        range(count),
        key=lambda i: (not states[i].healthy, states[i].in_flight, (i - offset) % count),
    )
    return [states[i] for i in order]


def rank_any(states: Sequence[UpstreamState]) -> list[UpstreamState]:
    """For requests without a model: healthy first, in TARGET_URLS order."""
    return sorted(states, key=lambda s: not s.healthy)
