"""Model aliases: a public model name served by deployments (shared/fleet.py), resolved per
request.

- The deployments whose upstream is in the catalog are candidates, in order: available ones
  (healthy, not cooling down after failures, services/proxy/cooldown.py) and not asked to wait
  by a Retry-After first, then the lowest `priority`; within a priority, drawn by `weight`
  (strategy "weighted"), or the fewest requests in flight first, ties drawn by weight
  ("least-busy": the counts are this worker's, queued requests included), or the soonest
  recent time to first token first, those not measured yet before them ("latency", see
  services/proxy/latency.py). The
  request goes to the first, and to the next ones on the failures services/proxy/fallbacks.py
  allows, each asked for its own model name; then, if the alias names a fallback alias, to its
  deployments, ordered when they are needed.
- The body gets the upstream's model name through the real parser of its format: JSON is parsed
  and written again (orjson keeps numbers and strings exact), a multipart form has its `model`
  field's bytes replaced where python-multipart found them. Nothing else in it changes.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header

from services.proxy.catalog import Catalog, UpstreamState
from services.proxy.errors import ProxyError, invalid_multipart
from services.proxy.fallbacks import Attempt, Route
from shared.fleet import Alias, Deployment

Draw = Callable[[list[Deployment]], Deployment]


def weighted(deployments: list[Deployment]) -> Deployment:
    return random.choices(deployments, weights=[d.weight for d in deployments])[0]


def resolve(
    catalog: Catalog, model: str | None, content_type: str, body: bytes, draw: Draw = weighted
) -> Route | None:
    """For an alias: its deployments in the order to try them, each with its body, and its
    fallback's. None when `model` is no alias. Raises ProxyError when no deployment's upstream
    is there (503), or the body cannot be rewritten (400)."""
    alias = catalog.aliases.get(model) if model is not None else None
    if alias is None:
        return None
    return _route(catalog, alias, content_type, body, draw, {})


def _route(
    catalog: Catalog,
    alias: Alias,
    content_type: str,
    body: bytes,
    draw: Draw,
    bodies: dict[str, bytes],  # by model name, over the whole chain
) -> Route:
    attempts = []
    for state, deployment in order(catalog, alias, draw):
        if deployment.model not in bodies:
            bodies[deployment.model] = rewrite_model(content_type, body, deployment.model)
        attempts.append(Attempt(state, bodies[deployment.model], deployment.model))
    name = alias.fallback
    if name is None:
        return Route(alias.name, attempts)

    def fallback() -> Route | None:
        """The fallback's route as things are now; None if it has gone, or has no upstream."""
        following = catalog.aliases.get(name)
        if following is None:
            return None
        try:
            return _route(catalog, following, content_type, body, draw, bodies)
        except ProxyError:
            return None

    return Route(alias.name, attempts, fallback)


def order(
    catalog: Catalog, alias: Alias, draw: Draw, now: float | None = None
) -> list[tuple[UpstreamState, Deployment]]:
    """The deployments whose upstream is in the catalog, best first: healthy and not cooling
    down, then by priority; within a priority, drawn one after another by weight (the least
    busy first, for the strategy "least-busy")."""
    states = {state.upstream.id: state for state in catalog.states}
    candidates = [(states[d.upstream], d) for d in alias.deployments if d.upstream in states]
    if not candidates:
        raise ProxyError(
            503,
            f"No upstream of the model {alias.name!r} is available",
            "no_upstream",
            type="server_error",
        )
    now = time.monotonic() if now is None else now

    def rank(pair: tuple[UpstreamState, Deployment]) -> tuple[bool, int]:
        state, deployment = pair
        return (not state.available or state.cool_until > now, deployment.priority)

    ordered: list[tuple[UpstreamState, Deployment]] = []
    for _, tier in itertools.groupby(sorted(candidates, key=rank), key=rank):
        pool, drawn = list(tier), []
        while pool:
            picked = draw([d for _, d in pool])
            position = next(i for i, (_, d) in enumerate(pool) if d is picked)
            drawn.append(pool.pop(position))
        if alias.strategy == "least-busy":  # sorted is stable: the draw breaks ties
            drawn.sort(key=lambda pair: pair[0].in_flight)
        elif alias.strategy == "latency":  # not measured yet first, then the soonest
            drawn.sort(key=lambda pair: _latency(catalog, *pair))
        ordered.extend(drawn)
    return ordered


def _latency(catalog: Catalog, state: UpstreamState, deployment: Deployment) -> tuple[bool, float]:
    seconds = catalog.latencies.of(state.upstream.id, deployment.model)
    return (seconds is not None, seconds or 0.0)


def rewrite_model(content_type: str, body: bytes, model: str) -> bytes:
    """`body` asking for `model` instead of what it named (routing.request_model has checked
    that it names one, unambiguously)."""
    if content_type.startswith("multipart/form-data"):
        return _multipart(content_type, body, model)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        # What orjson refuses and Python's parser takes (NaN, huge integers, lone surrogates),
        # as routing reads it: the standard library writes it back the same way.
        standard = json.loads(body)
        standard["model"] = model
        return json.dumps(standard, separators=(",", ":")).encode()
    document["model"] = model
    return orjson.dumps(document)


def _multipart(content_type: str, body: bytes, model: str) -> bytes:
    boundary = parse_options_header(content_type)[1][b"boundary"]
    spans: list[tuple[int, int]] = []
    elsewhere = [False]  # a piece of the value came from the parser's own buffer
    current = [b"", b""]
    in_model = [False]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current[1] += data[start:end]

    def on_header_end() -> None:
        if current[0].lower() == b"content-disposition":
            options = parse_options_header(current[1])[1]
            in_model[0] = options.get(b"name") == b"model"
        current[:] = [b"", b""]

    def on_part_begin() -> None:
        in_model[0] = False

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if in_model[0]:
            if data is body:
                spans.append((start, end))
            else:
                elsewhere[0] = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    parser.write(body)  # the whole body at once: the offsets are the body's
    parser.finalize()
    contiguous = all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    if not spans or elsewhere[0] or not contiguous:
        raise invalid_multipart("the model field could not be rewritten for the upstream")
    start, end = spans[0][0], spans[-1][1]
    return body[:start] + model.encode() + body[end:]
