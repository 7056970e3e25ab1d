"""The counter store in Redis or Valkey (`REDIS_URL`): limits and fair queues exact across every
replica.

Each step is one server-side Lua script, so it is atomic across replicas, and reads the clock
from the server (`TIME`), so the replicas' clocks do not matter. Redis holds only hot counters,
never anything that must survive it: a key's buckets (`llmp:key:<id>`, a hash of each bucket's
level and time, expiring once drained), an upstream's line (`llmp:upstream:<url>`: its clock,
and per worker the requests in flight and the place of its first waiting one) and each key's
last place in a line (`llmp:line:...`, kept while it may wait).

**Leases.** Requests in flight are counted per worker, and every worker holds a lease in
`llmp:workers` (a sorted set of worker ids by expiry, renewed every LEASE/5 s and by every
step): a step ignores, and clears, the counts of workers whose lease ran out, so the slots of a
replica that died come back within LEASE seconds.

**Wake-ups.** A request that leaves an upstream publishes its name on `llmp:turns`; every worker
listens there and looks at its line at once, and polls every POLL seconds in case a message was
lost.

**Failures.** A call late by TIMEOUT seconds sends a PING from a thread (a busy event loop
delays the reading of answers, not a thread's): if that PING gets no answer within TIMEOUT
either, or a call fails, the circuit opens for the worker, and no request waits for Redis until
the heartbeat (every second while open) reaches it again; if it does, the call is waited for.
A request waits at most about twice TIMEOUT for a Redis that stopped answering. While it
is open, `REDIS_FAILURE` says what happens: `share` (the default) counts on the replica's own
board with each limit and upstream cap divided by the number of replicas that held a lease when
Redis was last reached (rounded down, so the replicas' shares never add up to more than the
limit); `closed` refuses limited requests (503 `limits_unavailable`); `open` lets them through
uncounted. Once it is back, each worker tells it its requests in flight
by name (as numbers, which also mends a count a call cut short left behind: Redis runs a call
that was waiting in it when it answers again), where it has some and wherever a call was cut
short, and the tokens used meanwhile.

**Budgets.** A key's use of its budget in a period is a hash `llmp:budget-<unit>:<id>:<number>`
(`used`, and `seeded` once filled from the usage log), gone a day after the period ends. While
the circuit is open, `share` answers what Redis last said plus the replica's own use since
(counted on its board) times the number of replicas, so that each spends at most its share of
what was left; `closed` refuses (503), `open` lets the key spend. Charges made meanwhile are
told to Redis on recovery.

**Lost data.** Redis holds nothing that must survive it, with two exceptions rebuilt from the
system of record: when a key's counters are missing (a Redis restarted without persistence, or
a key idle for a day), its tokens-per-day bucket is filled again from the usage log in
PostgreSQL (services/proxy/usage_history.py), in the background of the first request that finds
them missing; a budget found never filled is filled from the usage log by the request that
finds it so, before it is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import redis as sync_redis
import redis.asyncio as redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from services.proxy.board import Bucket, Level
from services.proxy.board_counters import BoardCounters
from services.proxy.counters import HistoryUnread, UsageHistory, Verdict, share, shared_bucket
from services.proxy.errors import ProxyError

log = logging.getLogger("proxy.redis")

Failure = Literal["share", "closed", "open"]

TIMEOUT = 0.05  # seconds a request may wait for Redis before the circuit opens
PATIENCE = 2.0  # seconds a late call is waited for while a probe finds Redis answering
LEASE = 10.0  # seconds a worker's requests stay counted after its last word
BEAT = LEASE / 5  # seconds between lease renewals (1 s while the circuit is open)
POLL = 0.1  # seconds between looks at a line when no wake-up came
DAY = 86400.0  # a bucket this long is filled again from the usage log when Redis lost it
PREFIX = "llmp:"  # of every key of llmp's in Redis: llmp:key:<id>, llmp:upstream:<url>
WORKERS = "llmp:workers"
TURNS = "llmp:turns"

_COMMON = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- The requests in flight in hash `h` (fields f:<worker>) and the first waiting place of each
-- other worker (fields w:<worker>), clearing the fields of workers whose lease ran out.
local function flights(h, me, now)
  local total, waits = 0, {}
  local all = redis.call('HGETALL', h)
  for i = 1, #all, 2 do
    local field = all[i]
    local kind = string.sub(field, 1, 2)
    if kind == 'f:' or kind == 'w:' then
      local worker = string.sub(field, 3)
      local live = worker == me
      if not live then
        local expiry = redis.call('ZSCORE', KEYS[2], worker)
        live = expiry and tonumber(expiry) > now
      end
      if not live then
        redis.call('HDEL', h, field)
      elseif kind == 'f:' then
        total = total + tonumber(all[i + 1])
      elseif worker ~= me then
        waits[#waits + 1] = {worker, tonumber(all[i + 1])}
      end
    end
  end
  return total, waits
end
-- This worker's field of hash `h` (f:<worker>, w:<worker>) says `value`, or is gone at 0: an
-- absent field is none.
local function put(h, field, value)
  if tonumber(value) > 0 then
    redis.call('HSET', h, field, value)
  else
    redis.call('HDEL', h, field)
  end
end
local me = ARGV[1]
local now = now_s()
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), me)
"""

# KEYS: the key's hash, the workers. ARGV: worker, lease, most (0: none), requests bucket (0/1),
# buckets, then (index, capacity, period) per bucket. Returns the refusal ('' admitted), the
# refusing token bucket's position, whether the key had no counters, and each bucket's level
# after the step.
_ADMIT = (
    _COMMON
    + """
local most, has_requests, n = tonumber(ARGV[3]), ARGV[4] == '1', tonumber(ARGV[5])
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local used, capacity, rate, index = {}, {}, {}, {}
for i = 1, n do
  local at = 5 + 3 * (i - 1)
  index[i], capacity[i] = ARGV[at + 1], tonumber(ARGV[at + 2])
  rate[i] = capacity[i] / tonumber(ARGV[at + 3])
  local saved = redis.call('HMGET', KEYS[1], 'u' .. index[i], 't' .. index[i])
  local level, since = tonumber(saved[1]) or 0, tonumber(saved[2]) or now
  used[i] = math.max(0, level - math.max(0, now - since) * rate[i])
end
local refused, which = '', 0
local first_tokens = has_requests and 2 or 1
if has_requests and used[1] + 1 - capacity[1] > 0 then
  refused = 'requests'
else
  for i = first_tokens, n do
    if math.floor(capacity[i] - used[i]) <= 0 then
      refused, which = 'tokens', i - first_tokens
      break
    end
  end
end
if refused == '' and most > 0 then
  if flights(KEYS[1], me, now) >= most then
    refused = 'concurrency'
  else
    redis.call('HINCRBY', KEYS[1], 'f:' .. me, 1)
  end
end
if refused == '' and has_requests then used[1] = used[1] + 1 end
local out, keep = {refused, which, fresh and 1 or 0}, 0
for i = 1, n do
  redis.call('HSET', KEYS[1], 'u' .. index[i], tostring(used[i]), 't' .. index[i], tostring(now))
  keep = math.max(keep, used[i] / rate[i])
  out[#out + 1] = tostring(used[i])
end
redis.call('EXPIRE', KEYS[1], math.ceil(keep) + 86400)
return out
"""
)

# KEYS: the key's hash, the workers. ARGV: worker, lease, in flight to give back, tokens used,
# buckets, then (index, capacity, period) per token bucket.
_RELEASE = (
    _COMMON
    + """
local back, tokens, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if back > 0 then
  if redis.call('HINCRBY', KEYS[1], 'f:' .. me, -back) <= 0 then
    redis.call('HDEL', KEYS[1], 'f:' .. me)
  end
end
if tokens > 0 then
  local keep = 0
  for i = 1, n do
    local at = 5 + 3 * (i - 1)
    local index, capacity = ARGV[at + 1], tonumber(ARGV[at + 2])
    local rate = capacity / tonumber(ARGV[at + 3])
    local saved = redis.call('HMGET', KEYS[1], 'u' .. index, 't' .. index)
    local level, since = tonumber(saved[1]) or 0, tonumber(saved[2]) or now
    local used = math.max(0, level - math.max(0, now - since) * rate) + tokens
    redis.call('HSET', KEYS[1], 'u' .. index, tostring(used), 't' .. index, tostring(now))
    keep = math.max(keep, used / rate)
  end
  redis.call('EXPIRE', KEYS[1], math.ceil(keep) + 86400)
end
return 1
"""
)

# KEYS: the upstream's hash, the workers. ARGV: worker, lease, limit, place (0: none), the
# worker's first waiting place afterwards. Returns 1 if the request entered.
_ENTER = (
    _COMMON
    + """
local limit, place, then_first = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local total, waits = flights(KEYS[1], me, now)
if total >= limit then return 0 end
for _, wait in ipairs(waits) do
  local worker, first = wait[1], wait[2]
  if first > 0 and (place == 0 or first < place or (first == place and worker < me)) then
    return 0
  end
end
redis.call('HINCRBY', KEYS[1], 'f:' .. me, 1)
if place > 0 then
  local clock = tonumber(redis.call('HGET', KEYS[1], 'clock')) or 0
  redis.call('HSET', KEYS[1], 'clock', math.max(clock, place))
  put(KEYS[1], 'w:' .. me, then_first)
end
return 1
"""
)

# KEYS: the upstream's hash, the workers, the key's place in line. ARGV: worker, lease, seconds
# to keep the key's place. Returns the new place.
_JOIN = (
    _COMMON
    + """
local clock = tonumber(redis.call('HGET', KEYS[1], 'clock')) or 0
local last = tonumber(redis.call('GET', KEYS[3])) or 0
local place = math.max(clock, last) + 1
redis.call('SET', KEYS[3], place, 'PX', math.ceil(tonumber(ARGV[3]) * 1000))
return place
"""
)

# KEYS: the upstream's hash, the workers. ARGV: worker, lease, place (0: none waits).
_FIRST = (
    _COMMON
    + """
put(KEYS[1], 'w:' .. me, ARGV[3])
return 1
"""
)

# KEYS: the upstream's hash, the workers. ARGV: worker, lease, requests ended, the channel.
_LEAVE = (
    _COMMON
    + """
if redis.call('HINCRBY', KEYS[1], 'f:' .. me, -tonumber(ARGV[3])) <= 0 then
  redis.call('HDEL', KEYS[1], 'f:' .. me)
end
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
"""
)

# KEYS: a key's or an upstream's hash, the workers. ARGV: worker, lease, the requests this worker
# has in flight there, the channel.
_FLIGHTS = (
    _COMMON
    + """
put(KEYS[1], 'f:' .. me, ARGV[3])
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
"""
)

# KEYS: a budget's hash, the workers. ARGV: worker, lease, the amount to add, the UNIX time it
# expires at, the use to fill it with if it was never filled ('': none). Returns its use and
# whether it was filled from the usage log.
_BUDGET = (
    _COMMON
    + """
local amount, seed = tonumber(ARGV[3]), tonumber(ARGV[5])
if seed and redis.call('HSETNX', KEYS[1], 'seeded', 1) == 1 then amount = amount + seed end
local used = redis.call('HINCRBY', KEYS[1], 'used', amount)
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return {used, redis.call('HEXISTS', KEYS[1], 'seeded')}
"""
)

# KEYS: (none), the workers. ARGV: worker, lease. Returns the live workers.
_BEAT = (
    _COMMON
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return redis.call('ZRANGE', KEYS[2], 0, -1)
"""
)


class Unavailable(Exception):
    """Redis did not answer in time, or the circuit is open."""


def unavailable() -> ProxyError:
    return ProxyError(
        503,
        "The gateway cannot count this key's limits now (its counter store is unreachable); "
        "try again later",
        "limits_unavailable",
        type="server_error",
        headers=((b"retry-after", b"1"),),
    )


class RedisCounters:
    def __init__(
        self,
        url: str,
        fallback: BoardCounters,
        replica: str,
        failure: Failure = "share",
        timeout: float = TIMEOUT,
        lease: float = LEASE,
        history: UsageHistory | None = None,
    ) -> None:
        self.redis: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=max(1.0, timeout),
            socket_connect_timeout=max(1.0, timeout),
            driver_info=None,  # no CLIENT SETINFO: a new connection's first command goes at once
            retry=AsyncRetry(NoBackoff(), 0),  # a failure is the circuit's business, at once
        )
        self.fallback = fallback  # the replica's board: its share while Redis is away
        self.history = history  # what keys used, to fill their long buckets again
        self.replica = replica
        self.worker = f"{replica}/{os.getpid()}"
        self.failure = failure
        self.timeout = timeout
        self.lease = lease
        self.replicas = 1  # replicas with a live lease when Redis last answered
        self.down_since: float | None = None  # the circuit: open since (monotonic), or closed
        self.last_error: str | None = None
        # the probe's own connection, used from a thread (see _call)
        self._prober = sync_redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            driver_info=None,
            retry=Retry(NoBackoff(), 0),  # one PING, not three with a pause between
        )
        self._probing: asyncio.Future[BaseException | None] | None = None
        self._scripts = {
            name: self.redis.register_script(source)
            for name, source in (
                ("admit", _ADMIT),
                ("release", _RELEASE),
                ("enter", _ENTER),
                ("join", _JOIN),
                ("first", _FIRST),
                ("leave", _LEAVE),
                ("flights", _FLIGHTS),
                ("beat", _BEAT),
                ("budget", _BUDGET),
            )
        }
        # What this worker counts elsewhere than in Redis, by name: requests let in by the
        # fallback (released there), and what to tell Redis once it is back.
        self._local: Counter[str] = Counter()
        self._open: Counter[str] = Counter()  # let in uncounted (REDIS_FAILURE=open)
        self._shared: Counter[str] = Counter()  # let in by Redis, still in flight
        self._owed_tokens: dict[str, tuple[Sequence[Bucket], int]] = {}
        self._firsts: dict[str, int] = {}
        self._unsure: set[str] = set()  # names of counting calls cut short while Redis failed
        self._owed_budgets: dict[str, tuple[float, int]] = {}  # by name: until, amount
        # by key and unit (its last period only): the budget's name, its use when Redis last
        # told it, and the replica's own use then
        self._budgets_seen: dict[str, tuple[str, int, int]] = {}
        self._wakeups: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []

    # The connection ---------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def start(self) -> None:
        """Take a lease and listen for turns now (a worker's start), so that the replicas count
        each other before Redis is needed, and fails."""
        self._start()

    def _start(self) -> None:
        if not self._background:
            self._background = [
                asyncio.create_task(self._beat(), name="redis-lease"),
                asyncio.create_task(self._listen(), name="redis-turns"),
            ]

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        self._start()
        if self.down:
            raise Unavailable
        call = asyncio.ensure_future(
            self._scripts[script](
                keys=[PREFIX + keys[0], WORKERS, *keys[1:]], args=[self.worker, self.lease, *args]
            )
        )
        await asyncio.wait((call,), timeout=self.timeout)
        if not call.done():
            # Late: Redis may be away, or this worker's event loop too busy to have read its
            # answer. A probe from a thread, which no busy loop delays, tells which.
            probe = self._probe()
            await asyncio.wait((call, probe), return_when=asyncio.FIRST_COMPLETED)
            if not call.done() and probe.result() is None:
                await asyncio.wait((call,), timeout=PATIENCE)  # Redis answers: wait for it
        if not call.done():
            call.cancel()  # redis-py drops the connection of a cancelled command
            call.add_done_callback(_consume)
            if script in _COUNTING:  # Redis may run it yet: mended on recovery
                self._unsure.add(keys[0])
            if self._probing is not None and self._probing.done():
                self._trip(self._probing.result() or TimeoutError("no answer"))
            else:
                self._trip(TimeoutError(f"no answer within {self.timeout + PATIENCE:g} s"))
            raise Unavailable
        try:
            return call.result()
        except (RedisError, OSError) as exc:
            if script in _COUNTING:
                self._unsure.add(keys[0])
            self._trip(exc)
            raise Unavailable from None

    def _probe(self) -> asyncio.Future[BaseException | None]:
        """One PING at a time from a thread, with TIMEOUT: its failure, or None."""
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(asyncio.to_thread(self._ping))
        return self._probing

    def _ping(self) -> BaseException | None:
        try:
            self._prober.ping()
        except (RedisError, OSError) as exc:
            return exc
        return None

    def _trip(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "Redis unreachable: limits counted by REDIS_FAILURE",
                extra={"fields": {"error": self.last_error, "failure": self.failure}},
            )

    async def _beat(self) -> None:
        """Load the scripts, renew the lease, count the replicas, and close the circuit once
        Redis answers."""
        loaded = False
        while True:
            try:
                if not loaded:  # so that no request's first call of a script is refused
                    for each in self._scripts.values():
                        await self.redis.script_load(each.script)
                    loaded = True
                async with asyncio.timeout(max(self.timeout, 1.0)):
                    workers = await self._scripts["beat"](
                        keys=["", WORKERS], args=[self.worker, self.lease]
                    )
                self.replicas = len({bytes(w).rsplit(b"/", 1)[0] for w in workers}) or 1
                if self.down:
                    await self._recover()
            except (RedisError, OSError, TimeoutError) as exc:
                self._trip(exc)
            await asyncio.sleep(1.0 if self.down else self.lease / 5)

    async def _recover(self) -> None:
        """Tell Redis what changed while it was away, then close the circuit: the tokens used,
        this worker's first places in line, and its requests in flight by name, as numbers
        (a call cut short by the timeout may have counted a request in Redis that this worker
        then counted as refused, or on its board)."""
        for name, (buckets, tokens) in list(self._owed_tokens.items()):
            await self._scripts["release"](
                keys=[PREFIX + name, WORKERS],
                args=[self.worker, self.lease, 0, tokens, *_flat(buckets)],
            )
            del self._owed_tokens[name]
        for name, (until, amount) in list(self._owed_budgets.items()):
            await self._scripts["budget"](
                keys=[PREFIX + name, WORKERS],
                args=[self.worker, self.lease, amount, _expiry(until), ""],
            )
            del self._owed_budgets[name]
        for name, place in list(self._firsts.items()):
            await self._scripts["first"](
                keys=[PREFIX + name, WORKERS], args=[self.worker, self.lease, place]
            )
        # and where a call was cut short: Redis may have run it once it answered again
        for name in {*self._shared, *self._unsure}:
            await self._scripts["flights"](
                keys=[PREFIX + name, WORKERS],
                args=[self.worker, self.lease, self._shared[name], TURNS],
            )
        self._unsure.clear()
        log.warning("Redis reached again: limits shared again")
        self.down_since, self.last_error = None, None

    async def _listen(self) -> None:
        """Wake the lines of the upstreams whose turns were freed elsewhere."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(TURNS)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        name = bytes(message["data"]).decode().removeprefix(PREFIX)
                        if name in self._wakeups:
                            self._wakeups[name].set()
            except (RedisError, OSError) as exc:
                log.debug("turns not heard", extra={"fields": {"error": str(exc)}})
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from 8.2
            await asyncio.sleep(1.0)

    def _spawn(self, step: Any) -> None:
        task = asyncio.get_running_loop().create_task(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Limits ------------------------------------------------------------------------------

    async def admit(
        self, name: str, requests: Bucket | None, tokens: Sequence[Bucket], most: int | None
    ) -> Verdict:
        buckets = (requests, *tokens) if requests else tuple(tokens)
        args = [most or 0, 1 if requests else 0, *_flat(buckets)]
        try:
            out = await self._call("admit", [name], args)
        except Unavailable:
            return self._admit_without(name, requests, tokens, most)
        levels = [
            Level(bucket.capacity, float(used), bucket.rate)
            for bucket, used in zip(buckets, out[3:], strict=True)
        ]
        if int(out[2]) and self.history is not None:
            for bucket in tokens:
                if bucket.period >= DAY:
                    self._spawn(self._rebuild(name, bucket))
        refused = bytes(out[0]).decode() or None
        verdict = Verdict(levels[0] if requests else None, levels[1:] if requests else levels, None)
        if refused is not None:
            assert refused in ("requests", "tokens", "concurrency")
            verdict.refused = refused  # type: ignore[assignment]
            verdict.bucket = int(out[1])
        elif most is not None:
            self._shared[name] += 1
        return verdict

    async def _rebuild(self, name: str, bucket: Bucket) -> None:
        """Fill `name`'s long bucket again from the usage log: its counters were missing (a new
        key, one idle for a day, or a Redis that lost its data)."""
        assert self.history is not None
        try:
            level = await self.history.level(name.removeprefix("key:"), bucket.period)
        except HistoryUnread as exc:
            log.error("tokens per day not rebuilt", extra={"fields": {"error": str(exc)}})
            return
        if level >= 1:
            with contextlib.suppress(Unavailable):
                await self._call("release", [name], [0, round(level), *_flat((bucket,))])

    def _admit_without(
        self, name: str, requests: Bucket | None, tokens: Sequence[Bucket], most: int | None
    ) -> Verdict:
        if self.failure == "closed":
            raise unavailable()
        if self.failure == "open":
            if most is not None:
                self._open[name] += 1
            return Verdict(None, [])
        parts = self.replicas
        small = shared_bucket(requests, parts) if requests else None
        smalls = [shared_bucket(bucket, parts) for bucket in tokens]
        if (small is not None and not small.capacity) or any(not b.capacity for b in smalls):
            # a share of nothing: refused, with the whole limit's buckets shown full
            verdict = Verdict(
                Level(requests.capacity, requests.capacity, requests.rate) if requests else None,
                [Level(b.capacity, b.capacity, b.rate) for b in tokens],
            )
            verdict.refused = "requests" if small is not None and not small.capacity else "tokens"
            if verdict.refused == "tokens":
                verdict.bucket = next(i for i, b in enumerate(smalls) if not b.capacity)
            return verdict
        # this worker's requests let in by Redis still count against the replica's share
        part = None if most is None else share(most, parts) - self._shared[name]
        if part is not None and part <= 0:
            return Verdict(None, [], "concurrency")
        verdict = self.fallback.admit_now(name, small, smalls, part)
        if verdict.refused is None and most is not None:
            self._local[name] += 1
        return verdict

    def release(self, name: str, concurrent: bool, tokens: Sequence[Bucket], used: int) -> None:
        if concurrent and self._open[name]:
            self._open[name] -= 1
            concurrent = False
        if concurrent and self._local[name]:
            self._local[name] -= 1
            self.fallback.release(name, True, (), 0)
            concurrent = False
        if concurrent and self._shared[name]:
            self._shared[name] -= 1
        if self.down and used and tokens and self.failure == "share":
            parts = self.replicas
            self.fallback.release(name, False, [shared_bucket(b, parts) for b in tokens], used)
        if not concurrent and not used:
            return
        self._spawn(self._release(name, concurrent, tokens, used))

    async def _release(
        self, name: str, concurrent: bool, tokens: Sequence[Bucket], used: int
    ) -> None:
        try:
            await self._call("release", [name], [int(concurrent), used, *_flat(tokens)])
        except Unavailable:  # the request in flight is told as a number on recovery
            if used and tokens:
                _, owed = self._owed_tokens.get(name, ((), 0))
                self._owed_tokens[name] = (tokens, owed + used)

    # Budgets -----------------------------------------------------------------------------

    async def budget_used(
        self, name: str, until: float, local: int, seed: Callable[[], Awaitable[int | None]]
    ) -> int:
        try:
            used, seeded = await self._call("budget", [name], [0, _expiry(until), ""])
            if not int(seeded):  # a new period, or a Redis that lost its data
                filled = await seed()  # None: unread, filled by a later request
                if filled is not None:
                    used, _ = await self._call("budget", [name], [0, _expiry(until), filled])
        except Unavailable:
            if self.failure == "closed":
                raise unavailable() from None
            if self.failure == "open":
                return 0
            # what Redis last said, and this replica's use since for each replica: each may
            # spend its share of what was left
            seen_name, seen, base = self._budgets_seen.get(_budget_of(name), (name, 0, 0))
            if seen_name != name:  # told of another period: nothing known of this one
                seen, base = 0, 0
            return seen + self.replicas * max(0, local - base)
        self._budgets_seen[_budget_of(name)] = (name, int(used), local)
        return int(used)

    def budget_charge(self, name: str, until: float, amount: int) -> None:
        if amount > 0:
            self._spawn(self._budget_charge(name, until, amount))

    async def _budget_charge(self, name: str, until: float, amount: int) -> None:
        try:
            await self._call("budget", [name], [amount, _expiry(until), ""])
        except Unavailable:  # told on recovery
            _, owed = self._owed_budgets.get(name, (until, 0))
            self._owed_budgets[name] = (until, owed + amount)

    # The fair queue ------------------------------------------------------------------------

    async def enter(self, name: str, limit: int, place: int, then_first: int) -> bool:
        try:
            entered = bool(await self._call("enter", [name], [limit, place, then_first]))
        except Unavailable:
            if self.failure == "closed":
                raise unavailable() from None
            if self.failure == "open":
                self._open[name] += 1
                return True
            part = share(limit, self.replicas) - self._shared[name]
            entered = part > 0 and self.fallback.enter_now(name, part, place, then_first)
            if entered:
                self._local[name] += 1
        else:
            if entered:
                self._shared[name] += 1
        if entered and place:
            self._firsts[name] = then_first
        return entered

    async def join(self, name: str, key: str, keep: float) -> int:
        try:
            return int(await self._call("join", [name, f"llmp:line:{name}\n{key}"], [keep]))
        except Unavailable:
            return await self.fallback.join(name, key, keep)

    async def set_first(self, name: str, place: int) -> None:
        self._firsts[name] = place
        try:
            await self._call("first", [name], [place])
        except Unavailable:
            self.fallback.set_first_now(name, place)

    def leave(self, name: str) -> None:
        if self._open[name]:
            self._open[name] -= 1
        elif self._local[name]:
            self._local[name] -= 1
            self.fallback.leave(name)
        else:
            if self._shared[name]:
                self._shared[name] -= 1
            self._spawn(self._leave(name))

    async def _leave(self, name: str) -> None:
        with contextlib.suppress(Unavailable):  # told as a number on recovery
            await self._call("leave", [name], [1, TURNS])

    async def turn_freed(self, name: str) -> None:
        self._start()
        event = self._wakeups[name]
        try:
            async with asyncio.timeout(POLL):
                await event.wait()
        except TimeoutError:
            pass
        event.clear()

    async def aclose(self) -> None:
        await self.stop_background()
        self.fallback.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            async with asyncio.timeout(max(self.timeout, 0.5)):
                await self.redis.zrem(WORKERS, self.worker)
        except (RedisError, OSError, TimeoutError):
            pass
        await self.redis.aclose()
        self._prober.close()

    async def stop_background(self) -> None:
        """Stop renewing the lease and listening. A cancellation that comes while redis-py
        makes a connection can be lost in it: each task is cancelled until it has ended."""
        for task in self._background:
            while not task.done():
                task.cancel()
                await asyncio.wait((task,), timeout=0.1)


# the steps that count requests in flight: one cut short may have counted in Redis all the same
_COUNTING = frozenset(("admit", "release", "enter", "leave"))


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _budget_of(name: str) -> str:
    """`budget-<unit>:<id>` of a budget's name in a period, `budget-<unit>:<id>:<number>`."""
    return name.rsplit(":", 1)[0]


def _expiry(until: float) -> int:
    """When a budget's count may go: a day after its period's end (clocks differ)."""
    return int(until + DAY)


def _flat(buckets: Sequence[Bucket]) -> list[Any]:
    out: list[Any] = [len(buckets)]
    for bucket in buckets:
        out += [bucket.index, bucket.capacity, bucket.period]
    return out
