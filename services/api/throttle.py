"""The login throttle."""

from __future__ import annotations

import time
from collections import deque


class Throttle:
    """At most `limit` failed logins per address within `window` seconds; then 429 until the
    oldest failure leaves the window."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures

    def retry_after(self, address: str) -> int:
        """Seconds the address must wait, 0 if it may try now."""
        now = time.monotonic()
        failures = self._recent(address, now)
        if len(failures) < self.limit:
            return 0
        return max(1, int(failures[0] + self.window - now + 0.999))

    def failed(self, address: str) -> int:
        """Record a failure; returns how many are in the window."""
        now = time.monotonic()
        failures = self._recent(address, now)
        failures.append(now)
        self._failures[address] = failures
        return len(failures)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
