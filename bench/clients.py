"""`python -m bench.clients`: the CPU each upstream client spends per request, alone.

Starts the mock upstream in a process of its own, then sends it REQUESTS chat completions one
after another on a kept-alive connection with each client (`own` and `aiohttp`, interleaved,
ROUNDS times) and prints the CPU time this process spent per request (the upstream's is not
counted). Process CPU time, not wall time: it moves much less with the machine's other work.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import uvloop

from bench.targets import CHAT_BODY
from services.proxy.aiohttp_client import AiohttpClient
from services.proxy.pool import Pool
from services.proxy.upstream import Endpoint, UpstreamClient

REQUESTS = 3000
ROUNDS = 3


async def _per_request(kind: str, port: int) -> float:
    client: UpstreamClient = (
        Pool(5.0, 60.0) if kind == "own" else AiohttpClient(5.0, 60.0, keepalive=60.0)
    )
    where = Endpoint("http", "127.0.0.1", port, keepalive=60.0)
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer k")]
    body = CHAT_BODY.encode()
    try:
        for _ in range(100):  # warm up: connection made, code paths hot
            answer = await client.request(where, "POST", b"/v1/chat/completions", headers, body)
            [chunk async for chunk in answer.chunks()]
            answer.release()
        started = time.process_time()
        for _ in range(REQUESTS):
            answer = await client.request(where, "POST", b"/v1/chat/completions", headers, body)
            [chunk async for chunk in answer.chunks()]
            answer.release()
        return (time.process_time() - started) / REQUESTS * 1e6
    finally:
        await client.close()


def main() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(port)], stdout=subprocess.PIPE
    )
    try:
        assert upstream.stdout is not None
        upstream.stdout.readline()  # listening
        results: dict[str, list[float]] = {"own": [], "aiohttp": []}
        for _ in range(ROUNDS):
            for kind in results:
                results[kind].append(uvloop.run(_per_request(kind, port)))
        for kind, values in results.items():
            shown = ", ".join(f"{v:.0f}" for v in values)
            print(f"{kind:8} CPU per request (us): {shown}")
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    main()
