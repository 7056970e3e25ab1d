"""Webhooks from llmp as deployed (supervisord, two proxy worker processes, certd) to a real
receiver: an upstream that every worker sees down, then back, is announced once each way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually, free_port
from tests.stack.conftest import Stack
from tests.upstream import FakeUpstream
from tests.webhook_receiver import Receiver

SECRET = "stack-webhook-secret-" + "x" * 20


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def test_an_upstream_down_then_back_is_announced_once_by_all_the_workers(
    tmp_path: Path, receiver: Receiver
) -> None:
    alive = FakeUpstream("alive", ["m"]).start()
    late = FakeUpstream("late", ["n"], port=free_port())  # refuses connections until started
    env = {"WEBHOOK_URLS": receiver.url, "WEBHOOK_SECRET": SECRET}
    stack = Stack(tmp_path, [alive, late], workers=2, env=env).start()
    started = False
    try:
        eventually(lambda: len(stack.workers()) == 2)

        def seen(healthy: bool) -> bool:  # by both workers, in their heartbeats
            workers = stack.workers()
            return len(workers) == 2 and all(
                [u["healthy"] for u in w.get("upstreams", [])] == [True, healthy] for w in workers
            )

        eventually(lambda: seen(False))
        eventually(lambda: receiver.received)
        late.start()
        started = True
        eventually(lambda: seen(True))
        eventually(lambda: len(receiver.received) == 2)
    finally:
        assert stack.stop() == 0, stack.output()  # the workers send or drop what they hold
        if started:
            late.stop()
        alive.stop()
    events = receiver.events()
    assert [e["type"] for e in events] == ["upstream.down", "upstream.up"]
    assert all(r.signed_with(SECRET) for r in receiver.received)
    assert late.url not in str(events)  # named by its label, never its address
