"""One gateway under supervisord with nginx in front, shared by the load tests, on a fleet of a
fast fake upstream and a firehose (an SSE stream as fast as the reader takes it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.apikeys import ApiKey
from tests.faults.servers import FaultServer, Reply, Request
from tests.stack.conftest import Stack
from tests.upstream import FakeUpstream

FIREHOSE_EVENT = b"data: " + b"f" * 1018 + b"\n\n"  # 1 kB


async def firehose(request: Request, reply: Reply) -> None:
    """An endless SSE stream, written as fast as the other side reads it."""
    head = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"}
    await reply.head(200, head)
    chunk = b"%x\r\n%s\r\n" % (len(FIREHOSE_EVENT) * 16, FIREHOSE_EVENT * 16)
    while True:
        await reply.write(chunk)


@pytest.fixture(scope="session")
def load_fleet() -> Iterator[tuple[FakeUpstream, FaultServer]]:
    fast = FakeUpstream("fast", ["model-a"], chunks=8).start()
    hose = FaultServer(firehose, models=["firehose"]).start()
    yield fast, hose
    hose.stop()
    fast.stop()


@pytest.fixture(scope="session")
def load_stack(
    tmp_path_factory: pytest.TempPathFactory, load_fleet: tuple[FakeUpstream, FaultServer]
) -> Iterator[Stack]:
    fast, hose = load_fleet
    targets = f"{fast.url},{hose.url}"
    running = Stack(tmp_path_factory.mktemp("load"), [], env={"TARGET_URLS": targets}).start()
    yield running
    assert running.stop() == 0, running.output()


@pytest.fixture
def load_key(load_stack: Stack) -> ApiKey:
    """A fresh key (the only one), accepted by every proxy worker."""
    new = ApiKey.new("load")
    load_stack.keys(new)
    load_stack.accept(new)
    return new
