"""The proxy driven in-process: its lifespan builds the `Runtime` in the test's event loop, and
requests are hand-written `receive` and `send` (no server), as Starlette's tests drive apps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.proxy.app import ProxyApp
from shared import analytics
from shared.apikeys import ApiKey
from shared.settings import Settings
from tests.conftest import eventually, make_settings

Message = dict[str, Any]


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[ProxyApp]:
    """The app, its lifespan run through start-up; shut down on leaving."""
    app = ProxyApp(settings)
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan"}, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    try:
        yield app
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await lifespan


def chat_scope(key: ApiKey) -> Message:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {key.key}".encode()),
            (b"content-type", b"application/json"),
        ],
    }


async def rows_of(app: ProxyApp) -> list[dict[str, Any]]:
    assert app.runtime is not None
    await app.runtime.recorder.flush()
    db = analytics.connect(app.settings.analytics_db)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        db.close()


def completions(upstream: Any) -> list[Any]:
    return [s for s in upstream.seen if s.path != "/v1/models"]


def test_the_lifespan_builds_the_runtime_and_closes_it(tmp_path: Path, upstreams):
    a = upstreams("a", ["m"])

    async def scenario() -> tuple[bool, list[str]]:
        async with serving(make_settings(tmp_path, target_urls=a.url)) as app:
            runtime = app.runtime
            assert runtime is not None
            tasks = runtime.tasks
            names = sorted(t.get_name() for t in tasks)
            assert not any(t.done() for t in tasks)
        return all(t.done() for t in tasks), names

    stopped, names = asyncio.run(scenario())
    assert stopped
    assert names == ["metrics-flush", "models-refresh-loop", "proxy-heartbeat"]


def test_a_client_that_leaves_before_its_body_is_recorded_and_nothing_is_sent(
    tmp_path: Path, upstreams, api_key: ApiKey
):
    a = upstreams("a", ["m"])
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"model": "m", ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    async def scenario() -> list[dict[str, Any]]:
        async with serving(make_settings(tmp_path, target_urls=a.url)) as app:
            await asyncio.wait_for(app(chat_scope(api_key), receive, send), 10)
            return await rows_of(app)

    rows = asyncio.run(scenario())
    assert sent == [] and messages == []  # nothing to answer: the client is gone
    assert [(r["status"], r["error"], r["end_ms"]) for r in rows] == [
        (0, "client disconnected", None)
    ]
    assert not completions(a)


def test_the_disconnect_watch_ends_a_stream_whose_client_leaves(
    tmp_path: Path, upstreams, api_key: ApiKey
):
    a = upstreams("a", ["m"], pace=0.2, chunks=1000)  # 200 s, unless it is cancelled
    body = json.dumps({"model": "m", "stream": True}).encode()
    events: list[str] = []

    async def scenario() -> list[dict[str, Any]]:
        leave = asyncio.Event()
        asked = 0

        async def receive() -> Message:
            nonlocal asked
            asked += 1
            if asked == 1:
                events.append("body")
                return {"type": "http.request", "body": body, "more_body": False}
            await leave.wait()  # the watch listens; the client stays until it has a chunk
            events.append("disconnect")
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            events.append(message["type"])
            if message["type"] == "http.response.body" and message["body"]:
                leave.set()

        async with serving(make_settings(tmp_path, target_urls=a.url)) as app:
            # It returns (not cancelled): the request ended when its client left.
            await asyncio.wait_for(app(chat_scope(api_key), receive, send), 30)
            return await rows_of(app)

    rows = asyncio.run(scenario())
    assert events[:3] == ["body", "http.response.start", "http.response.body"]
    assert events.count("disconnect") == 1
    row = rows[0]
    assert (row["status"], row["error"], row["end_ms"]) == (200, "client disconnected", None)
    assert row["ttfb_ms"] is not None and row["bytes_out"] > 0
    eventually(lambda: a.stream_closed)  # the upstream's request ended with it


def test_a_worker_loads_no_client_of_a_service_it_is_not_given(tmp_path: Path) -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT, DATABASE_URL and REDIS_URL, none of OpenTelemetry,
    psycopg and redis-py is imported: psycopg alone is 9 MB of every worker's memory (libpq,
    its own OpenSSL), and redis-py 8 imports OpenTelemetry when it is installed."""
    code = (
        "import asyncio, pathlib, sys\n"
        "import services.proxy.app, services.proxy.server\n"
        "from services.proxy.runtime import Runtime\n"
        "from tests.conftest import make_settings\n"
        "async def start() -> object:\n"
        f"    runtime = await Runtime.start(make_settings(pathlib.Path({str(tmp_path)!r})))\n"
        "    await runtime.close()\n"
        "    return runtime.tracing\n"
        "assert asyncio.run(start()) is None\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'opentelemetry', 'psycopg', 'redis'}))\n"
    )
    given = ("DATABASE_URL", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if k not in given and not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
