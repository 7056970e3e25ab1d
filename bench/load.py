"""Plain (non-streaming) request load with wrk: req/s, latency percentiles, errors.

wrk runs `bench/wrk.lua`, which takes the request from the environment and prints its summary
as one JSON line; wrk is bounded by its own duration and by a subprocess timeout on top.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "wrk.lua"
MARKER = "BENCH_JSON "


class LoadFailed(Exception):
    """wrk did not run or did not report."""


@dataclass(frozen=True, slots=True)
class Load:
    connections: int
    requests: int
    seconds: float
    socket_errors: int  # connect, read, write errors and timeouts
    non_2xx: int  # answers with a status >= 400 (wrk's "Non-2xx or 3xx responses")
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    rps: float


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 2,
    body: str = "",
    api_key: str = "",
) -> Load:
    """POST `body` (GET without one) to `url` over `connections` keep-alive connections, for
    `seconds` rounded to whole seconds (wrk's resolution), at least one."""
    threads = max(1, min(threads, connections))
    seconds = max(1, round(seconds))
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        url,
    ]
    environment = {
        **os.environ,
        "BENCH_METHOD": "POST" if body else "GET",
        "BENCH_BODY": body,
        "BENCH_AUTH": api_key,
    }
    try:
        done = subprocess.run(
            argv, env=environment, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoadFailed(f"{' '.join(argv)}: {exc}") from exc
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return _load(connections, json.loads(line[len(MARKER) :]))
    raise LoadFailed(
        f"wrk exited with {done.returncode} without a summary:\n"
        f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
    )


def _load(connections: int, summary: dict[str, float]) -> Load:
    seconds = summary["duration_us"] / 1e6
    return Load(
        connections=connections,
        requests=int(summary["requests"]),
        seconds=seconds,
        socket_errors=int(
            sum(summary[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
        ),
        non_2xx=int(summary["status_errors"]),
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        max_ms=summary["max_us"] / 1000,
        rps=summary["requests"] / seconds if seconds else 0.0,
    )
