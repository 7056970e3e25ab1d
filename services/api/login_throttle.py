"""The login throttle's seam: where failed logins are counted.

- `Throttle` (services/api/throttle.py): `data/login-failures.json`, shared by the api processes
  of one machine (the default).
- `RedisThrottle` (services/api/redis_throttle.py): Redis or Valkey (`REDIS_URL`), shared by
  every replica, so that guesses spread over replicas meet the same limits; while Redis does
  not answer, the machine's file counts.

Each method is synchronous and may wait on a file lock or on Redis (a short timeout): the
routes call them in a thread.
"""

from __future__ import annotations

from typing import Protocol

from shared.settings import Settings


class LoginThrottle(Protocol):
    def retry_after(self, address: str) -> int:
        """Seconds the address must wait, 0 if it may try now."""
        ...

    def failed(self, address: str) -> int:
        """Record a failure; returns how many its client has in the window."""
        ...

    def succeeded(self, address: str) -> None:
        """A login succeeded: its client's failures are forgotten (not the account's)."""
        ...


def throttle_for(settings: Settings) -> LoginThrottle:
    from services.api.throttle import Throttle

    local = Throttle(
        settings.data_dir / "login-failures.json",
        settings.login_max_failures,
        settings.login_window_seconds,
    )
    if not settings.redis_url:
        return local
    from services.api.redis_throttle import RedisThrottle

    return RedisThrottle(settings.redis_url, local)
