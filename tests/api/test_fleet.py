"""`/api/fleet`: upstreams and aliases managed by the admin (services/api/routes/fleet.py)."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api import sessions
from services.api.app import create_app
from tests.conftest import free_port, make_settings
from tests.upstream import FakeUpstream

SECRET = "sk-seeded-secret-0123456789"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    running = FakeUpstream("a", ["llama-a", "qwen-a"], key=SECRET).start()
    yield running
    running.stop()


@pytest.fixture
def api(tmp_path: Path, upstream: FakeUpstream) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path,
        log_level="ERROR",
        jwt_secret="k" * 40,
        target_urls=f"{upstream.url}|{SECRET}|concurrency=2",
    )
    token = sessions.for_settings(settings).issue("admin")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        client.fleet_file = settings.fleet_file  # type: ignore[attr-defined]
        yield client


def test_target_urls_is_listed_until_the_first_change_writes_it_down(api, upstream):
    answer = api.get("/api/fleet")
    assert answer.status_code == 200
    body = answer.json()
    assert body["source"] == "TARGET_URLS"
    [seeded] = body["upstreams"]
    assert seeded["id"] == "target-1" and seeded["url"] == upstream.url + "/v1"
    assert seeded["concurrency"] == 2 and seeded["keyHint"] == "…6789"
    assert SECRET not in answer.text and "key" not in seeded
    assert not api.fleet_file.exists()

    added = api.post(
        "/api/fleet/upstreams", json={"url": "http://b:8000", "key": "sk-other-key-9999"}
    )
    assert added.status_code == 200, added.text
    assert added.json()["upstream"]["url"] == "http://b:8000/v1"
    assert "sk-other-key-9999" not in added.text
    written = json.loads(api.fleet_file.read_text())
    assert [u["key"] for u in written["upstreams"]] == [SECRET, "sk-other-key-9999"]
    assert stat.S_IMODE(api.fleet_file.stat().st_mode) == 0o600
    assert api.get("/api/fleet").json()["source"] == "file"


def test_a_change_keeps_the_key_unless_it_names_one(api):
    api.patch("/api/fleet/upstreams/target-1", json={"name": "gpu box"})
    [entry] = json.loads(api.fleet_file.read_text())["upstreams"]
    assert entry["name"] == "gpu box" and entry["key"] == SECRET and entry["concurrency"] == 2
    answer = api.patch(
        "/api/fleet/upstreams/target-1", json={"auth": "basic", "key": "me:pw", "concurrency": None}
    )
    assert answer.json()["upstream"]["keyHint"] == "me:…"
    [entry] = json.loads(api.fleet_file.read_text())["upstreams"]
    assert entry["auth"] == "basic" and entry["key"] == "me:pw" and "concurrency" not in entry


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/api/fleet/upstreams", {"url": "ftp://x"}, 400, "url: not an http(s) URL"),
        ("post", "/api/fleet/upstreams", {"url": "http://x", "id": "mine"}, 400, "id: Extra"),
        (
            "post",
            "/api/fleet/upstreams",
            {"url": "http://x", "caFile": "/etc/shadow"},
            400,
            "caFile",
        ),
        ("post", "/api/fleet/upstreams", {"url": "http://x", "key": "a\nb"}, 400, "key"),
        ("post", "/api/fleet/upstreams", {}, 400, "url: Field required"),
        ("patch", "/api/fleet/upstreams/target-1", {"concurrency": -1}, 400, "concurrency"),
        ("patch", "/api/fleet/upstreams/target-1", {"certFile": "/x"}, 400, "certFile"),
        ("patch", "/api/fleet/upstreams/target-1", {}, 400, "Nothing to change"),
        ("patch", "/api/fleet/upstreams/nope", {"name": "x"}, 404, "Upstream not found"),
        ("delete", "/api/fleet/upstreams/nope", None, 404, "Upstream not found"),
        ("delete", "/api/fleet/aliases/nope", None, 404, "Alias not found"),
        (
            "put",
            "/api/fleet/aliases/chat",
            {"deployments": [{"upstream": "nope", "model": "m"}]},
            400,
            "does not exist",
        ),
        ("put", "/api/fleet/aliases/chat", {"deployments": []}, 400, "deployments"),
        (
            "put",
            "/api/fleet/aliases/chat",
            {"deployments": [{"upstream": "target-1", "model": "m"}], "strategy": "fastest"},
            400,
            "strategy",
        ),
        (
            "put",
            "/api/fleet/aliases/chat",
            {"deployments": [{"upstream": "target-1", "model": "m"}], "fallback": "nope"},
            400,
            "falls back to 'nope', which is no alias",
        ),
        (
            "put",
            "/api/fleet/aliases/a%20b",
            {"deployments": [{"upstream": "target-1", "model": "m"}]},
            400,
            "name",
        ),
    ],
)
def test_bad_changes_are_refused_in_the_original_shape_naming_the_field(
    api, method, path, body, status, message
):
    answer = api.request(method.upper(), path, json=body)
    assert answer.status_code == status
    assert answer.json()["success"] is False
    assert message in answer.json()["message"]
    assert not api.fleet_file.exists()  # nothing written


def test_an_upstream_takes_request_and_token_limits(api):
    answer = api.patch(
        "/api/fleet/upstreams/target-1", json={"requestsPerMinute": 600, "tokensPerMinute": 9000}
    )
    assert answer.status_code == 200, answer.text
    shown = answer.json()["upstream"]
    assert (shown["requestsPerMinute"], shown["tokensPerMinute"]) == (600, 9000)
    [entry] = json.loads(api.fleet_file.read_text())["upstreams"]
    assert (entry["requestsPerMinute"], entry["tokensPerMinute"]) == (600, 9000)
    for bad in (0, -1, "60", 1.5):
        refused = api.patch("/api/fleet/upstreams/target-1", json={"requestsPerMinute": bad})
        assert refused.status_code == 400 and "requestsPerMinute" in refused.json()["message"]
    api.patch("/api/fleet/upstreams/target-1", json={"tokensPerMinute": None})  # no limit
    [entry] = json.loads(api.fleet_file.read_text())["upstreams"]
    assert "tokensPerMinute" not in entry and entry["requestsPerMinute"] == 600


def test_aliases_are_saved_and_an_upstream_in_use_is_not_removed(api):
    deployments = [
        {"upstream": "target-1", "model": "llama-a", "weight": 3},
        {"upstream": "target-1", "model": "qwen-a", "priority": 1},
    ]
    saved = api.put("/api/fleet/aliases/chat", json={"deployments": deployments})
    assert saved.status_code == 200, saved.text
    assert saved.json()["alias"]["strategy"] == "weighted"
    busy = {"deployments": deployments, "strategy": "least-busy"}
    assert api.put("/api/fleet/aliases/chat", json=busy).json()["alias"]["strategy"] == "least-busy"
    assert api.get("/api/fleet").json()["aliases"][0]["strategy"] == "least-busy"
    assert json.loads(api.fleet_file.read_text())["aliases"][0]["strategy"] == "least-busy"
    long = {"deployments": deployments[:1], "fallback": "chat"}
    assert api.put("/api/fleet/aliases/long", json=long).json()["alias"]["fallback"] == "chat"
    loop = {"deployments": deployments, "fallback": "long"}
    refused = api.put("/api/fleet/aliases/chat", json=loop)
    assert refused.status_code == 400 and "falls back to itself" in refused.json()["message"]
    refused = api.delete("/api/fleet/aliases/chat")
    assert refused.status_code == 400 and "'long' falls back" in refused.json()["message"]
    assert api.delete("/api/fleet/aliases/long").status_code == 200
    assert saved.json()["alias"]["deployments"][1] == {
        "upstream": "target-1",
        "model": "qwen-a",
        "weight": 1,
        "priority": 1,
    }
    refused = api.delete("/api/fleet/upstreams/target-1")
    assert refused.status_code == 400 and "chat" in refused.json()["message"]
    assert api.delete("/api/fleet/aliases/chat").status_code == 200
    assert api.delete("/api/fleet/upstreams/target-1").status_code == 200
    assert json.loads(api.fleet_file.read_text()) == {"version": 1, "upstreams": [], "aliases": []}


def test_the_test_lists_the_models_and_times_a_tiny_request(api, upstream):
    answer = api.post("/api/fleet/upstreams/target-1/test")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] is True
    assert body["models"]["models"] == ["llama-a", "qwen-a"]
    assert body["request"]["model"] == "llama-a" and body["request"]["status"] == 200
    assert body["request"]["ms"] > 0
    # Reached as the proxy reaches it: with its own key.
    asked = [s for s in upstream.seen if s.path == "/v1/chat/completions"][-1]
    assert asked.headers["Authorization"] == f"Bearer {SECRET}"
    assert json.loads(asked.body)["max_tokens"] == 1
    chosen = api.post("/api/fleet/upstreams/target-1/test", params={"model": "qwen-a"})
    assert chosen.json()["request"]["model"] == "qwen-a"


def test_the_test_of_an_upstream_that_is_down_says_why(api):
    down = api.post("/api/fleet/upstreams", json={"url": f"http://127.0.0.1:{free_port()}"})
    upstream_id = down.json()["upstream"]["id"]
    body = api.post(f"/api/fleet/upstreams/{upstream_id}/test").json()
    assert body["ok"] is False and body["request"] is None
    assert body["models"]["ok"] is False and "Connect" in body["models"]["error"]


def test_every_route_needs_the_admin(api):
    anonymous = TestClient(api.app)
    for method, path in [
        ("GET", "/api/fleet"),
        ("POST", "/api/fleet/upstreams"),
        ("PATCH", "/api/fleet/upstreams/target-1"),
        ("DELETE", "/api/fleet/upstreams/target-1"),
        ("POST", "/api/fleet/upstreams/target-1/test"),
        ("PUT", "/api/fleet/aliases/chat"),
        ("DELETE", "/api/fleet/aliases/chat"),
    ]:
        assert anonymous.request(method, path, json={}).status_code == 401, path


def test_a_proxy_password_is_masked_and_kept(api):
    proxy = "http://me:proxy-secret@egress:3128"
    answer = api.post("/api/fleet/upstreams", json={"url": "http://b", "proxy": proxy})
    assert answer.json()["upstream"]["proxy"] == "http://me:***@egress:3128"
    assert "proxy-secret" not in api.get("/api/fleet").text
    upstream_id = answer.json()["upstream"]["id"]
    api.patch(f"/api/fleet/upstreams/{upstream_id}", json={"name": "renamed"})
    saved = json.loads(api.fleet_file.read_text())["upstreams"][1]
    assert saved["proxy"] == proxy and saved["name"] == "renamed"
