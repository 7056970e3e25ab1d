"""`python -m bench.inprocess`: one proxy worker driven in-process, to see what a request costs it.

The mock upstream (bench/upstream.py) runs in a child process. The proxy's app runs its lifespan
in this process's event loop (uvloop, as uvicorn runs it) and is called with hand-made ASGI
messages, `--concurrency` requests at a time: no server, no client and no nginx in between, so
what is measured is the proxy's own work. It prints the CPU per request of the event loop's
thread and of the whole process (the recorder's thread included, its last batch written), and
with `--profile FILE` writes a cProfile of the measured requests (`python -m pstats FILE`).

CPU time moves with the machine's load much less than req/s does, but it still moves (caches,
frequency): compare two builds side by side in the same minute. Under
`valgrind --tool=callgrind` the instruction counts do not move at all.

    python -m bench.inprocess [--requests 4000] [--concurrency 32] [--profile FILE]
                              [--stream [--pace-ms 50]] [--warmup 500] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.procs import Child, free_port
from bench.targets import CHAT_BODY, MODEL, UPSTREAM_SCRIPT, write_key_file
from services.proxy.app import ProxyApp
from shared.settings import load_settings

Message = dict[str, Any]


def stream_body(pace_ms: int) -> bytes:
    """A streamed chat completion; with `pace_ms`, the upstream sends an event every so often."""
    document: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
    }
    if pace_ms:
        document["pace_ms"] = pace_ms
    return json.dumps(document, separators=(",", ":")).encode()


def scope(key: str, body: bytes) -> Message:
    """A chat completion as uvicorn hands it over from llmp's nginx."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"x-real-ip", b"127.0.0.1"),
            (b"x-forwarded-for", b"127.0.0.1"),
            (b"x-forwarded-proto", b"http"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", b"Bearer " + key.encode()),
            (b"content-type", b"application/json"),
        ],
    }


async def one(app: ProxyApp, key: str, body: bytes) -> int:
    """One request; returns the pieces of its answer's body that the proxy sent."""
    asked = False
    pieces = status = 0

    async def receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays until the answer is complete
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal pieces, status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message.get("body"):
            pieces += 1

    await app(scope(key, body), receive, send)
    if status != 200:
        raise SystemExit(f"the proxy answered {status}")
    return pieces


async def load(app: ProxyApp, key: str, body: bytes, requests: int, concurrency: int) -> int:
    """Send `requests` requests, `concurrency` at a time; returns the pieces of body sent."""
    left, pieces = requests, 0

    async def client() -> None:
        nonlocal left, pieces
        while left > 0:
            left -= 1
            sent = await one(app, key, body)
            pieces += sent  # not `+= await`: that reads `pieces` before the request

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return pieces


async def measure(settings_dir: Path, upstream_port: int, key: str, args: Any) -> dict[str, Any]:
    settings = load_settings(
        str(settings_dir / "env"),
        data_dir=settings_dir / "data",
        state_dir=settings_dir / "var",
        nginx_conf_dir=settings_dir / "nginx",
        letsencrypt_dir=settings_dir / "certs",
        target_urls=f"http://127.0.0.1:{upstream_port}",
        log_level=args.log_level,
    )
    app = ProxyApp(settings)
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan"}, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        raise SystemExit(f"the proxy did not start: {started}")
    assert app.runtime is not None
    body = stream_body(args.pace_ms) if args.stream else CHAT_BODY.encode()
    await load(app, key, body, args.warmup, args.concurrency)
    await app.runtime.recorder.flush()
    profile = cProfile.Profile() if args.profile else None
    thread, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    pieces = await load(app, key, body, args.requests, args.concurrency)
    await app.runtime.recorder.flush()  # the rows' write is part of what a request costs
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
    thread, process = time.thread_time() - thread, time.process_time() - process
    wall = time.perf_counter() - wall
    await to_app.put({"type": "lifespan.shutdown"})
    await from_app.get()
    await lifespan
    result = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "stream": args.stream,
        "req_per_s": round(args.requests / wall),
        "event_loop_us_per_request": round(thread / args.requests * 1e6, 1),
        "process_us_per_request": round(process / args.requests * 1e6, 1),
    }
    if args.stream:
        result["process_us_per_piece"] = round(process / pieces * 1e6, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true", help="SSE streams of 50 events")
    parser.add_argument("--pace-ms", type=int, default=0, help="between a stream's events")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the requests")
    parser.add_argument("--log-level", default="INFO", help="the proxy's LOG_LEVEL (INFO)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmp-inprocess-") as folder:
        home = Path(folder)
        (home / "env").write_text("")
        (home / "data").mkdir()
        key = "sk-" + secrets.token_hex(32)
        write_key_file(home / "data" / "apikeys.json", key)
        port = free_port()
        upstream = Child(
            "upstream",
            [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)],
            home / "upstream.log",
        )
        try:
            upstream.wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=30)
            # The proxy's log lines go to a file, as supervisord takes them from a pipe.
            with (home / "proxy.log").open("w") as log, contextlib.redirect_stdout(log):
                result = uvloop.run(measure(home, port, key, args))
        finally:
            upstream.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
