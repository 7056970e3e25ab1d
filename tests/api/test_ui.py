"""`/admin`: the built app, answered to GET and HEAD, precompressed when the browser takes it."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.routes.ui import accepted
from tests.conftest import make_settings

SCRIPT = b"export const answer = 42;\n" * 200


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html><title>llmp</title>")
    (folder / "assets" / "app-1234.js").write_bytes(SCRIPT)
    (folder / "assets" / "app-1234.js.gz").write_bytes(gzip.compress(SCRIPT))
    (folder / "assets" / "brotli-only.js").write_bytes(SCRIPT)
    (folder / "assets" / "brotli-only.js.br").write_bytes(b"not gzip")
    return folder


@pytest.fixture
def client(tmp_path: Path, dist: Path) -> TestClient:
    return TestClient(create_app(make_settings(tmp_path, ui_dir=dist)))


def test_head_answers_like_get_without_a_body(client: TestClient) -> None:
    for path in ("/admin/", "/admin/keys", "/admin/assets/app-1234.js"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == get.headers["content-length"]
    assert client.head("/admin", follow_redirects=False).status_code == 308


def test_assets_are_sent_gzipped_to_a_browser_that_takes_gzip(client: TestClient) -> None:
    r = client.get("/admin/assets/app-1234.js", headers={"Accept-Encoding": "gzip, deflate"})
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["content-type"].startswith("text/javascript")
    assert int(r.headers["content-length"]) < len(SCRIPT) // 10
    assert r.content == SCRIPT  # httpx decodes it
    assert "immutable" in r.headers["cache-control"]


@pytest.mark.parametrize("accept", ["identity", "", "br;q=0, deflate"])
def test_assets_are_sent_plain_to_a_client_that_takes_neither(
    client: TestClient, accept: str
) -> None:
    r = client.get("/admin/assets/app-1234.js", headers={"Accept-Encoding": accept})
    assert "content-encoding" not in r.headers
    assert r.headers["vary"] == "Accept-Encoding"  # once
    assert r.content == SCRIPT


def test_accepted_codings_honour_q_zero() -> None:
    assert accepted("gzip, deflate, br") == {"gzip", "deflate", "br"}
    assert accepted("br;q=0.5, gzip;q=0, *;q=0.1") == {"br", "*"}
    assert accepted("GZIP ; q=1.0, br;q=bad") == {"gzip"}
    assert accepted("") == set()


def test_brotli_when_taken_and_present(client: TestClient) -> None:
    r = client.get("/admin/assets/brotli-only.js", headers={"Accept-Encoding": "gzip, br"})
    assert r.headers["content-encoding"] == "br"
    assert r.headers["content-length"] == str(len(b"not gzip"))
    other = client.get("/admin/assets/brotli-only.js", headers={"Accept-Encoding": "gzip"})
    assert other.headers.get("content-encoding") != "br" and other.content == SCRIPT


def test_compressed_files_are_not_pages_of_their_own(client: TestClient) -> None:
    r = client.get("/admin/assets/app-1234.js.gz", headers={"Accept-Encoding": "identity"})
    assert r.headers["content-type"].startswith("text/html")  # the app, not the .gz file
