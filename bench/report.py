"""The results: one table (a row per figure, a column per target, ratios against nginx), and the
same figures with every raw measurement as JSON.

A figure is the mean over the rounds (errors: the sum); RSS rows are per round, to show growth.
Where two rounds of a mean differ by more than `NOISY`, a note under the table says so.
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
RATIO_BASE = "nginx"
DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    value: Callable[[TargetRound], float | None]
    total: bool = False  # sum over rounds instead of the mean
    only_round: int | None = None  # this round's value alone
    minus_direct: bool = False  # the difference to the direct target's value
    ratio: bool = True


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    values: dict[str, float | None]
    ratios: dict[str, float | None]


def rows(options: Options) -> list[Row]:
    def cpu_us(index: int, groups: tuple[str, ...]) -> Callable[[TargetRound], float | None]:
        def value(r: TargetRound) -> float | None:
            cpu = r.cpu[f"c{options.connections[index]}"]
            if not any(g in cpu for g in groups) or not r.loads[index].requests:
                return None
            return sum(cpu.get(g, 0.0) for g in groups) / r.loads[index].requests * 1e6

        return value

    def errors(r: TargetRound) -> float:
        loads = [r.latency, *r.loads]
        return (sum(x.socket_errors + x.non_2xx for x in loads) + r.streams.errors
                + r.paced.errors)

    def rss_mib(r: TargetRound) -> float | None:
        return max(r.rss_kib) / 1024 if r.rss_kib else None

    last = len(options.connections) - 1
    result = [
        Row("latency p50, 1 conn (ms)", lambda r: r.latency.p50_ms),
        Row("  added to direct (ms)", lambda r: r.latency.p50_ms, minus_direct=True),
    ]
    for index, connections in enumerate(options.connections):
        result += [
            Row(f"req/s, {connections} conns", lambda r, i=index: r.loads[i].rps),
            Row(f"  p99 (ms)", lambda r, i=index: r.loads[i].p99_ms),
            Row("  CPU/req, proxy (us)", cpu_us(index, ("proxy",))),
        ]
    result += [
        Row(f"  CPU/req, + llmp's nginx (us)", cpu_us(last, ("proxy", "nginx"))),
        Row(f"stream chunks/s, {options.stream_concurrency} streams",
            lambda r: r.streams.chunks_per_s),
        Row(f"paced TTFB p50 (ms), {options.pace_ms} ms pace", lambda r: r.paced.ttfb_p50_ms),
        Row("  p99 (ms)", lambda r: r.paced.ttfb_p99_ms),
        Row("errors (non-2xx + socket + stream)", errors, total=True, ratio=False),
        Row("RSS per worker, max, after run 1 (MiB)", rss_mib, only_round=0),
        Row("  after run 2 (MiB)", rss_mib, only_round=1),
    ]
    return result


def lines(rounds: Sequence[dict[str, TargetRound]], options: Options) -> tuple[list[Line], list[str]]:
    """The table's lines, and notes on figures whose rounds disagree."""
    names = list(rounds[0])
    out, notes = [], []
    for row in rows(options):
        chosen = rounds if row.only_round is None else rounds[row.only_round:row.only_round + 1]
        values: dict[str, float | None] = {}
        for name in names:
            samples = [v for v in (row.value(r[name]) for r in chosen) if v is not None]
            if not samples:
                values[name] = None
                continue
            values[name] = sum(samples) if row.total else sum(samples) / len(samples)
            low, high = min(samples), max(samples)
            if not row.total and low > 0 and high / low - 1 > NOISY:
                notes.append(f"{row.label.strip()} on {name}: rounds differ by "
                             f"{(high / low - 1) * 100:.0f}% ({_number(low)} .. {_number(high)})")
        if row.minus_direct:
            base = values.get(DIRECT)
            values = {n: None if v is None or base is None else v - base
                      for n, v in values.items()}
        out.append(Line(row.label, values, _ratios(values) if row.ratio else {}))
    return out, notes


def _ratios(values: dict[str, float | None]) -> dict[str, float | None]:
    base = values.get(RATIO_BASE)
    return {
        name: None if value is None or not base else value / base
        for name, value in values.items() if name != RATIO_BASE and RATIO_BASE in values
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
        [line.label, *(_number(line.values[n]) for n in names),
         *("" if line.ratios.get(n) is None else f"{line.ratios[n]:.2f}x" for n in ratio_names)]
        for line in table_lines
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                         strict=True))])
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
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "options": asdict(options),
        "settings": settings,
        "table": [asdict(line) for line in table_lines],
        "rounds": [{name: asdict(r) for name, r in by_target.items()} for by_target in rounds],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
