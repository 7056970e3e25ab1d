"""The benchmark's crowd of slow streams (bench/streams.py), against its mock upstream: every
event counted and timed, and a target that refuses the streams counted as errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from bench import streams
from bench.procs import Child, free_port
from bench.targets import CHAT_BODY, UPSTREAM_SCRIPT
from bench.upstream import CHUNKS


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    child = Child(
        "upstream",
        [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)],
        tmp_path_factory.mktemp("upstream") / "upstream.log",
    )
    try:
        child.wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


def test_the_crowd_counts_every_event_of_every_stream_and_times_the_gaps(upstream):
    sampled: list[int] = []

    def sample() -> int:
        sampled.append(1)
        return 1234

    crowd = streams.crowd(
        upstream + "/v1/chat/completions", {}, CHAT_BODY, concurrency=20, pace_ms=5, sample=sample
    )
    assert (crowd.streams, crowd.errors) == (20, 0)
    assert crowd.chunks == 20 * CHUNKS  # [DONE] not counted
    assert crowd.rss_open_kib == 1234 and sampled == [1]  # once, with every stream open
    assert crowd.delay_p50_ms is not None and crowd.delay_p99_ms is not None
    assert 0 <= crowd.delay_p50_ms <= crowd.delay_p99_ms


def test_streams_refused_or_cut_short_are_errors(upstream):
    crowd = streams.crowd(
        upstream + "/v1/no-such-route", {}, CHAT_BODY, concurrency=5, pace_ms=5, sample=lambda: 0
    )
    assert (crowd.streams, crowd.errors, crowd.chunks) == (0, 5, 0)
    assert crowd.delay_p99_ms is None
