"""Cooldown and probing: whether an upstream that keeps failing is worth choosing.

Each upstream has a circuit (`Circuit`), in one of three named states:

- SERVING: chosen as usual. Failures in a row are counted: a connection not made, a timeout, a
  connection closed or an answer malformed before it started, an answer of 5xx but 501 (Not
  Implemented says the route is not the upstream's, not that it is failing; see
  `Catalog.answered` and `Catalog.failed`). Any other answer resets the count; a 429 is the
  upstream's rate limit, not a fault (its Retry-After orders the deployments of an alias, see
  services/proxy/fallbacks.py). At UPSTREAM_FAILURES failures in a row it goes COOLING.
- COOLING: for UPSTREAM_COOLDOWN seconds it is ordered after every upstream that is not
  cooling, so a request goes to it only when nothing else is left: a cooldown orders, it never
  refuses.
- PROBING (half-open): the cooldown is over and it is chosen again, one request at a time
  (while a request of this worker is in flight to it, it ranks as cooling). That request is the
  probe: an answer that is no failure makes it SERVING (count reset), a failure makes it COOLING
  again, for twice as long as the last time (UPSTREAM_COOLDOWN_MAX at most).

A good answer in any state (a request that went to it as the last resort, or was sent before it
cooled down) makes it SERVING at once. The models listing the catalog refreshes in the
background (services/proxy/catalog.py) is the cheap probe of whether the upstream can be reached
at all (`healthy`); the circuit is the probe of whether it answers requests.

The state lives in each proxy worker: each learns of a failing upstream from its own requests
(UPSTREAM_FAILURES of them at most) and probes it back on its own. Sharing it through the board
(services/proxy/board.py) would cost a locked read of the file per candidate per request.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class Phase(enum.Enum):
    SERVING = "serving"
    COOLING = "cooling"
    PROBING = "probing"


@dataclass(eq=False, slots=True)
class Circuit:
    threshold: int = 3  # failures in a row that cool it down; 0: never
    cooldown: float = 30.0  # seconds, the first time
    longest: float = 300.0  # seconds at most, after probes that failed
    clock: Callable[[], float] = field(default=time.monotonic)
    phase: Phase = Phase.SERVING
    failures: int = 0  # in a row
    last_failure: str | None = None
    until: float = 0.0  # clock() at which COOLING ends
    period: float = 0.0  # the length of the last cooldown

    def current(self) -> Phase:
        """The state now: a cooldown that is over is a probe."""
        if self.phase is Phase.COOLING and self.clock() >= self.until:
            self.phase = Phase.PROBING
        return self.phase

    def admits(self, in_flight: int) -> bool:
        """Worth choosing with `in_flight` requests of this worker going to it already."""
        if self.phase is Phase.SERVING:  # the hot path: no clock read
            return True
        return self.current() is Phase.PROBING and in_flight == 0

    def failed(self, reason: str) -> bool:
        """Count a failure; True if the upstream starts cooling down now."""
        self.failures += 1
        self.last_failure = reason
        phase = self.current()
        if phase is Phase.PROBING:
            self._cool(min(max(self.period, self.cooldown) * 2, self.longest))
            return True
        if phase is Phase.SERVING and self.threshold and self.failures >= self.threshold:
            self._cool(min(self.cooldown, self.longest))
            return True
        return False  # cooling already

    def succeeded(self) -> bool:
        """Count an answer that is no failure; True if the upstream serves again now."""
        self.failures = 0
        if self.phase is Phase.SERVING:
            return False
        self.phase, self.period = Phase.SERVING, 0.0
        return True

    def _cool(self, seconds: float) -> None:
        self.phase, self.period = Phase.COOLING, seconds
        self.until = self.clock() + seconds

    def remaining(self) -> float | None:
        """Seconds of cooldown left; None unless cooling."""
        if self.current() is not Phase.COOLING:
            return None
        return max(0.0, self.until - self.clock())
