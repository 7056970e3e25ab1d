"""Both clients against real servers of several kinds: bodies exact, streams as they come,
kept-alive connections reused where the server keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.proxy.conformance.conftest import call, drive, endpoint
from tests.proxy.conformance.servers import server_of

KINDS = ["gunicorn", "uvicorn", "hypercorn", "node", "nginx", "http.server"]


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    with server_of(request.param, tmp_path_factory.mktemp(request.param)) as url:
        yield request.param, url


def test_requests_and_streams_against_real_servers(kind, server):
    name, url = server

    async def scenario(client):
        results = []
        for method, body in (("POST", b'{"a": 1}'), ("GET", b""), ("POST", b"x" * 100_000)):
            results.append(await call(client, url, method, body=body))
        answer = await client.request(endpoint(url), "GET", b"/stream", [], b"")
        chunks = [chunk async for chunk in answer.chunks()]
        answer.release()
        return results, answer.status, b"".join(chunks)

    results, status, stream = drive(kind, scenario)
    if name == "nginx":  # its `return` answers every method with the same text
        assert [(s, b) for s, _, b in results] == [(200, b"nginx")] * 3
        assert (status, stream) == (200, b"data: 0\n\n")
        return
    assert [(s, b) for s, _, b in results] == [
        (200, b'{"a": 1}'),
        (200, b""),
        (200, b"x" * 100_000),
    ]
    methods = [b"POST", b"GET", b"POST"]
    assert all((b"x-method", m) in h for (_, h, _), m in zip(results, methods, strict=True))
    assert (status, stream) == (200, b"".join(f"data: {i}\n\n".encode() for i in range(5)))


def test_node_trailers_stay_out_of_the_headers(kind, tmp_path: Path):
    with server_of("node", tmp_path) as url:

        async def scenario(client):
            return await call(client, url, "GET", path=b"/trailers")

        status, headers, body = drive(kind, scenario)
    assert (status, body) == (200, b"body")
    assert b"x-checksum" not in [name for name, _ in headers]
