"""Request and token limits of an upstream (`requestsPerMinute`, `tokensPerMinute` in
data/upstreams.json), counted where a key's limits are (services/proxy/counters.py): on the
board, exact across every proxy worker of the box, or in Redis (REDIS_URL), exact across every
replica, so that N replicas do not send an upstream N times its quota.

They belong to the upstream, not to an alias's deployment (see shared/fleet.py): every request
sent to the upstream counts, through whichever alias or none.

- Just before a request is sent to an upstream (`take`), it needs one unit of the upstream's
  requests-per-minute bucket, and its tokens-per-minute bucket must not be full. An upstream at
  its limit is skipped (`AtLimit`), and the request goes to the next candidate: the next
  upstream that lists the model, or the next deployment of the alias. When every candidate is
  at its limit, the client gets the soonest of their refusals: a 429 `rate_limit_exceeded` in
  OpenAI's shape with `Retry-After` (and `retry-after-ms`), as a key's limit answers.
- When the answer ends (`charge`), its tokens (the upstream's usage, else an estimate) are
  added to the tokens bucket; an answer that is an error (4xx, 5xx) costs none.
- The buckets are leaky (drained continuously at `limit / 60 s`), keyed by the upstream's id,
  so an upstream whose settings change keeps what it used.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.proxy.board import Bucket
from services.proxy.counters import Counters
from services.proxy.errors import ProxyError
from services.proxy.limits import duration, retry_headers
from shared.targets import Upstream

MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class Rates:
    """An upstream's limits, as buckets of its board slot."""

    name: str  # its slot on the board
    requests: Bucket | None
    tokens: Bucket | None

    @classmethod
    def of(cls, upstream: Upstream) -> Rates | None:
        """None for an upstream without limits: it never touches the board."""
        rpm, tpm = upstream.requests_per_minute, upstream.tokens_per_minute
        if not rpm and not tpm:
            return None
        return cls(
            "upstream-rate:" + (upstream.id or upstream.url),
            Bucket(0, rpm, MINUTE) if rpm else None,
            Bucket(1, tpm, MINUTE) if tpm else None,
        )


class AtLimit(ProxyError):
    """The upstream is at its limit: the request goes elsewhere, or this is the answer."""

    def __init__(self, kind: str, limit: str, wait: float) -> None:
        super().__init__(
            429,
            f"Rate limit reached for {kind}: the upstreams of this model are at their limit"
            f" ({limit}). Try again in {duration(wait)}.",
            "rate_limit_exceeded",
            type=kind,
            headers=tuple(retry_headers(wait)),
        )
        self.wait = wait


def sooner(before: ProxyError | None, refusal: AtLimit) -> ProxyError:
    """What to answer if no candidate takes the request: the refusal that lifts first (an
    upstream at its limit says more than one that could not be reached)."""
    if isinstance(before, AtLimit) and before.wait <= refusal.wait:
        return before
    return refusal


class UpstreamLimits:
    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def take(self, rates: Rates) -> None:
        """Count one request sent, or raise AtLimit (nothing counted)."""
        tokens = (rates.tokens,) if rates.tokens is not None else ()
        verdict = await self.counters.admit(rates.name, rates.requests, tokens, None)
        if verdict.refused == "tokens":
            assert rates.tokens is not None
            limit = f"{rates.tokens.capacity} tokens per minute"
            raise AtLimit("tokens", limit, verdict.tokens[verdict.bucket].wait(1))
        if verdict.refused == "requests":
            assert rates.requests is not None and verdict.requests is not None
            limit = f"{rates.requests.capacity} requests per minute"
            raise AtLimit("requests", limit, verdict.requests.wait(1))

    def charge(self, rates: Rates, tokens: int) -> None:
        """The answer ended, having used `tokens`. Never waits."""
        if rates.tokens is not None and tokens > 0:
            self.counters.release(rates.name, False, (rates.tokens,), tokens)
