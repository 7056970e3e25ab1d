"""`python -m bench.limits`: what counting a limited key's request costs, on the board and in
Redis (REDIS_URL), side by side.

A key with requests and tokens per minute and a maxConcurrent goes through the proxy's own
`Limiter` (admit, then release with its tokens), one request at a time and then CONCURRENT at
once, against the board (a file in a temporary folder) and against a redis-server started for
the run (Debian's `redis-server`, on a unix socket, or `--redis-url` for a server of your own,
over TCP for instance). Each figure is the time from asking to being admitted (the release
runs in the background in Redis' case, so it is measured by its effect: the next admission).
Rounds alternate between the stores so that a slow moment of the machine hits both.

    python -m bench.limits [--requests 5000] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from services.proxy.board import Board
from services.proxy.board_counters import BoardCounters
from services.proxy.counters import Counters
from services.proxy.limits import Limiter, Policy
from services.proxy.redis_counters import RedisCounters
from shared.apikeys import ApiKey, Limits

ROUNDS = 4
CONCURRENT = 32


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    program = shutil.which("redis-server")
    if program is None:
        raise SystemExit("redis-server not found: run `scripts/system-deps test`, or --redis-url")
    sock = folder / "redis.sock"
    process = subprocess.Popen(
        [program, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", str(folder / "redis.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                break
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.01)
        yield f"unix://{sock}"
    finally:
        process.terminate()
        process.wait(10)


def policy(n: int) -> Policy:
    limits = Limits(requestsPerMinute=10**9, tokensPerMinute=10**12, maxConcurrent=10**6)
    return Policy.of(replace(ApiKey.new(f"bench-{n}"), limits=limits))


async def sequential(limiter: Limiter, keys: list[Policy], requests: int) -> list[float]:
    times = []
    for n in range(requests):
        started = time.perf_counter()
        admission = await limiter.admit(keys[n % len(keys)])
        times.append(time.perf_counter() - started)
        assert admission is not None
        limiter.release(admission, 100)
    return times


async def concurrent(limiter: Limiter, keys: list[Policy], requests: int) -> float:
    """Requests admitted per second with CONCURRENT asking at once."""
    queue = iter(range(requests))

    async def one_client() -> None:
        for n in queue:
            admission = await limiter.admit(keys[n % len(keys)])
            assert admission is not None
            await asyncio.sleep(0)
            limiter.release(admission, 100)

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(CONCURRENT)))
    return requests / (time.perf_counter() - started)


def percentile(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(folder: Path, url: str, requests: int) -> dict[str, dict[str, float]]:
    keys = [policy(n) for n in range(20)]
    stores: dict[str, Counters] = {
        "board": BoardCounters(Board(folder / "board")),
        "redis": RedisCounters(url, BoardCounters(Board(folder / "fallback")), "bench"),
    }
    limiters = {name: Limiter(store) for name, store in stores.items()}
    times: dict[str, list[float]] = {name: [] for name in stores}
    rates: dict[str, list[float]] = {name: [] for name in stores}
    try:
        for limiter in limiters.values():  # warm-up: slots, connections, scripts
            await sequential(limiter, keys, 200)
        for n in range(ROUNDS):
            for name in sorted(stores, reverse=bool(n % 2)):
                times[name] += await sequential(limiters[name], keys, requests // ROUNDS)
                rates[name].append(await concurrent(limiters[name], keys, requests // ROUNDS))
        assert isinstance(stores["redis"], RedisCounters) and not stores["redis"].down
    finally:
        for store in stores.values():
            await store.aclose()
    return {
        name: {
            "p50_us": percentile(times[name], 0.5) * 1e6,
            "p99_us": percentile(times[name], 0.99) * 1e6,
            "per_second": statistics.mean(rates[name]),
        }
        for name in stores
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__)
    parser.add_argument("--requests", type=int, default=5000, help="per store (default 5000)")
    parser.add_argument("--redis-url", help="a Redis of your own (default: one started here)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmp-bench-limits-") as tmp:
        folder = Path(tmp)
        with contextlib.ExitStack() as stack:
            url = args.redis_url or stack.enter_context(redis_server(folder))
            figures = asyncio.run(measure(folder, url, args.requests))
    board, redis = figures["board"], figures["redis"]
    print(f"{'limited request':<28}{'board':>12}{'redis':>12}{'added':>12}")
    for label, field in (("admission p50 (µs)", "p50_us"), ("admission p99 (µs)", "p99_us")):
        print(
            f"{label:<28}{board[field]:>12.0f}{redis[field]:>12.0f}"
            f"{redis[field] - board[field]:>12.0f}"
        )
    print(
        f"{f'admitted/s, {CONCURRENT} at once':<28}{board['per_second']:>12.0f}"
        f"{redis['per_second']:>12.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
