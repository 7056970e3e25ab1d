"""One round of measurements over every target, interleaved.

Each measurement (1-connection latency, wrk at each connection count, stream throughput, paced
streams) runs on every target before the next one starts, in an order that rotates from one
measurement to the next, so drift of the machine (thermal, other tenants) spreads over the
targets instead of landing on one. Around each, the CPU time of the target's processes, of the
upstream and of the client is sampled. After the round, the RSS of each target's workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from bench import streams
from bench.load import Load, run_wrk
from bench.procs import cpu_seconds, cpu_used, rss_kib, tree
from bench.streams import Crowd, Paced, Throughput
from bench.targets import CHAT_BODY, Target

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Options:
    seconds: float = 5.0  # each wrk load and the stream throughput
    warmup_seconds: float = 1.0
    threads: int = 2  # wrk threads
    connections: tuple[int, ...] = (32, 128)
    stream_concurrency: int = 64
    paced_concurrency: int = 16
    paced_rounds: int = 2
    pace_ms: int = 20
    crowd: int = 1000  # streams open at once
    crowd_pace_ms: int = 50  # 20 chunks a second each


@dataclass(slots=True)
class TargetRound:
    """Everything measured on one target in one round."""

    latency: Load
    loads: list[Load]  # one per Options.connections
    streams: Throughput
    paced: Paced
    crowd: Crowd
    rss_idle_kib: int  # the workers' RSS (summed) before the crowd
    # measurement -> group -> CPU seconds; groups: proxy, nginx (see Target.cost_groups),
    # upstream, and client (the benchmark and wrk)
    cpu: dict[str, dict[str, float]]
    rss_kib: list[int]  # of each worker, after the round


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def warm_up(targets: Sequence[Target], options: Options) -> None:
    for target in targets:
        _wrk(target, options, connections=32, seconds=options.warmup_seconds)


def run_round(
    targets: Sequence[Target], upstream_pid: int, options: Options
) -> dict[str, TargetRound]:
    cpu: dict[str, dict[str, dict[str, float]]] = {t.name: {} for t in targets}
    step = 0

    def each(name: str, measure: Callable[[Target], T]) -> dict[str, T]:
        nonlocal step
        results = {}
        order = [targets[(i + step) % len(targets)] for i in range(len(targets))]
        for target in order:
            log(f"  {name} on {target.name}")
            results[target.name], cpu[target.name][name] = _with_cpu(target, upstream_pid, measure)
        step += 1
        return results

    def wrk(connections: int) -> Callable[[Target], Load]:
        return lambda t: _wrk(t, options, connections=connections, seconds=options.seconds)

    latency = each("latency", wrk(1))
    loads = [each(f"c{c}", wrk(c)) for c in options.connections]
    throughput = each(
        "streams",
        lambda t: streams.throughput(
            t.url("/v1/chat/completions"),
            t.headers(),
            CHAT_BODY,
            concurrency=options.stream_concurrency,
            seconds=options.seconds,
        ),
    )
    paced = each(
        "paced",
        lambda t: streams.paced(
            t.url("/v1/chat/completions"),
            t.headers(),
            CHAT_BODY,
            concurrency=options.paced_concurrency,
            rounds=options.paced_rounds,
            pace_ms=options.pace_ms,
        ),
    )
    idle = {t.name: _rss_sum(t) for t in targets}
    crowd = each(
        "crowd",
        lambda t: streams.crowd(
            t.url("/v1/chat/completions"),
            t.headers(),
            CHAT_BODY,
            concurrency=options.crowd,
            pace_ms=options.crowd_pace_ms,
            sample=lambda: _rss_sum(t),
        ),
    )
    return {
        t.name: TargetRound(
            latency=latency[t.name],
            loads=[by_target[t.name] for by_target in loads],
            streams=throughput[t.name],
            paced=paced[t.name],
            crowd=crowd[t.name],
            rss_idle_kib=idle[t.name],
            cpu=cpu[t.name],
            rss_kib=[kib for kib in map(rss_kib, t.workers()) if kib is not None],
        )
        for t in targets
    }


def _rss_sum(target: Target) -> int:
    return sum(kib for kib in map(rss_kib, target.workers()) if kib is not None)


def _wrk(target: Target, options: Options, *, connections: int, seconds: float) -> Load:
    return run_wrk(
        target.url("/v1/chat/completions"),
        connections=connections,
        seconds=seconds,
        threads=options.threads,
        body=CHAT_BODY,
        api_key=target.api_key,
    )


def _with_cpu(
    target: Target, upstream_pid: int, measure: Callable[[Target], T]
) -> tuple[T, dict[str, float]]:
    def groups() -> dict[str, list[int]]:
        return {**target.cost_groups(), "upstream": [p.pid for p in tree(upstream_pid)]}

    before = {name: cpu_seconds(pids) for name, pids in groups().items()}
    client_before = _client_cpu()
    result = measure(target)
    client = _client_cpu() - client_before
    after = {name: cpu_seconds(pids) for name, pids in groups().items()}
    used = {name: cpu_used(before.get(name, {}), after[name]) for name in after}
    return result, {**used, "client": client}


def _client_cpu() -> float:
    """CPU seconds of this process and of its finished children (wrk)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
