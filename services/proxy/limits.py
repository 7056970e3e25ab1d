"""Per-key policy at the proxy: enabled, expiry, allowed models, rate and concurrency limits.

A `Policy` is compiled once per key whenever `apikeys.json` changes, so a request pays only for
what its key sets: a key without limits never touches the counter store.

Rates are leaky buckets in the counter store (services/proxy/counters.py: the board, exact
across the workers of a machine, or Redis, across replicas): a request needs one unit of
requests-per-minute; a request is admitted while its tokens-per-minute and tokens-per-day
buckets are not full, and its tokens (from the upstream's usage, or an estimate) are added when
it ends, so a long answer can overdraw a bucket and hold the next request back until it drains.
Answers carry OpenAI's `x-ratelimit-*` headers; a refusal is a 429 with `Retry-After`, the same
whatever the store.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from services.proxy import errors
from services.proxy.board import Bucket, Level
from services.proxy.counters import Counters
from services.proxy.errors import ProxyError
from shared.apikeys import ApiKey, parse_time

log = logging.getLogger("proxy.limits")

Headers = list[tuple[bytes, bytes]]


def duration(seconds: float) -> str:
    """OpenAI's reset format: `17ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole_minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


@dataclass(frozen=True, slots=True)
class Policy:
    key: ApiKey
    expires: float | None
    models: re.Pattern[str] | None
    requests: Bucket | None
    tokens: tuple[Bucket, ...]
    max_concurrent: int | None
    retired: float | None = None  # a previous secret's: refused from then on (epoch seconds)

    @classmethod
    def of(cls, key: ApiKey) -> Policy:
        limits = key.limits
        tokens = []
        if limits.tokensPerMinute:
            tokens.append(Bucket(1, limits.tokensPerMinute, 60.0))
        if limits.tokensPerDay:
            tokens.append(Bucket(2, limits.tokensPerDay, 86400.0))
        return cls(
            key=key,
            expires=parse_time(key.expiresAt).timestamp() if key.expiresAt else None,
            models=(
                None
                if key.models is None
                else re.compile("|".join(fnmatch.translate(p) for p in key.models) or "(?!)")
            ),
            requests=Bucket(0, limits.requestsPerMinute, 60.0)
            if limits.requestsPerMinute
            else None,
            tokens=tuple(tokens),
            max_concurrent=limits.maxConcurrent,
        )

    @property
    def limited(self) -> bool:
        return self.requests is not None or bool(self.tokens) or self.max_concurrent is not None

    def previous(self, until: str) -> Policy:
        """This policy for a previous secret of the key, accepted before `until`."""
        return replace(self, retired=parse_time(until).timestamp())

    def check_key(self) -> None:
        """Raises ProxyError for a disabled or expired key, or a replaced secret past its
        overlap."""
        if self.retired is not None and self.retired <= time.time():
            raise errors.key_refused(
                "This API key was rotated: use its new secret", "api_key_rotated"
            )
        if not self.key.enabled:
            raise errors.key_refused("This API key is disabled", "api_key_disabled")
        if self.expires is not None and self.expires <= time.time():
            raise errors.key_refused(
                f"This API key expired at {self.key.expiresAt}", "api_key_expired"
            )

    def allows(self, model: str) -> bool:
        return self.models is None or self.models.fullmatch(model) is not None

    def check_model(self, model: str | None) -> None:
        """Raises ProxyError (403) when the key may not use `model`."""
        if self.models is None:
            return
        if model is None:
            raise errors.model_required()
        if not self.allows(model):
            raise errors.model_not_allowed(model)


@dataclass(slots=True)
class Admission:
    """A request let through by its key's limits; `Limiter.release` when it ends."""

    policy: Policy
    headers: Headers
    concurrent: bool


class Limiter:
    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        # Told of each refusal: the key and the limit it reached, in words.
        self.on_refused: Callable[[ApiKey, str], None] | None = None

    async def admit(self, policy: Policy) -> Admission | None:
        """Count the request against its key's limits, or raise a 429 ProxyError."""
        if not policy.limited:
            return None
        most = policy.max_concurrent
        verdict = await self.counters.admit(
            "key:" + policy.key.id, policy.requests, policy.tokens, most
        )
        requests, tokens = verdict.requests, verdict.tokens
        headers = _headers(requests, tokens)
        if verdict.refused == "requests":
            assert requests is not None
            limit = f"{requests.capacity} requests per minute"
            self._refused(policy, limit)
            raise _refusal("requests", limit, requests.wait(1), headers)
        if verdict.refused == "tokens":
            bucket, level = policy.tokens[verdict.bucket], tokens[verdict.bucket]
            limit = f"{bucket.capacity} tokens per {'minute' if bucket.period == 60 else 'day'}"
            self._refused(policy, limit)
            raise _refusal("tokens", limit, level.wait(1), headers)
        if verdict.refused == "concurrency":
            self._refused(policy, f"{most} requests at a time")
            raise ProxyError(
                429,
                f"Too many requests in flight for this key: the limit is {most} at a time",
                "concurrency_limit_exceeded",
                type="requests",
                headers=((b"retry-after", b"1"), *headers),
            )
        return Admission(policy, headers, most is not None)

    def _refused(self, policy: Policy, limit: str) -> None:
        if self.on_refused is not None:
            self.on_refused(policy.key, limit)

    def release(self, admission: Admission, tokens: int | None) -> None:
        """The request ended, having used `tokens` (None: not known)."""
        policy = admission.policy
        used = tokens or 0
        if admission.concurrent or (used and policy.tokens):
            self.counters.release("key:" + policy.key.id, admission.concurrent, policy.tokens, used)


def _refusal(kind: str, limit: str, wait: float, headers: Headers) -> ProxyError:
    return ProxyError(
        429,
        f"Rate limit reached for {kind}: this key may use {limit}. Try again in {duration(wait)}.",
        "rate_limit_exceeded",
        type=kind,
        headers=(*retry_headers(wait), *headers),
    )


def retry_headers(wait: float) -> Headers:
    """When to try again: `retry-after` in whole seconds, and `retry-after-ms`, which the
    openai SDKs prefer."""
    return [
        (b"retry-after", str(max(1, math.ceil(wait))).encode()),
        (b"retry-after-ms", str(math.ceil(wait * 1000)).encode()),
    ]


def _headers(requests: Level | None, tokens: list[Level]) -> Headers:
    out: Headers = []
    if requests is not None:
        out += _level_headers("requests", requests)
    if tokens:  # the tighter of tokens per minute and per day
        out += _level_headers("tokens", min(tokens, key=lambda level: level.remaining))
    return out


def _level_headers(kind: str, level: Level) -> Headers:
    return level_headers(kind, level.capacity, level.remaining, level.reset)


def level_headers(kind: str, limit: int, remaining: int, reset: float) -> Headers:
    """OpenAI's `x-ratelimit-*` headers for `kind` ("requests" or "tokens")."""
    return [
        (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{kind}".encode(), str(remaining).encode()),
        (f"x-ratelimit-reset-{kind}".encode(), duration(reset).encode()),
    ]
