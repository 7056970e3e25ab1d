"""Hostile bodies and ids on the admin API, through nginx: deeply nested and oversized JSON,
path traversal in ids. Every answer is a 4xx in the route family's shape, and nothing on disk
changes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import raw_request
from tests.stack.conftest import Stack

LIMIT = 1024 * 1024  # PAYLOAD_LIMIT's default, which the stack keeps

NESTED = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"username": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
]

# (path, the shape of its errors): {"success": false, "message"} or {"error"}.
BODY_ROUTES = [
    ("/api/keys", "failure"),
    ("/nginx/config/update", "failure"),
    ("/nginx/config/write-default", "failure"),
    ("/nginx/certificates/obtain", "failure"),
    ("/auth/login", "error"),
    ("/auth/token", "error"),
]


def _shape(document: object, family: str) -> bool:
    if not isinstance(document, dict):
        return False
    if family == "failure":
        return document.get("success") is False and isinstance(document.get("message"), str)
    return set(document) == {"error"} and isinstance(document["error"], str)


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (folder / "apikeys.json", folder / "site.json")
        if p.exists()
    }


@pytest.mark.parametrize(("path", "family"), BODY_ROUTES)
@pytest.mark.parametrize("body", NESTED, ids=["array", "object", "field"])
def test_deeply_nested_json_is_a_400_in_the_routes_shape(
    stack: Stack, admin: httpx.Client, path: str, family: str, body: bytes
):
    before = _fingerprint(stack.data)
    r = admin.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert _shape(r.json(), family), r.text[:300]
    assert _fingerprint(stack.data) == before


@pytest.mark.parametrize(("path", "family"), BODY_ROUTES)
def test_oversized_bodies_declared_or_chunked_are_413_json(
    stack: Stack, admin: httpx.Client, path: str, family: str
):
    before = _fingerprint(stack.data)
    big = json.dumps({"username": "a" * (LIMIT + 10), "config": "b"}).encode()
    declared = admin.post(path, content=big, headers={"content-type": "application/json"})
    chunked = admin.post(path, content=iter([big[:1000], big[1000:]]))  # no Content-Length
    for r in (declared, chunked):
        assert r.status_code == 413, (r.status_code, r.text[:300])
        assert r.headers["content-type"] == "application/json"
        assert "larger than" in r.json()["error"]
    assert _fingerprint(stack.data) == before


def test_large_but_allowed_values_are_refused_by_validation_not_by_a_crash(
    stack: Stack, admin: httpx.Client
):
    for fields in (
        {"username": "a" * (LIMIT // 2)},
        {"username": ["admin"] * 10_000},
        {"username": {"$ne": None}},
        {"username": 1e308},
        {"username": "a" * 40 + "\x00"},
        {"username": "../../etc"},
        {"username": "\u202eadmin"},
    ):
        r = admin.post("/api/keys", json=fields)
        assert r.status_code == 400, (fields, r.text[:200])
        assert _shape(r.json(), "failure")
    r = admin.post("/auth/login", json={"username": "admin", "password": "p" * (LIMIT // 2)})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "Password must not exceed 128 characters"},
    )


TRAVERSALS = [
    "..%2f..%2fapikeys.json",
    "..%2F..%2Fdata%2Fapikeys.json",
    "%2e%2e%2f%2e%2e%2fapikeys.json",
    "....//....//apikeys.json",
    "..%5c..%5capikeys.json",
    "%00",
    "abc%00def",
    "%252e%252e%252fapikeys.json",
    "..%c0%af..%c0%afapikeys.json",
    "*",
    "%27%20OR%201%3D1--",
]


@pytest.mark.parametrize("bad_id", TRAVERSALS)
def test_path_traversal_in_ids_finds_nothing_and_changes_nothing(
    stack: Stack, admin: httpx.Client, bad_id: str
):
    before = _fingerprint(stack.data)
    keys_before = admin.get("/api/keys").json()["keys"]
    for method, path in (
        ("DELETE", f"/api/keys/{bad_id}"),
        ("GET", f"/api/keys/validate/{bad_id}"),
        ("GET", f"/api/analytics/{bad_id}"),
        ("GET", f"/api/analytics/{bad_id}/csv"),
        ("GET", f"/api/analytics/summary?keyId={bad_id}"),
    ):
        # Raw, so that the id arrives exactly as written (no client re-encoding).
        cookie = "; ".join(f"{k}={v}" for k, v in admin.cookies.items())
        r = raw_request(
            stack.port,
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\n"
            f"Cookie: {cookie}\r\nConnection: close\r\n\r\n".encode(),
        )
        assert r.status in (400, 404), (method, path, r.status, r.body[:300])
        if b"<center>nginx</center>" not in r.body:  # nginx's own 400 for a broken URI
            assert _shape(json.loads(r.body), "failure"), (path, r.body[:300])
    assert _fingerprint(stack.data) == before
    assert admin.get("/api/keys").json()["keys"] == keys_before


def test_nginx_config_get_reads_only_its_own_file(stack: Stack, admin: httpx.Client):
    # No parameter, body or header chooses the file it reads.
    own = admin.get("/nginx/config/get").json()["config"]
    for params in ({"path": "/etc/passwd"}, {"file": "../data/apikeys.json"}):
        r = admin.get("/nginx/config/get", params=params)
        assert r.json()["config"] == own
    assert "root:" not in own and '"keys"' not in own
