"""`python -m services.proxy` with two workers, started on a data/upstreams.json written
before it starts (so both workers serve it from their first request), for the tests of what the
workers of a box share about their upstreams (tests/proxy/test_upstream_limits.py,
tests/proxy/test_board_circuits.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared import files
from shared.apikeys import ApiKey
from tests.conftest import eventually
from tests.proxy.test_sharing import Workers, models

Start = Callable[..., Workers]


@pytest.fixture
def fleet_workers(tmp_path: Path) -> Iterator[Start]:
    """`fleet_workers(upstream_entries, aliases=[...], UPSTREAM_FAILURES="2")`."""
    started: list[Workers] = []

    def start(upstreams: list[dict], aliases: list[dict] | None = None, **env: str) -> Workers:
        files.write_json_atomic(
            tmp_path / "data" / "upstreams.json",
            {"version": 1, "upstreams": upstreams, "aliases": aliases or []},
        )
        started.append(Workers(tmp_path, "http://127.0.0.1:9", **env))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def alias(*upstream_ids: str) -> dict:
    """`chat`: the upstreams' `model-a`, the first one's priority first."""
    deployments = [
        {"upstream": u, "model": "model-a", "priority": p} for p, u in enumerate(upstream_ids)
    ]
    return {"name": "chat", "deployments": deployments}


def ask(running: Workers, key: ApiKey, model: str = "chat", timeout: float = 60) -> httpx.Response:
    """A chat request on a new connection (either worker may take it)."""
    return httpx.post(
        running.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key.key}"},
        timeout=timeout,
    )


def completions(upstream) -> int:
    return len([s for s in upstream.seen if s.path.endswith("/chat/completions")])


def ready(running: Workers, key: ApiKey) -> None:
    """Wait until the workers know `key` (their first request to an upstream is the test's)."""
    running.keys(key)
    eventually(lambda: models(running.url, key.key) == 200)
