"""Which upstream gets a request: pure functions over the request body and the catalog.

- The model is the body's top-level `"model"` member (JSON), or its `model` field (multipart
  form): the one the upstream will read, since it decides the key's policy, the routing and the
  analytics row. A body that names it ambiguously is refused (400), because upstreams differ on
  which one they take: two top-level members that decode to "model" (Python's and most parsers
  take the last, Go's the last too but matching names case-insensitively), a member named
  "Model" or "MODEL" (Go's encoding/json, in Ollama, takes it), two multipart `model` fields
  (Go takes the first, Starlette the last), extended or repeated parameters in a part's
  Content-Disposition, or an encoded `model` part.
- The JSON body is parsed once (`body.RequestBody`, orjson first); duplicates are looked for in
  the raw text only when it could hold two such names (a second literal `"model"` or a `\\u`
  escape of one of its letters), with the standard parser keeping every member. See
  docs/performance.md.
- Upstreams that list the model are candidates; available ones first (healthy and not cooling
  down, services/proxy/cooldown.py), then the fewest requests in
  flight, ties broken by a stable hash of the model (so one model's traffic sticks to one
  upstream while load is even, which keeps its KV cache warm).
- A request without a model may go to any upstream, healthy ones first, in TARGET_URLS order.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.proxy.body import RequestBody
from services.proxy.catalog import UpstreamState
from services.proxy.errors import ambiguous_model, invalid_json, invalid_multipart

# A `\u` escape of a letter of "model", in either case: with one, a member name can spell
# "model" without the literal text `"model"` appearing.
_MODEL_LETTER_ESCAPE = re.compile(rb"\\u00[46][45cdfCDF]")
_DOT_SEGMENT = re.compile(r"/\.\.?(?:;[^/]*)?(?:/|$)")
# A Content-Disposition parameter's name (a quoted value holding `;x=` only adds a false name,
# which can only make a part refused, never accepted).
_PARAMETER = re.compile(r";\s*([^\s=;]+)\s*=")
MAX_MODEL_FIELD = 1024  # bytes of a multipart `model` field; a longer one is refused


class _Members(list[tuple[str, Any]]):
    """A JSON object's members in order, duplicates kept (json's `object_pairs_hook`)."""


def inside_v1(path: str) -> bool:
    """Is this (decoded) path under `/v1`, however an upstream might resolve it?

    Dot segments (`..`, `.`, also with `;` parameters) and backslashes are refused: nginx has
    resolved what it recognizes, and what is left could take a request to an upstream's routes
    outside its `/v1` (Ollama's `/api/delete`, say).
    """
    if path != "/v1" and not path.startswith("/v1/"):
        return False
    return "\\" not in path and ("." not in path or _DOT_SEGMENT.search(path) is None)


def request_model(content_type: str, body: RequestBody) -> str | None:
    """The model a request asks for, if any: the body's top-level `model` member as the
    upstream will read it (None if there is none, or it is not a string).

    Raises ProxyError (400) for a body that does not parse, when it had to be parsed, and for
    one that names its model ambiguously.
    """
    raw = body.raw
    if not raw:
        return None
    if "json" in content_type or (not content_type and raw[:1] == b"{"):
        return _json_model(body)
    if content_type.startswith("multipart/form-data"):
        return _multipart_model(content_type, raw)
    return None


def _json_model(body: RequestBody) -> str | None:
    document, raw = body.document, body.raw
    if body.error is not None:
        raise invalid_json(body.error)
    if not body.strict:
        # What orjson refuses and Python's parser takes (NaN, lone surrogates, huge integers):
        # the standard parser decides, as a Python upstream would.
        return _model_member(_members(raw))
    if not isinstance(document, dict):
        return None
    named = [name for name in document if name.lower() == "model"]
    if not named:
        return None
    if named != ["model"]:
        raise ambiguous_model(named)
    if raw.count(b'"model"') > 1 or (b"\\u00" in raw and _MODEL_LETTER_ESCAPE.search(raw)):
        return _model_member(_members(raw))  # the text may hold the member twice
    value = document["model"]
    return value if isinstance(value, str) else None


def _members(body: bytes) -> _Members | None:
    """The top-level members of a JSON object body, duplicates kept; None if not an object."""
    try:
        document = json.loads(body, object_pairs_hook=_Members)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise invalid_json(str(exc)) from exc
    return document if isinstance(document, _Members) else None


def _model_member(members: _Members | None) -> str | None:
    named = [(name, value) for name, value in members or () if name.lower() == "model"]
    if not named:
        return None
    if [name for name, _ in named] != ["model"]:
        raise ambiguous_model([name for name, _ in named])
    value = named[0][1]
    return value if isinstance(value, str) else None


def _multipart_model(content_type: str, body: bytes) -> str | None:
    """The value of the form's one `model` field, read with python-multipart (the parser
    Starlette uses)."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise invalid_multipart("the Content-Type has no boundary")
    parts: list[_Part] = []
    header = [b"", b""]

    def on_part_begin() -> None:
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        name, value = header[0].decode("latin-1").lower(), header[1].decode("latin-1")
        header[:] = [b"", b""]
        if name in parts[-1].headers:
            raise invalid_multipart(f"a part has two {name} headers")
        parts[-1].headers[name] = value

    def on_headers_finished() -> None:
        part = parts[-1]
        part.parameters = _parameters(part.headers)
        part.is_model = part.parameters.get(b"name") == b"model"

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        if part.is_model and len(part.value) <= MAX_MODEL_FIELD:
            part.value += data[start:end]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise invalid_multipart(str(exc)) from exc
    fields = [part for part in parts if part.is_model]
    if not fields:
        return None
    if len(fields) > 1:
        raise ambiguous_model(["model"] * len(fields))
    field = fields[0]
    if "content-transfer-encoding" in field.headers or b"filename" in field.parameters:
        raise invalid_multipart("the model field must be plain text, not a file or encoded")
    if len(field.value) > MAX_MODEL_FIELD:
        raise invalid_multipart(f"the model field is longer than {MAX_MODEL_FIELD} bytes")
    try:
        return field.value.decode()
    except UnicodeDecodeError as exc:
        raise invalid_multipart("the model field is not UTF-8") from exc


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    parameters: dict[bytes, bytes] = field(default_factory=dict)
    is_model: bool = False
    value: bytearray = field(default_factory=bytearray)


def _parameters(headers: dict[str, str]) -> dict[bytes, bytes]:
    """A part's Content-Disposition parameters. Raises ProxyError (400) for what parsers read
    differently: a parameter given twice, or in RFC 2231's extended form (`name*=`), which
    python-multipart ignores and Go's mime package decodes."""
    disposition = headers.get("content-disposition", "")
    names = [name.lower() for name in _PARAMETER.findall(disposition)]
    if len(names) != len(set(names)) or any("*" in name for name in names):
        raise invalid_multipart(f"ambiguous Content-Disposition: {disposition[:200]}")
    return parse_options_header(disposition)[1]


def rank(states: Sequence[UpstreamState], model: str | None) -> list[UpstreamState]:
    """Order candidates: healthy first, then fewest in flight, then a stable rotation by model."""
    count = len(states)
    if count <= 1:
        return list(states)
    offset = zlib.crc32(model.encode()) % count if model else 0
    order = sorted(
        range(count),
        key=lambda i: (not states[i].available, states[i].in_flight, (i - offset) % count),
    )
    return [states[i] for i in order]


def rank_any(states: Sequence[UpstreamState]) -> list[UpstreamState]:
    """For requests without a model: healthy first, in TARGET_URLS order."""
    return sorted(states, key=lambda s: not s.available)
