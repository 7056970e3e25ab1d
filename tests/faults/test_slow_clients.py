"""Clients that read a stream very slowly, through nginx, from an upstream that writes as fast as
it may: back-pressure must reach the upstream, so each slow client holds no more than a bounded
buffer anywhere on the way, and other clients are served as usual."""

from __future__ import annotations

import json
import socket
import time

import httpx

from tests.conftest import eventually
from tests.faults.measure import descendants, label, rss
from tests.stack.conftest import Stack

SLOW_CLIENTS = 6
READ_SECONDS = 4.0


def open_slow_stream(stack: Stack, key: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(5)
    sock.connect(("127.0.0.1", stack.port))
    body = json.dumps({"model": "firehose", "messages": [], "stream": True}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    return sock


def programs(stack: Stack) -> dict[int, str]:
    assert stack.process is not None
    return {
        pid: label(pid)
        for pid in descendants(stack.process.pid)
        if "nginx: worker" in label(pid) or " -B" in label(pid)  # nginx and proxy workers
    }


def test_slow_readers_hold_a_bounded_buffer_each(load_stack, load_fleet, load_key):
    stack, (_, hose) = load_stack, load_fleet
    watched = programs(stack)
    before = {pid: rss(pid) for pid in watched}
    written_before = hose.written
    socks = [open_slow_stream(stack, load_key.key) for _ in range(SLOW_CLIENTS)]
    try:
        read = 0
        deadline = time.monotonic() + READ_SECONDS
        written_at: list[int] = []
        while time.monotonic() < deadline:
            for sock in socks:
                read += len(sock.recv(512))
            time.sleep(0.05)
            written_at.append(hose.written - written_before)
        # Someone else meanwhile: served at once.
        t0 = time.monotonic()
        r = httpx.post(
            stack.url + "/v1/chat/completions",
            json={"model": "model-a", "messages": []},
            headers={"Authorization": f"Bearer {load_key.key}"},
            timeout=5,
        )
        # Served, not held behind the slow readers (the client would time out after 5 s).
        assert r.status_code == 200 and time.monotonic() - t0 < 3.0
        grown = {f"{watched[pid]} {pid}": rss(pid) - before[pid] for pid in watched}
    finally:
        for sock in socks:
            sock.close()
    # The upstream was held back: what it wrote in the last second is about what was read,
    # not the gigabytes a loopback socket takes in a second.
    written = written_at[-1]
    last_second = written_at[-1] - written_at[-20]
    print(f"read {read}, written {written}, last second {last_second}, grown {grown}")
    assert last_second < 2 * 1024 * 1024, f"{last_second} bytes written in the last second"
    assert written < SLOW_CLIENTS * 24 * 1024 * 1024, f"{written} bytes written in all"
    # Kernel socket buffers hold most of what is in flight; no program holds more than a few
    # MB for all the slow clients together.
    assert all(growth < 16 * 1024 * 1024 for growth in grown.values()), grown
    assert read > 0
    # Gone clients free the upstream: every firehose stream is closed.
    eventually(lambda: hose.gone >= SLOW_CLIENTS)
