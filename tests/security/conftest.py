"""Fixtures of the security tests: the whole stack (tests/stack's fixtures, with a stack of this
folder's own) and a raw HTTP/1.1 client, for requests no well-behaved client library would
send."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.stack.conftest import Stack, admin, fleet, key  # noqa: F401  (fixtures, re-exported)

RAW_TIMEOUT = 5.0


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, fleet: Any) -> Iterator[Stack]:  # noqa: F811
    """tests/stack's stack, for this folder only: stopped when its tests are done, so that a
    full run never keeps two stacks running (and changes made here stay here)."""
    running = Stack(tmp_path_factory.mktemp("security"), list(fleet.values())).start()
    yield running
    assert running.stop() == 0, running.output()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    raw: bytes  # everything the server sent on the connection, further answers included


def raw_request(port: int, data: bytes, source: str = "127.0.0.1") -> RawResponse:
    """Send `data` as is on a new connection, read until the server closes it or goes quiet
    (bounded by RAW_TIMEOUT), and parse the first answer."""
    received = b""
    deadline = time.monotonic() + RAW_TIMEOUT
    with socket.create_connection(
        ("127.0.0.1", port), timeout=RAW_TIMEOUT, source_address=(source, 0)
    ) as sock:
        sock.sendall(data)
        sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if received:
                    break  # answered and kept the connection open: nothing more is coming
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return parse_response(received)


def parse_response(received: bytes) -> RawResponse:
    head, _, rest = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"no HTTP answer: {received[:200]!r}"
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = rest[: int(headers["content-length"])]
    elif headers.get("transfer-encoding") == "chunked":
        body = _dechunk(rest)
    else:
        body = rest
    return RawResponse(status, headers, body, received)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def forwarded(upstreams: dict[str, Any]) -> dict[str, int]:
    """How many requests each fake upstream got, besides the proxy's own model refreshes."""
    return {
        name: sum(1 for s in upstream.seen if s.path != "/v1/models")
        for name, upstream in upstreams.items()
    }


def count_answers(raw: bytes) -> int:
    """How many HTTP answers a connection carried (a smuggled request shows as a second one)."""
    return raw.count(b"HTTP/1.1 ") + raw.count(b"HTTP/1.0 ")
