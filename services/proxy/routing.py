"""Which upstream gets a request: pure functions over the request body and the catalog.

- The model comes from the JSON body (`"model"`), or from the `model` field of a multipart form.
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

_MULTIPART_MODEL = re.compile(
    rb'content-disposition:[^\r\n]*\bname="model"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n',
    re.IGNORECASE,
)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise invalid_json(str(exc)) from exc


def request_model(content_type: str, body: bytes) -> tuple[str | None, bool]:
    """The model a request asks for and whether it asks for a stream.

    Raises ProxyError (400) for a JSON body that does not parse.
    """
    if not body:
        return None, False
    if "json" in content_type or (not content_type and body[:1] == b"{"):
        document = parse_json(body)
        if not isinstance(document, dict):
            return None, False
        model = document.get("model")
        return (model if isinstance(model, str) else None), document.get("stream") is True
    if content_type.startswith("multipart/form-data"):
        match = _MULTIPART_MODEL.search(body)
        return (match.group(1).decode(errors="replace") if match else None), False
    return None, False


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
