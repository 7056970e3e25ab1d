"""Retries within an alias's deployments, and fallbacks to other aliases, before the client
has a byte.

A request for an alias goes to its deployments in order (services/proxy/aliases.py) until one
answers with something else than a 429 or a 503, or one fails in a way that may have run it:

- A 429 or 503 answer means the upstream did not run the request. It is held back from the
  client (at most HELD_LIMIT bytes of it), and the request goes to the next deployment; the
  upstream's Retry-After cools that deployment down (the next requests try it last). When every
  deployment left is cooling, the request waits for the first to come back if that is within
  WAIT_LIMIT seconds; otherwise the last answer held goes to the client as it came (a request
  that found every deployment cooling still asks the first: a cooldown orders, never refuses).
- A failure before anything was sent (no connection, every connection in use, its queue full
  or too slow) moves on to the next deployment too, and so does a deployment whose upstream is
  at its request or token limit (services/proxy/upstream_limits.py; not counted as an attempt:
  it was not asked; when all are, the soonest of their 429s is the answer). Any other failure
  (the connection closed after the request went out, a timeout, a malformed answer) ends there:
  the upstream may have run it, and a request is never sent to a second upstream once the first
  may have started.
- At most MAX_ATTEMPTS attempts per alias. The answer says how many were made in all:
  `x-llmp-attempts`.
- An alias may name a fallback alias (shared/fleet.py). Its deployments are tried, as above,
  when every deployment of the first refused (the last one's 429 or 503 held back, or none
  could be sent the request), or at once when one answers 400 with the OpenAI error code
  `context_length_exceeded` (its body read, at most HELD_LIMIT bytes, gzip or deflate
  decoded): the fallback is where the longer contexts go. Such a request does not wait for a
  cooling deployment: the fallback is there instead. With no fallback left (none named, none of
  its upstreams there, or MAX_FALLBACKS followed), the last answer held goes to the client as
  it came. The same rule holds throughout: nothing goes to a second upstream once the first
  may have started running the request, and nothing held back has reached the client.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.proxy.catalog import UpstreamState
from services.proxy.errors import ProxyError
from services.proxy.upstream_limits import AtLimit, sooner
from shared.analytics import RequestRow
from shared.fleet import MAX_FALLBACKS

Send = Callable[[dict[str, Any]], Awaitable[None]]
# One attempt: these upstreams (connection failover among them), this body, this send.
Run = Callable[[list[UpstreamState], bytes, Send], Awaitable[None]]

MAX_ATTEMPTS = 4
WAIT_LIMIT = 5.0  # seconds the request may wait for a cooling deployment
HELD_LIMIT = 1024 * 1024
RETRIED = frozenset({429, 503})
TOO_LONG = 400  # held back, when there is a fallback, to see whether the context was too long
CONTEXT_LENGTH = "context_length_exceeded"
# Failures raised before the request was written (forward.py, services/proxy/gate.py): another
# upstream may take it.
NOT_SENT = frozenset(
    {
        "upstream_unreachable",
        "upstream_certificate_refused",
        "upstream_busy",
        "upstream_queue_full",
        "upstream_queue_timeout",
    }
)
HEADER = b"x-llmp-attempts"


@dataclass(frozen=True, slots=True)
class Attempt:
    state: UpstreamState
    body: bytes  # asking for `model`
    model: str  # the upstream's name of the model


@dataclass(slots=True)
class Route:
    """An alias's deployments in the order to try them, and its fallback's route, resolved
    (services/proxy/aliases.py) only when it is needed; `fallback` None: the alias names none.
    """

    alias: str
    attempts: list[Attempt]
    fallback: Callable[[], Route | None] | None = None


def retry_after(headers: Sequence[tuple[bytes, bytes]], now: float) -> float | None:
    """Seconds from `now` (epoch) that a Retry-After header asks for (delay or HTTP date)."""
    value = next((v for n, v in headers if n == b"retry-after"), None)
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Held:
    """The send of one attempt. A start of one of the statuses `holding` is held back (with
    its body): another attempt may replace it. Anything else goes to the client, with the
    attempts header."""

    def __init__(self, send: Send, attempt: int, holding: frozenset[int]) -> None:
        self.send = send
        self.attempt = attempt
        self.holding = holding
        self.status = 0
        self.messages: list[dict[str, Any]] = []
        self.size = 0
        self.whole = True
        self.retry_after: float | None = None
        self.row: tuple[int, float | None, int, bool, str | None] = (0, None, 0, False, None)

    @property
    def held(self) -> bool:
        return bool(self.messages)

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [*message["headers"], (HEADER, str(self.attempt).encode())]
            message = {**message, "headers": headers}
            if message["status"] in self.holding:
                self.status = message["status"]
                self.retry_after = retry_after(headers, time.time())
                self.messages.append(message)
                return
        elif self.held:
            self.size += len(message.get("body", b""))
            if self.size <= HELD_LIMIT:
                self.messages.append(message)
            else:
                self.whole = False
            return
        await self.send(message)

    def error_code(self) -> str | None:
        """The OpenAI error code of the answer held (`{"error": {"code": ...}}`), if its whole
        body was held and reads as one."""
        if not self.held or not self.whole:
            return None
        body = b"".join(m.get("body", b"") for m in self.messages[1:])
        headers = self.messages[0]["headers"]
        encoding = next((v for n, v in headers if n == b"content-encoding"), b"").strip().lower()
        try:
            if encoding in (b"gzip", b"deflate"):  # zlib's header, or gzip's: wbits 47 takes both
                body = zlib.decompressobj(47).decompress(body, HELD_LIMIT)
            elif encoding not in (b"", b"identity"):
                return None
            error = json.loads(body).get("error")
        except (zlib.error, ValueError, AttributeError):
            return None
        code = error.get("code") if isinstance(error, dict) else None
        return code if isinstance(code, str) else None

    async def release(self, send: Send) -> None:
        """Send what was held, as it came (ended, if more was held than kept)."""
        for message in self.messages:
            await send(message)
        if not self.whole:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def forward(
    route: Route,
    run: Run,
    row: RequestRow,
    send: Send,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Send the request to the deployments of the alias in order, then to its fallback's, as
    the module docstring says."""
    number = 0  # attempts, over every alias
    held: Held | None = None
    failure: ProxyError | None = None
    for hop in range(MAX_FALLBACKS + 1):
        fallback = route.fallback if hop < MAX_FALLBACKS else None
        held = failure = None
        left = list(route.attempts)
        for tried in range(1, MAX_ATTEMPTS + 1):
            now = clock()
            ready = [a for a in left if a.state.cool_until <= now]
            if not ready and left:
                soonest = min(a.state.cool_until for a in left)
                if soonest - now <= WAIT_LIMIT and fallback is None:
                    await sleep(soonest - now)
                elif held is not None or failure is not None:
                    break
                # Not yet asked at all: a cooldown is a preference, not a refusal.
                ready = [a for a in left if a.state.cool_until <= clock()] or [left[0]]
            if not ready:
                break
            attempt = ready[0]
            number += 1
            row.upstream_model = attempt.model
            holding = RETRIED if tried < MAX_ATTEMPTS or fallback is not None else frozenset()
            step = Held(send, number, holding | {TOO_LONG} if fallback is not None else holding)
            try:
                await run([attempt.state], attempt.body, step)
            except AtLimit as exc:  # not asked, so no attempt: the soonest is the answer
                number -= 1
                failure = sooner(failure, exc)
                left.remove(attempt)
                if not left:
                    break
                continue
            except ProxyError as exc:
                if exc.code not in NOT_SENT:
                    raise
                failure = exc
                left.remove(attempt)
                if not left:
                    break
                continue
            if not step.held:
                return
            step.row = (row.status, row.ttfb_ms, row.bytes_out, row.stream, row.error)
            if step.status == TOO_LONG:
                if step.error_code() != CONTEXT_LENGTH:  # a 400 like any other: the answer
                    await step.release(send)
                    return
                held = step
                break  # the context is too long for this alias: its fallback's turn
            held = step
            wait = step.retry_after if step.retry_after is not None else 0.0
            attempt.state.cool_until = clock() + wait
            if wait > WAIT_LIMIT or step.retry_after is None:
                left.remove(attempt)  # not worth coming back to within this request
            if not left:
                break
            _forget(row)
        following = fallback() if fallback is not None else None
        if following is None:
            break
        _forget(row)
        route = following
    if held is not None:  # the last answer held back, rather than a failure of another upstream
        row.status, row.ttfb_ms, row.bytes_out, row.stream, row.error = held.row
        await held.release(send)
        return
    assert failure is not None
    raise _with_attempts(failure, number)


def _with_attempts(error: ProxyError, number: int) -> ProxyError:
    error.headers = (*error.headers, (HEADER, str(number).encode()))
    return error


def _forget(row: RequestRow) -> None:
    """The row as before the attempt whose answer was held back."""
    row.status, row.ttfb_ms, row.bytes_out, row.stream, row.error = 0, None, 0, False, None
    row.prompt_tokens = row.completion_tokens = None
