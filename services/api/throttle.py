"""The login throttle: failed logins counted per client network and for the account.

- Per network: at most `limit` failures within `window` seconds from one client, where a client
  is an IPv4 address, an IPv6 /64 (what one host or home is given: its addresses are free to
  it), or loopback as a whole (127.0.0.0/8 and ::1 are the same machine).
- For the account (there is one admin): at most ACCOUNT_FACTOR times `limit` failures within
  the window from everywhere together, so that many addresses do not make many guesses. Past
  it, logins are refused for everyone until failures leave the window (sessions already open
  keep working); that is the price of a bound on guesses.
- A success clears its network's failures, not the account's.
- The failures live in `data/login-failures.json` (times of day, kept only within the window),
  read and written under a `flock` by every api process, so a restart or another process does
  not forget them. A file that cannot be read counts as no failures, and is written over.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from shared import files
from shared.files import write_json_atomic

log = logging.getLogger("api.throttle")

ACCOUNT = "account"
ACCOUNT_FACTOR = 5


def network(address: str) -> str:
    """The client a failure is counted against (see the module's docstring)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Throttle:
    def __init__(self, path: Path, limit: int, window: float) -> None:
        self.path = path
        self.limit, self.window = limit, window
        self.account_limit = ACCOUNT_FACTOR * limit

    @contextlib.contextmanager
    def _failures(self, write: bool) -> Iterator[dict[str, list[float]]]:
        """The failures still in the window, by client (and ACCOUNT); with `write`, under the
        file's lock and saved after the block (a read needs no lock: writes replace the file
        whole)."""
        with files.locked(self.path) if write else contextlib.nullcontext():
            now = time.time()
            failures = {
                who: kept
                for who, times in self._read().items()
                if (kept := [t for t in times if now - self.window < t <= now])
            }
            yield failures
            if write:
                write_json_atomic(self.path, {"failures": failures}, mode=0o600)

    def _read(self) -> dict[str, list[float]]:
        try:
            raw = json.loads(self.path.read_bytes())
            failures = raw["failures"]
            if isinstance(failures, dict) and all(
                isinstance(times, list) and all(isinstance(t, int | float) for t in times)
                for times in failures.values()
            ):
                return failures
            raise ValueError("failures must map clients to lists of times")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(
                "login failures unreadable; counting afresh", extra={"fields": {"error": exc}}
            )
            return {}

    def _wait(self, times: list[float], limit: int) -> int:
        if len(times) < limit:
            return 0
        oldest = sorted(times)[-limit]
        return max(1, int(oldest + self.window - time.time() + 0.999))

    def retry_after(self, address: str) -> int:
        """Seconds the address must wait, 0 if it may try now."""
        with self._failures(write=False) as failures:
            return max(
                self._wait(failures.get(network(address), []), self.limit),
                self._wait(failures.get(ACCOUNT, []), self.account_limit),
            )

    def failed(self, address: str) -> int:
        """Record a failure; returns how many its client has in the window."""
        now = time.time()
        with self._failures(write=True) as failures:
            mine = failures.setdefault(network(address), [])
            mine.append(now)
            failures.setdefault(ACCOUNT, []).append(now)
            return len(mine)

    def succeeded(self, address: str) -> None:
        with self._failures(write=True) as failures:
            failures.pop(network(address), None)
