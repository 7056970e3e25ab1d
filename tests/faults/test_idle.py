"""Many idle connections and a slowloris attack on nginx do not starve other clients, and leave
nothing behind once they are gone."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import httpx

from tests.conftest import eventually
from tests.faults.measure import descendants, label, open_fds
from tests.stack.conftest import Stack

IDLE = 1500  # connections that never send a byte
LORIS = 200  # connections that send their headers a byte at a time, forever
SLOW_BODIES = 50  # requests with a good key whose body trickles in, reaching the proxy
SECONDS = 5.0


def nginx_workers(stack: Stack) -> list[int]:
    assert stack.process is not None
    return [p for p in descendants(stack.process.pid) if "nginx: worker" in label(p)]


def connect(stack: Stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
    sock.setblocking(False)
    return sock


def test_idle_connections_and_slowloris_do_not_starve_others(load_stack, load_key):
    stack = load_stack
    workers = nginx_workers(stack)
    fds_before = sum(open_fds(p) for p in workers)
    body = json.dumps({"model": "model-a", "messages": []}).encode()
    loris_head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: "
    slow_head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + load_key.key.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    socks: list[socket.socket] = []
    latencies: list[float] = []
    try:
        socks += [connect(stack) for _ in range(IDLE)]
        lorises = [connect(stack) for _ in range(LORIS)]
        slow = [connect(stack) for _ in range(SLOW_BODIES)]
        socks += lorises + slow
        for sock in slow:
            sock.send(slow_head)
        with httpx.Client(
            base_url=stack.url,
            headers={"Authorization": f"Bearer {load_key.key}"},
            timeout=5,
        ) as client:
            deadline = time.monotonic() + SECONDS
            step = 0
            while time.monotonic() < deadline:
                for sock in lorises:
                    sock.send(loris_head[step : step + 1] if step < len(loris_head) else b"a")
                for sock in slow:
                    if step < len(body) - 1:  # never the last byte
                        sock.send(body[step : step + 1])
                step += 1
                t0 = time.monotonic()
                r = client.post("/v1/chat/completions", json={"model": "model-a", "messages": []})
                latencies.append(time.monotonic() - t0)
                assert r.status_code == 200, r.text
                # A new connection, not only a kept-alive one, is accepted as quickly.
                t0 = time.monotonic()
                assert httpx.get(stack.url + "/healthz", timeout=5).status_code == 200
                latencies.append(time.monotonic() - t0)
                time.sleep(0.05)
        held = sum(open_fds(p) for p in workers) - fds_before
        assert held >= IDLE, f"nginx held only {held} more descriptors"
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
    assert len(latencies) > 20
    # Served, not queued behind the held connections: a request nginx could not take would wait
    # out the client's 5 s timeout; a normal one takes well under a second on a loaded machine.
    assert max(latencies) < 3.0, sorted(latencies)[-5:]
    # Everything they held is given back.
    eventually(lambda: sum(open_fds(p) for p in workers) <= fds_before + 8)
