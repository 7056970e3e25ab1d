"""Webhooks: the events an admin must hear about, posted to `WEBHOOK_URLS`, signed.

Events: `upstream.down` and `upstream.up` (the proxy), `key.limit_reached` and
`key.budget_reached` (the proxy), `certificate.renewal_failed` and `certificate.expiring` (certd).
Each is one JSON object, `{"id", "type", "time", "data"}`, POSTed to every URL with:

- `X-Llmp-Event`: the type; `X-Llmp-Delivery`: the event's id (the same on every retry);
- `X-Llmp-Timestamp`: Unix seconds when this attempt was signed;
- `X-Llmp-Signature`: `sha256=` and the hex HMAC-SHA256, keyed with `WEBHOOK_SECRET`, of the
  timestamp, a `.`, and the body's bytes. A receiver recomputes it and refuses old timestamps.

At most once per event across every process: an event names a subject and a mark (`upstream:a`
and `down`; a key's budget and its period), and only the process that moves the subject's mark in
the ledger (`data/webhooks.json`, under its lock) sends it. Several workers that see the same
upstream go down send one `upstream.down`; `upstream.up` is sent only after a `down`.

Never in a request's way: `emit` only puts the event in a bounded queue (a full queue drops it,
counted in `dropped`); a thread of its own claims it, posts it, and retries a failed delivery
(no 2xx, or no answer in WEBHOOK_TIMEOUT seconds) with exponential backoff, WEBHOOK_RETRIES
times. Redirects are not followed. With no URLs, nothing is started and `emit` does nothing.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared import files

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger("webhooks")

EVENT_TYPES = (
    "upstream.down",
    "upstream.up",
    "key.limit_reached",
    "key.budget_reached",
    "certificate.renewal_failed",
    "certificate.expiring",
)


def parse_webhook_urls(value: object) -> tuple[str, ...]:
    """`WEBHOOK_URLS`: comma-separated http(s) URLs with a host. Raises ValueError."""
    if isinstance(value, tuple):
        return value
    urls = []
    for item in str(value or "").split(","):
        url = item.strip()
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"WEBHOOK_URLS: {url!r} is not an http:// or https:// URL")
        if any(c.isspace() for c in url) or parts.fragment:
            raise ValueError(f"WEBHOOK_URLS: {url!r} holds spaces or a #fragment")
        urls.append(url)
    return tuple(urls)


@dataclass(frozen=True, slots=True)
class Event:
    """`type` happened to `subject`; its `mark` says which occurrence (one delivery per mark).
    An event with `after` is sent only if the subject's mark was `after` (an upstream is back
    only once it was announced down)."""

    type: str
    subject: str
    mark: str
    data: Mapping[str, Any]
    after: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)

    def body(self) -> bytes:
        moment = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        document = {
            "id": self.id,
            "type": self.type,
            "time": moment.replace("+00:00", "Z"),
            "data": dict(self.data),
        }
        return json.dumps(document, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Llmp-Signature` header's value."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, "sha256")
    return "sha256=" + digest.hexdigest()


class Ledger:
    """The last mark sent for each subject, shared by every process through a locked file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def claim(self, event: Event) -> bool:
        """Whether this process is the one to send `event` (its mark is now the subject's)."""
        with files.locked(self.path):
            try:
                marks = json.loads(self.path.read_bytes())
                if not isinstance(marks, dict):
                    marks = {}
            except FileNotFoundError:
                marks = {}
            except ValueError:
                log.error("webhook ledger unreadable; started again", extra={"fields": {}})
                marks = {}
            previous = marks.get(event.subject)
            if previous == event.mark or (event.after is not None and previous != event.after):
                return False
            marks[event.subject] = event.mark
            files.write_atomic(self.path, json.dumps(marks, indent=1).encode(), mode=0o600)
            return True


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an answer like any other non-2xx: retried, never followed


@dataclass(order=True)
class _Delivery:
    due: float
    order: int
    event: Event = field(compare=False)
    url: str | None = field(compare=False, default=None)  # None: not claimed yet
    attempt: int = field(compare=False, default=0)


class Webhooks:
    """Sends events to the URLs; see the module's docstring."""

    def __init__(
        self,
        urls: tuple[str, ...],
        secret: str,
        ledger: Ledger,
        *,
        queue_limit: int = 100,
        retries: int = 5,
        timeout: float = 10.0,
        backoff: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls, self.secret, self.ledger = urls, secret, ledger
        self.queue_limit, self.retries, self.timeout, self.backoff = (
            queue_limit,
            retries,
            timeout,
            backoff,
        )
        self.clock = clock
        self.dropped = 0  # events not queued (full) or given up after every retry
        self.delivered = 0
        self._seen: dict[str, str] = {}  # subject -> last mark this process queued
        self._heap: list[_Delivery] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._opener = urllib.request.build_opener(_NoRedirect())

    @property
    def pending(self) -> int:
        return len(self._heap)

    def emit(self, event: Event) -> None:
        """Queue `event` (never blocks); one already queued by this process is skipped."""
        if not self.urls or self._seen.get(event.subject) == event.mark:
            return
        self._seen[event.subject] = event.mark
        with self._wake:
            if len(self._heap) >= self.queue_limit:
                self.dropped += 1
                log.warning(
                    "webhook queue full; event dropped", extra={"fields": {"type": event.type}}
                )
                return
            heapq.heappush(self._heap, _Delivery(self.clock(), next(self._order), event))
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop sending; what is still queued is dropped (and logged)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._heap:
            log.warning(
                "webhooks not sent at shutdown", extra={"fields": {"count": len(self._heap)}}
            )

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (not self._heap or self._heap[0].due > self.clock()):
                    wait = self._heap[0].due - self.clock() if self._heap else None
                    self._wake.wait(wait)
                if self._stopping:
                    return
                delivery = heapq.heappop(self._heap)
            try:
                self._handle(delivery)
            except Exception:  # one bad event must not stop the others
                log.exception("webhook failed")

    def _handle(self, delivery: _Delivery) -> None:
        event = delivery.event
        if delivery.url is None:
            if not self.ledger.claim(event):
                return  # another process sends it, or it was sent already
            for url in self.urls:
                self._send(_Delivery(0, 0, event, url))
            return
        self._send(delivery)

    def _send(self, delivery: _Delivery) -> None:
        assert delivery.url is not None
        event, body = delivery.event, delivery.event.body()
        timestamp = int(time.time())
        request = urllib.request.Request(
            delivery.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "llmp-webhooks",
                "X-Llmp-Event": event.type,
                "X-Llmp-Delivery": event.id,
                "X-Llmp-Timestamp": str(timestamp),
                "X-Llmp-Signature": signature(self.secret, timestamp, body),
            },
        )
        problem = None
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                answer.read(65536)
                if not 200 <= answer.status < 300:
                    problem = f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
            exc.close()
        except (OSError, ValueError) as exc:  # refused, timed out, TLS, a bad answer
            problem = f"{type(exc).__name__}: {exc}"
        fields = {"type": event.type, "id": event.id, "attempt": delivery.attempt + 1}
        if problem is None:
            self.delivered += 1
            log.info("webhook delivered", extra={"fields": fields})
            return
        if delivery.attempt >= self.retries:
            self.dropped += 1
            log.error("webhook given up", extra={"fields": {**fields, "error": problem}})
            return
        log.warning("webhook failed; will retry", extra={"fields": {**fields, "error": problem}})
        with self._wake:
            delivery.attempt += 1
            delivery.due = self.clock() + self.backoff * 2 ** (delivery.attempt - 1)
            delivery.order = next(self._order)
            heapq.heappush(self._heap, delivery)
            self._wake.notify()


def webhooks_for(settings: Settings) -> Webhooks:
    """The sender for a program's settings (WEBHOOK_*); with no URLs, one that does nothing."""
    return Webhooks(
        settings.webhook_urls,
        settings.webhook_secret,
        Ledger(settings.webhooks_ledger),
        queue_limit=settings.webhook_queue_limit,
        retries=settings.webhook_retries,
        timeout=settings.webhook_timeout,
        backoff=settings.webhook_backoff_seconds,
    )
