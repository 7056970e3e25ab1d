"""Paths that try to leave `/v1/`: to reach admin routes through nginx, or an upstream's own
routes outside its `/v1` (Ollama's `/api/delete`, say) through the proxy.

nginx decides on the normalized path (dot segments resolved, `%2e` and `%2f` decoded, slashes
merged), so every trick that normalizes to an admin path meets the admin CIDR check; the proxy
refuses what is left (backslashes, `..;`) before any upstream sees it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from services.proxy import routing
from shared.apikeys import ApiKey
from tests.security.conftest import forwarded, raw_request
from tests.stack.conftest import Stack

OUTSIDER = "127.0.0.2"  # stands for a public address: outside the CIDR groups set below

ESCAPES = [
    b"/v1/../api/keys",
    b"/v1/%2e%2e/api/keys",
    b"/v1/%2E%2E/api/keys",
    b"/v1/.%2e/api/keys",
    b"/v1/..%2fapi/keys",
    b"/v1/%2e%2e%2fapi%2fkeys",
    b"/v1%2f..%2fapi/keys",
    b"/v1/./../api/keys",
    b"/v1/models/..%2f..%2fapi/keys",
    b"/v1//../api/keys",
    b"//api/keys",
    b"///api//keys",
    b"/%61pi/keys",
    b"/API/keys",
    b"/api/keys/",
    b"/v1;/../api/keys",
    b"/v1/../nginx/config/get",
    b"/v1/../auth/token",
    b"/v1/../metrics",
    b"/v1/../healthz",
    b"/v1/../admin/",
    b"http://127.0.0.1/api/keys",
    b"http://evil.example/v1/../api/keys",
]

UPSTREAM_ESCAPES = [
    b"/v1/..%5capi/delete",
    b"/v1/..\\api/delete",
    b"/v1/..;/api/delete",
    b"/v1/.;/../api/delete",
    b"/v1/models/%2e%2e",
]


def _get(stack: Stack, target: bytes, key: ApiKey | None = None, source: str = "127.0.0.1"):
    auth = b"Authorization: Bearer " + key.key.encode() + b"\r\n" if key else b""
    request = b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n" + auth + b"Connection: close\r\n\r\n"
    return raw_request(stack.port, request, source=source)


@pytest.fixture(scope="module")
def restricted(stack: Stack) -> Iterator[Stack]:
    """The stack with admin paths allowed from 127.0.0.1 only (nginx's running configuration,
    with the private ranges narrowed, applied as a custom configuration); restored after."""
    with stack.admin() as admin:
        original = admin.get("/nginx/config/get").json()["config"]
        narrowed = re.sub(r"(\n\s*allow [^;]+;)+", "\n        allow 127.0.0.1/32;", original)
        assert narrowed.count("allow 127.0.0.1/32;") >= 1 and "10.0.0.0/8" not in narrowed
        r = admin.post("/nginx/config/update", json={"config": narrowed})
        assert r.status_code == 200, r.text
    try:
        yield stack
    finally:
        with stack.admin() as admin:
            r = admin.post("/nginx/config/update", json={"config": original})
            assert r.status_code == 200, r.text


@pytest.mark.parametrize("target", ESCAPES, ids=lambda t: t.decode())
def test_admin_paths_stay_closed_to_outsiders_whatever_the_spelling(
    restricted: Stack, key: ApiKey, fleet, target: bytes
):
    seen_before = forwarded(fleet)
    r = _get(restricted, target, key, source=OUTSIDER)
    # nginx's own refusal (403), or a 400/404 for what it cannot place: never the api's answer.
    assert r.status in (400, 403, 404), (r.status, r.body)
    assert b"<center>nginx</center>" in r.body, r.body
    assert forwarded(fleet) == seen_before, "reached an upstream"


@pytest.mark.parametrize("target", ESCAPES[:6], ids=lambda t: t.decode())
def test_the_same_spellings_from_an_admin_network_need_admin_credentials(
    restricted: Stack, key: ApiKey, target: bytes
):
    # An API key is not an admin credential, in any spelling of an admin path.
    r = _get(restricted, target, key)
    assert r.status in (401, 404), (r.status, r.body)
    if r.status == 401:
        assert json.loads(r.body) == {"error": "Invalid token"}


@pytest.mark.parametrize("target", UPSTREAM_ESCAPES, ids=lambda t: t.decode())
def test_proxy_refuses_paths_that_leave_v1_before_any_upstream_sees_them(
    stack: Stack, key: ApiKey, fleet, target: bytes
):
    seen_before = forwarded(fleet)
    r = _get(stack, target, key)
    assert r.status in (400, 404), (r.status, r.body)
    if b"<center>nginx</center>" not in r.body:
        assert json.loads(r.body)["error"]["code"] == "unknown_url"
    assert forwarded(fleet) == seen_before, "reached an upstream"


def test_other_keys_analytics_are_out_of_reach_with_an_api_key(stack: Stack, key: ApiKey):
    with stack.admin() as admin:
        other = admin.post("/api/keys", json={"username": "victim"}).json()["key"]
    try:
        auth = {"Authorization": f"Bearer {key.key}"}
        for path in (
            f"/api/analytics/{other['id']}",
            f"/api/analytics/{other['key']}",
            f"/api/analytics/{other['id']}/csv",
            f"/api/analytics/summary?keyId={other['id']}",
            f"/api/keys/validate/{other['key']}",
            "/api/keys",
        ):
            r = httpx.get(stack.url + path, headers=auth, timeout=10)
            assert (r.status_code, r.json()) == (401, {"error": "Invalid token"}), path
            # The same key in the other headers the proxy accepts is no admin credential either.
            r = httpx.get(stack.url + path, headers={"x-api-key": key.key}, timeout=10)
            assert r.status_code == 401, path
        # Nothing under /v1 serves analytics: the proxy forwards it, the upstream has no such
        # route, and the answer holds nothing of the other key.
        r = httpx.get(stack.url + f"/v1/analytics/{other['id']}", headers=auth, timeout=10)
        assert other["id"] not in r.text.replace(f"/v1/analytics/{other['id']}", "")
        assert other["key"] not in r.text
    finally:
        with stack.admin() as admin:
            admin.delete(f"/api/keys/{other['id']}")


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/v1", True),
        ("/v1/chat/completions", True),
        ("/v1/models/llama3.1:8b", True),
        ("/v1/models/meta-llama/Llama-3.1-8B", True),
        ("/v1/files/a..b", True),
        ("/v1/models/.hidden", True),
        ("/v1/../api/delete", False),
        ("/v1/..", False),
        ("/v1/.", False),
        ("/v1/./models", False),
        ("/v1/..;/api/delete", False),
        ("/v1/.;x/../api", False),
        ("/v1/..\\api\\delete", False),
        ("/v1beta/models", False),
        ("/v2/models", False),
        ("/", False),
    ],
)
def test_inside_v1(path: str, inside: bool):
    assert routing.inside_v1(path) is inside
