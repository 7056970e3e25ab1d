"""Testing an upstream for the admin: ask it for its models, then time a tiny request.

The upstream is reached as the proxy reaches it (shared/upstream_access.py: TLS, egress proxy,
credentials). The tiny request is a chat completion of one token to the model asked for, or the
first model the upstream lists. Nothing here raises for the upstream's failures: each step says
what went wrong, for the admin to read (never the credentials).
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
from pydantic import BaseModel

from shared.settings import Settings
from shared.targets import Upstream
from shared.upstream_access import credentials, proxy_url, tls_context

TIMEOUT_SECONDS = 15.0
PROMPT = "Reply with OK."


class ModelsStep(BaseModel):
    ok: bool
    ms: float | None
    status: int | None
    models: list[str]
    error: str | None


class RequestStep(BaseModel):
    ok: bool
    model: str
    ms: float | None
    status: int | None
    error: str | None


async def probe(
    upstream: Upstream, settings: Settings, model: str | None
) -> tuple[ModelsStep, RequestStep | None]:
    headers = {n.decode(): v.decode("latin-1") for n, v in credentials(upstream)}
    try:
        ssl = tls_context(upstream, settings) if upstream.origin.startswith("https:") else None
    except ValueError as exc:
        return ModelsStep(ok=False, ms=None, status=None, models=[], error=str(exc)), None
    proxy = proxy_url(upstream, settings) or None
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    options: dict[str, Any] = {"headers": headers, "ssl": ssl if ssl else True, "proxy": proxy}
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        models = await _models(session, upstream.url + "/models", options)
        if model is None:
            model = models.models[0] if models.models else None
        if model is None:
            return models, None
        body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1}
        started = time.perf_counter()
        try:
            async with session.post(
                upstream.url + "/chat/completions", json=body, **options
            ) as answer:
                text = await answer.text(errors="replace")
                ms = (time.perf_counter() - started) * 1000
                ok = answer.status == 200
                error = None if ok else _error_of(answer.status, text)
                return models, RequestStep(
                    ok=ok, model=model, ms=ms, status=answer.status, error=error
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return models, RequestStep(
                ok=False, model=model, ms=None, status=None, error=_failure(exc)
            )


async def _models(session: aiohttp.ClientSession, url: str, options: dict[str, Any]) -> ModelsStep:
    started = time.perf_counter()
    try:
        async with session.get(url, **options) as answer:
            text = await answer.text(errors="replace")
            ms = (time.perf_counter() - started) * 1000
            if answer.status != 200:
                error = _error_of(answer.status, text)
                return ModelsStep(ok=False, ms=ms, status=answer.status, models=[], error=error)
            try:
                data = json.loads(text).get("data") or []
                ids = [
                    m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)
                ]
            except (ValueError, AttributeError, TypeError):
                error = "the answer is not a model list"
                return ModelsStep(ok=False, ms=ms, status=answer.status, models=[], error=error)
            return ModelsStep(ok=True, ms=ms, status=200, models=ids, error=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return ModelsStep(ok=False, ms=None, status=None, models=[], error=_failure(exc))


def _error_of(status: int, text: str) -> str:
    """The upstream's own message, if it gave one in OpenAI's shape, else its status."""
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    return f"HTTP {status}" + (f": {str(message)[:300]}" if message else "")


def _failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer in {TIMEOUT_SECONDS:g} s"
    return f"{type(exc).__name__}: {exc}"[:300]


def _named(model: dict[str, Any]) -> bool:
    return isinstance(model.get("id"), str)
