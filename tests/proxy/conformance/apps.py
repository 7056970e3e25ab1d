"""The applications the real servers of the conformance suite serve (WSGI for gunicorn, ASGI
for uvicorn and hypercorn): the same few routes everywhere.

- `/echo`: the request body back, with a header `x-method`.
- `/stream`: five SSE events, each flushed on its own.
- `/die`: notes the request in RUN_LOG (its `x-test-id`), then the worker dies mid-request.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

RUN_LOG = "CONFORMANCE_RUN_LOG"


def _note(test_id: str) -> None:
    path = os.environ.get(RUN_LOG)
    if path:
        with open(path, "a") as log:
            log.write(test_id + "\n")


def wsgi(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    path = environ["PATH_INFO"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    if path == "/die":
        _note(environ.get("HTTP_X_TEST_ID", ""))
        os.kill(os.getpid(), signal.SIGKILL)
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return iter([f"data: {i}\n\n".encode() for i in range(5)])
    start_response(
        "200 OK", [("Content-Length", str(len(body))), ("x-method", environ["REQUEST_METHOD"])]
    )
    return iter([body])


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(5):
            await send(
                {"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"x-method", scope["method"].encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
