"""The results: one table (a row per figure, a column per target, ratios against nginx), and the
same figures with every raw measurement as JSON.

A figure is the mean over the rounds (errors: the sum); RSS rows are per round, to show growth.
Notes under the table say where the rounds of a headline figure differ by more than `NOISY`, and
where the stream client was so busy that it, not the target, may have set the figure.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.suite import Options, TargetRound

NOISY = 0.15
CLIENT_BOUND = 0.9
RATIO_BASE = "nginx"
DIRECT = "direct"

Value = Callable[[TargetRound], float | None]


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    value: Value
    total: bool = False  # sum over rounds instead of the mean
    only_round: int | None = None  # this round's value alone
    minus_direct: bool = False  # the difference to the direct target's value
    ratio: bool = True
    steady: bool = False  # say so when the rounds disagree


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    values: dict[str, float | None]
    ratios: dict[str, float | None]


def _rps(index: int) -> Value:
    return lambda r: r.loads[index].rps


def _p99(index: int) -> Value:
    return lambda r: r.loads[index].p99_ms


def _cpu_per_request(index: int, measurement: str, groups: tuple[str, ...]) -> Value:
    """Microseconds of CPU per request in `groups` of processes during a wrk load."""

    def value(r: TargetRound) -> float | None:
        cpu, requests = r.cpu[measurement], r.loads[index].requests
        if not requests or not any(group in cpu for group in groups):
            return None
        return sum(cpu.get(group, 0.0) for group in groups) / requests * 1e6

    return value


def _cpu_per_chunk(r: TargetRound) -> float | None:
    """Microseconds of the proxy's CPU per streamed chunk during the stream load."""
    cpu, chunks = r.cpu["streams"], r.streams.chunks
    if not chunks or "proxy" not in cpu:
        return None
    return cpu["proxy"] / chunks * 1e6


def _errors(r: TargetRound) -> float:
    loads = [r.latency, *r.loads]
    streamed = r.streams.errors + r.paced.errors + r.crowd.errors
    return sum(x.socket_errors + x.non_2xx for x in loads) + streamed


def _crowd_cpu_per_chunk(r: TargetRound) -> float | None:
    cpu, chunks = r.cpu["crowd"], r.crowd.chunks
    if not chunks or "proxy" not in cpu:
        return None
    return cpu["proxy"] / chunks * 1e6


def _kib_per_stream(r: TargetRound) -> float | None:
    """What the workers' memory grew by with every stream open, per stream."""
    if not r.crowd.rss_open_kib or not r.rss_idle_kib:
        return None
    return (r.crowd.rss_open_kib - r.rss_idle_kib) / r.crowd.concurrency


def _rss_mib(r: TargetRound) -> float | None:
    return max(r.rss_kib) / 1024 if r.rss_kib else None


def rows(options: Options) -> list[Row]:
    result = [
        Row("latency p50, 1 conn (ms)", lambda r: r.latency.p50_ms),
        Row("  added to direct's (ms)", lambda r: r.latency.p50_ms, minus_direct=True),
    ]
    for index, connections in enumerate(options.connections):
        measurement = f"c{connections}"
        result += [
            Row(f"req/s, {connections} conns", _rps(index), steady=True),
            Row("  p99 (ms)", _p99(index)),
            Row(
                "  CPU/req, proxy (us)",
                _cpu_per_request(index, measurement, ("proxy",)),
                steady=True,
            ),
        ]
    result += [
        Row(
            "  CPU/req, proxy + its nginx (us)",
            _cpu_per_request(
                len(options.connections) - 1, f"c{options.connections[-1]}", ("proxy", "nginx")
            ),
        ),
        Row(
            "  CPU/req, its database (us)",
            _cpu_per_request(
                len(options.connections) - 1, f"c{options.connections[-1]}", ("database",)
            ),
        ),
        Row(
            f"stream chunks/s, {options.stream_concurrency} streams",
            lambda r: r.streams.chunks_per_s,
            steady=True,
        ),
        Row("  CPU/chunk, proxy (us)", _cpu_per_chunk),
        Row(f"paced TTFB p50 (ms), {options.pace_ms} ms pace", lambda r: r.paced.ttfb_p50_ms),
        Row("  p99 (ms)", lambda r: r.paced.ttfb_p99_ms),
        Row(
            f"{options.crowd} streams at {1000 // options.crowd_pace_ms}/s: errors",
            lambda r: r.crowd.errors,
            total=True,
            ratio=False,
        ),
        Row("  inter-chunk delay over pace, p50 (ms)", lambda r: r.crowd.delay_p50_ms),
        Row("  p99 (ms)", lambda r: r.crowd.delay_p99_ms),
        Row("  CPU/chunk, proxy (us)", _crowd_cpu_per_chunk),
        Row("  memory per open stream, proxy (KiB)", _kib_per_stream),
        Row("errors (non-2xx, socket, stream)", _errors, total=True, ratio=False),
        Row("RSS per worker, max, run 1 (MiB)", _rss_mib, only_round=0),
        Row("  after run 2 (MiB)", _rss_mib, only_round=1),
    ]
    return result


def lines(
    rounds: Sequence[dict[str, TargetRound]], options: Options
) -> tuple[list[Line], list[str]]:
    """The table's lines, and notes for the reader."""
    names = list(rounds[0])
    out, notes = [], []
    for row in rows(options):
        chosen = rounds if row.only_round is None else rounds[row.only_round : row.only_round + 1]
        values: dict[str, float | None] = {}
        for name in names:
            samples = [v for v in (row.value(r[name]) for r in chosen) if v is not None]
            if not samples:
                values[name] = None
                continue
            values[name] = sum(samples) if row.total else sum(samples) / len(samples)
            low, high = min(samples), max(samples)
            if row.steady and low > 0 and high / low - 1 > NOISY:
                notes.append(
                    f"{row.label.strip()} on {name}: the rounds differ by "
                    f"{(high / low - 1) * 100:.0f}% ({_number(low)} .. {_number(high)})"
                )
        ratios = _ratios(values) if row.ratio else {}
        if row.minus_direct:
            base = values.get(DIRECT)
            values = {n: None if v is None or base is None else v - base for n, v in values.items()}
            ratios = {n: r for n, r in _ratios(values).items() if n != DIRECT}
        out.append(Line(row.label, values, ratios))
    return out, notes + _client_bound(rounds)


def _client_bound(rounds: Sequence[dict[str, TargetRound]]) -> list[str]:
    """Stream figures the Python client may have capped: it was busy nearly all the time."""
    notes = []
    for name in rounds[0]:
        busy = max(r[name].cpu["streams"]["client"] / r[name].streams.seconds for r in rounds)
        if busy > CLIENT_BOUND:
            notes.append(
                f"stream chunks/s on {name}: the client used {busy * 100:.0f}% of a "
                "CPU, so this may be the client's limit rather than the target's"
            )
    return notes


def _ratios(values: dict[str, float | None]) -> dict[str, float | None]:
    base = values.get(RATIO_BASE)
    return {
        name: None if value is None or not base else value / base
        for name, value in values.items()
        if name != RATIO_BASE and RATIO_BASE in values
    }


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(table_lines: Sequence[Line], names: Sequence[str]) -> str:
    ratio_names = [n for n in names if n != RATIO_BASE] if RATIO_BASE in names else []
    header = ["", *names, *(f"{n}/{RATIO_BASE}" for n in ratio_names)]
    body = [
        [
            line.label,
            *(_number(line.values[n]) for n in names),
            *("" if line.ratios.get(n) is None else f"{line.ratios[n]:.2f}x" for n in ratio_names),
        ]
        for line in table_lines
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            [
                row[0].ljust(widths[0]),
                *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
            ]
        )
        for row in [header, *body]
    )


def write_json(
    folder: Path,
    options: Options,
    settings: dict[str, Any],
    rounds: Sequence[dict[str, TargetRound]],
    table_lines: Sequence[Line],
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "options": asdict(options),
        "settings": settings,
        "table": [asdict(line) for line in table_lines],
        "rounds": [{name: asdict(r) for name, r in by_target.items()} for by_target in rounds],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
