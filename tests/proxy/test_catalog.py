"""The model catalog's background refresh."""

from __future__ import annotations

import asyncio
import time

from services.proxy.catalog import Catalog
from services.proxy.clients import create_client
from tests.conftest import free_port, make_settings
from tests.upstream import FakeUpstream


def test_an_upstream_that_comes_up_is_listed_within_seconds(tmp_path):
    port = free_port()  # nothing listens there yet: the upstream is down
    settings = make_settings(
        tmp_path, target_urls=f"http://127.0.0.1:{port}", models_refresh_seconds=60.0
    )

    async def scenario() -> float:
        client = create_client(settings)
        catalog = Catalog(settings, client)
        loop = asyncio.create_task(catalog.run())
        try:
            while not catalog.refreshed:  # noqa: ASYNC110 (the catalog sets a flag, no event)
                await asyncio.sleep(0.05)
            assert not catalog.states[0].healthy
            await asyncio.sleep(2.5)  # a few refreshes fail
            upstream = FakeUpstream("late", ["llama3"], port=port).start()
            try:
                came_up = time.monotonic()
                while "llama3" not in catalog.states[0].model_ids:
                    assert time.monotonic() - came_up < 30, "not listed in 30 s"
                    await asyncio.sleep(0.1)
                return time.monotonic() - came_up
            finally:
                upstream.stop()
        finally:
            loop.cancel()
            await client.close()

    waited = asyncio.run(scenario())
    print(f"listed {waited:.1f} s after it came up")
