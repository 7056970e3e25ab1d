"""The login throttle in Redis or Valkey (`REDIS_URL`): the same limits as
services/api/throttle.py, counted once for every replica.

Each client network's failures, and the account's, are a sorted set of failure times
(`llmp:login:<client>`, kept for the window), changed by one Lua script per step with the
server's clock. A call has TIMEOUT seconds; one that fails sends the throttle to the machine's
own file (`fallback`) for PAUSE seconds before Redis is tried again, so a login never waits
long on a Redis that does not answer, and is still throttled; the failures the file counted
meanwhile still count once Redis is back, until they leave the window.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.exceptions import RedisError

from services.api.throttle import ACCOUNT, Throttle, network

log = logging.getLogger("api.throttle")

TIMEOUT = 0.5
PAUSE = 5.0
PREFIX = "llmp:login:"

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local function kept(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  return redis.call('ZCARD', key)
end
"""

# KEYS: the client's set, the account's. ARGV: window, a unique member. Returns the client's
# failures in the window.
_FAILED = (
    _COMMON
    + """
for _, key in ipairs(KEYS) do
  kept(key)
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, math.ceil(window * 1000))
end
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS: the client's set, the account's. ARGV: window, the client's limit, the account's.
# Returns the seconds to wait (0: none).
_WAIT = (
    _COMMON
    + """
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 1])
  if kept(key) >= limit then
    local oldest = redis.call('ZRANGE', key, -limit, -limit, 'WITHSCORES')
    local seconds = math.floor(tonumber(oldest[2]) + window - now + 0.999)
    wait = math.max(wait, math.max(1, seconds))
  end
end
return wait
"""
)


class RedisThrottle:
    def __init__(self, url: str, fallback: Throttle) -> None:
        self.redis: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )
        self.fallback = fallback  # the machine's file, while Redis is away
        self.limit, self.window = fallback.limit, fallback.window
        self.account_limit = fallback.account_limit
        self._failed = self.redis.register_script(_FAILED)
        self._wait = self.redis.register_script(_WAIT)
        self._paused_until = 0.0

    def _keys(self, address: str) -> list[str]:
        return [PREFIX + network(address), PREFIX + ACCOUNT]

    def _usable(self) -> bool:
        return time.monotonic() >= self._paused_until

    def _failing(self, exc: Exception) -> None:
        self._paused_until = time.monotonic() + PAUSE
        log.error(
            "Redis unreachable: login failures counted on this machine",
            extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}},
        )

    def _run(self, script: Any, address: str, *args: Any) -> int | None:
        if not self._usable():
            return None
        try:
            return int(script(keys=self._keys(address), args=[self.window, *args]))
        except (RedisError, OSError) as exc:
            self._failing(exc)
            return None

    def retry_after(self, address: str) -> int:
        wait = self._run(self._wait, address, self.limit, self.account_limit)
        # what the file counted while Redis was away still counts once it is back
        return max(wait or 0, self.fallback.retry_after(address))

    def failed(self, address: str) -> int:
        member = f"{time.time_ns()}-{id(self)}-{address}"
        count = self._run(self._failed, address, member)
        return self.fallback.failed(address) if count is None else count

    def succeeded(self, address: str) -> None:
        self.fallback.succeeded(address)  # what the file counted while Redis was away
        if self._usable():
            try:
                self.redis.delete(self._keys(address)[0])
            except (RedisError, OSError) as exc:
                self._failing(exc)
