"""Time to first token of each deployment, for the alias strategy "latency" (shared/fleet.py,
services/proxy/aliases.py): within a priority, the deployment whose recent answers started
soonest comes first.

- What is measured: from just before the request goes to the upstream (after any wait in its
  fair queue) to the first bytes of the answer's body: the first token of a stream (which a
  server such as vLLM sends long after its headers), the whole answer of one that is not
  streamed. Only answers that are no error (status below 400) count: an upstream that fails
  fast must not look fast.
- Kept per deployment (the upstream's id and the model it is asked for) as an exponentially
  weighted moving average (ALPHA of each new figure), in each proxy worker from its own
  requests; only the deployments of aliases with the strategy "latency" are measured, so no
  other answer pays for it.
- A deployment not measured yet comes first (it is tried once, then known). A figure changes
  only when the deployment serves: a slow one serves again when those before it are busy
  elsewhere (cooling, at their limit, refusing), which is when its figure is brought up to date.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable

from services.proxy.upstream import Answer, Headers
from shared.fleet import Alias

ALPHA = 0.3

Key = tuple[str, str]  # upstream id, model


class Latencies:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.watched: frozenset[str] = frozenset()  # ids of upstreams worth timing
        self._ewma: dict[Key, float] = {}

    def watch(self, aliases: Iterable[Alias]) -> None:
        """Time the upstreams these aliases choose by latency (and no other)."""
        self.watched = frozenset(
            d.upstream for a in aliases if a.strategy == "latency" for d in a.deployments
        )

    def of(self, upstream_id: str, model: str) -> float | None:
        """The deployment's time to first token, in seconds; None if not measured yet."""
        return self._ewma.get((upstream_id, model))

    def observe(self, upstream_id: str, model: str, seconds: float) -> None:
        key = (upstream_id, model)
        before = self._ewma.get(key)
        self._ewma[key] = seconds if before is None else before + ALPHA * (seconds - before)

    def timed(self, upstream_id: str, model: str | None, answer: Answer, sent: float) -> Answer:
        """`answer`, timed to its first bytes from `sent` (a `clock` reading) if its upstream
        is watched; else as it is."""
        if upstream_id not in self.watched or model is None or answer.status >= 400:
            return answer
        return _Timed(answer, lambda: self.observe(upstream_id, model, self.clock() - sent))


class _Timed:
    """An Answer that reports its first body bytes."""

    def __init__(self, inner: Answer, first: Callable[[], None]) -> None:
        self.inner = inner
        self.status = inner.status
        self.headers: Headers = inner.headers
        self._first: Callable[[], None] | None = first

    def header(self, name: bytes) -> bytes:
        return self.inner.header(name)

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner.chunks():
            if self._first is not None and chunk:
                self._first()
                self._first = None
            yield chunk

    def release(self) -> None:
        self.inner.release()

    def close(self) -> None:
        self.inner.close()
