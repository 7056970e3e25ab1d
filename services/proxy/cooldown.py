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
  in the whole box (while a request of any worker probes it, it ranks as cooling; so it does
  while this worker has one in flight to it). That request is the probe: an answer that is no
  failure makes it SERVING (count reset), a failure makes it COOLING again, for twice as long
  as the last time (UPSTREAM_COOLDOWN_MAX at most).

A good answer in any state (a request that went to it as the last resort, or was sent before it
cooled down) makes it SERVING at once. The models listing the catalog refreshes in the
background (services/proxy/catalog.py) is the cheap probe of whether the upstream can be reached
at all (`healthy`); the circuit is the probe of whether it answers requests.

The state is one for every proxy worker of the box: a record per upstream in a
`CircuitStore` (services/proxy/circuit_store.py; on the limits board,
services/proxy/board_circuits.py), which every failure, probe and return changes under its
lock. So UPSTREAM_FAILURES failures in a row cool an upstream down whichever workers saw them,
the worker whose failure cooled it (or whose probe brought it back) alone tells the webhooks,
and one request of one worker probes it (`claim`, just before a request is sent; the others
rank it as cooling meanwhile). A worker reads the record of an upstream it sees serving at most
every REFRESH seconds (the hot path reads no file), and of one that is not at every choice: one
worker's verdict reaches the others within REFRESH seconds. An answer that is no failure writes
only when the view has failures or is not serving, so "in a row" means without a good answer
seen by a worker within REFRESH seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from services.proxy.board import process_alive
from services.proxy.circuit_store import CircuitStore, MemoryCircuits, Phase, Record

__all__ = ["REFRESH", "Circuit", "Phase"]

REFRESH = 0.5  # seconds a worker trusts its view of a serving upstream before reading again


def _now_phase(record: Record, now: float) -> Phase:
    """The record's state at `now`: a cooldown that is over is a probe."""
    if record.phase is Phase.COOLING and now >= record.until:
        record.phase = Phase.PROBING
    return record.phase


@dataclass(eq=False, slots=True)
class Circuit:
    threshold: int = 3  # failures in a row that cool it down; 0: never
    cooldown: float = 30.0  # seconds, the first time
    longest: float = 300.0  # seconds at most, after probes that failed
    clock: Callable[[], float] = field(default=time.monotonic)
    store: CircuitStore = field(default_factory=MemoryCircuits)
    name: str = "circuit"  # its record in the store
    pid: int = field(default_factory=os.getpid)
    probe_limit: float = 605.0  # seconds a probe may take to get its verdict (connect + read)
    alive: Callable[[int], bool] = field(default=process_alive)
    view: Record = field(default_factory=Record)  # the store's record, as last read
    seen: float = float("-inf")  # clock() when `view` was read
    last_failure: str | None = None  # this worker's last

    # The view ------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self.view.phase

    @property
    def failures(self) -> int:
        return self.view.failures

    @property
    def period(self) -> float:
        """The length of the last cooldown."""
        return self.view.period

    def _take(self, record: Record) -> None:
        self.view, self.seen = record, self.clock()

    def sync(self) -> None:
        """Read the store again if the view is older than REFRESH seconds."""
        if self.clock() - self.seen >= REFRESH:
            self._take(self.store.read(self.name))

    def current(self) -> Phase:
        """The state now, as last read: a cooldown that is over is a probe."""
        return _now_phase(self.view, self.clock())

    def _probed(self, record: Record, now: float) -> bool:
        """Is a request of some live worker probing it, with no verdict yet?"""
        if record.prober == 0 or now >= record.probe_until:
            return False
        return record.prober == self.pid or self.alive(record.prober)

    # Choosing --------------------------------------------------------------------------

    def admits(self, in_flight: int) -> bool:
        """Worth choosing with `in_flight` requests of this worker going to it already."""
        if self.view.phase is Phase.SERVING and self.clock() - self.seen < REFRESH:
            return True  # the hot path: no read of the store
        self._take(self.store.read(self.name))  # not serving: the verdict of every worker
        now = self.clock()
        phase = _now_phase(self.view, now)
        if phase is Phase.SERVING:
            return True
        return phase is Phase.PROBING and in_flight == 0 and not self._probed(self.view, now)

    def claim(self) -> float | None:
        """A request is about to be sent to it: while it is being probed, and no request of
        any worker probes it yet, this one is the probe. Returns the claim (for `unclaim`, when
        the request ends), None if this request is no probe. A probe whose worker died lets
        another be sent at once; one that hangs, after `probe_limit` seconds."""
        if self.view.phase is Phase.SERVING:
            return None
        claim: list[float] = []

        def edit(record: Record) -> bool:
            now = self.clock()
            if _now_phase(record, now) is not Phase.PROBING or self._probed(record, now):
                return False
            record.prober, record.probe_until = self.pid, now + self.probe_limit
            claim.append(record.probe_until)
            return True

        self._take(self.store.change(self.name, edit)[0])
        return claim[0] if claim else None

    def unclaim(self, claim: float) -> None:
        """The request that made `claim` has ended: if no verdict came of it (its client went
        away before the answer started), another request may probe."""

        def edit(record: Record) -> bool:
            if (record.prober, record.probe_until) != (self.pid, claim):
                return False  # a verdict came, or another claim since
            record.prober = 0
            return True

        self._take(self.store.change(self.name, edit)[0])

    # Verdicts --------------------------------------------------------------------------

    def failed(self, reason: str) -> bool:
        """Count a failure; True if the upstream starts cooling down now (in one worker only,
        which tells the logs and the webhooks)."""
        self.last_failure = reason

        def edit(record: Record) -> bool:
            now = self.clock()
            record.failures += 1
            phase = _now_phase(record, now)
            if phase is Phase.PROBING:
                self._cool(record, now, min(max(record.period, self.cooldown) * 2, self.longest))
                return True
            if phase is Phase.SERVING and self.threshold and record.failures >= self.threshold:
                self._cool(record, now, min(self.cooldown, self.longest))
                return True
            return False  # cooling already

        record, started = self.store.change(self.name, edit)
        self._take(record)
        return started

    def succeeded(self) -> bool:
        """Count an answer that is no failure; True if the upstream serves again now (in one
        worker only). Written only when the view has failures or is not serving: the hot
        path reads the store at most every REFRESH seconds."""
        self.sync()
        if self.view.phase is Phase.SERVING and self.view.failures == 0:
            return False

        def edit(record: Record) -> bool:
            record.failures = 0
            if record.phase is Phase.SERVING:
                return False
            record.phase, record.period, record.prober = Phase.SERVING, 0.0, 0
            return True

        record, back = self.store.change(self.name, edit)
        self._take(record)
        return back

    def _cool(self, record: Record, now: float, seconds: float) -> None:
        record.phase, record.period, record.until = Phase.COOLING, seconds, now + seconds
        record.prober = 0

    def remaining(self) -> float | None:
        """Seconds of cooldown left; None unless cooling."""
        if self.current() is not Phase.COOLING:
            return None
        return max(0.0, self.view.until - self.clock())
