"""The admin API through nginx, against the real api service (original-behavior.md 1, 4, 5)."""

from __future__ import annotations

import concurrent.futures
import json
import stat
import time
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from shared.apikeys import read_keys
from tests.conftest import eventually
from tests.stack.conftest import ADMIN, Stack


def test_login_sets_the_cookie_and_me_knows_who(stack: Stack):
    with httpx.Client(base_url=stack.url) as client:
        assert client.get("/api/me").json() == {"error": "Authentication required"}
        r = client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        assert r.json() == {"success": True, "username": "admin"}
        cookie = r.headers["set-cookie"].lower()
        for part in ("auth_token=", "httponly", "samesite=strict", "path=/", "max-age=86400"):
            assert part in cookie
        assert "secure" not in cookie  # NODE_ENV is not production here
        assert client.get("/api/me").json() == {"username": "admin"}
        assert client.post("/auth/logout").json() == {"success": True}
        assert client.get("/api/me").status_code == 401


def test_login_errors_in_the_original_shape(stack: Stack):
    cases = [
        ({}, 400, '"username" is required, Password is required'),
        ({"username": "admin", "password": "short"}, 401, "Invalid credentials"),
        ({"username": "admin", "password": "wrong-password"}, 401, "Invalid credentials"),
        ({"username": "nobody", "password": ADMIN[1]}, 401, "Invalid credentials"),
    ]
    stack.forget_failed_logins()  # three failures below: no earlier one may count
    with httpx.Client(base_url=stack.url) as client:
        form = client.post("/auth/login", data={"username": ADMIN[0], "password": ADMIN[1]})
        assert form.status_code == 200  # urlencoded works too, as in the original
        for body, status, message in cases:
            r = client.post("/auth/login", json=body)
            assert (r.status_code, r.json()) == (status, {"error": message})
    # Loopback is one client to the throttle (LOGIN_MAX_FAILURES=3): the next test starts afresh.
    stack.forget_failed_logins()


def test_legacy_token_works_as_bearer(stack: Stack):
    token = httpx.post(
        stack.url + "/auth/token", json={"username": ADMIN[0], "password": ADMIN[1]}
    ).json()["token"]
    r = httpx.get(stack.url + "/api/keys", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["success"] is True
    bad = httpx.get(stack.url + "/api/keys", headers={"Authorization": f"Bearer {token}x"})
    assert (bad.status_code, bad.json()) == (401, {"error": "Invalid token"})


def test_throttle_engages_and_releases(stack: Stack):
    wrong = {"username": ADMIN[0], "password": "wrong-password"}
    stack.forget_failed_logins()
    with (
        stack.admin() as logged_in,
        httpx.Client(
            base_url=stack.url, transport=httpx.HTTPTransport(local_address="127.0.0.7")
        ) as client,
    ):
        statuses = [client.post("/auth/login", json=wrong).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        throttled = client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
        # Loopback is one client, whatever its address; a session already open still works.
        with httpx.Client(
            base_url=stack.url, transport=httpx.HTTPTransport(local_address="127.0.0.8")
        ) as alias:
            assert alias.post("/auth/login", json=wrong).status_code == 429
        assert logged_in.get("/api/me").status_code == 200
        stack.forget_failed_logins()  # as the window's end does (tests/api/test_throttle.py)
        ok = client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        assert ok.status_code == 200
    assert "login failed" in stack.output()


def test_key_lifecycle_and_messages(stack: Stack, admin: httpx.Client):
    r = admin.post("/api/keys", json={"username": "carol"})
    assert r.status_code == 200
    created = r.json()
    assert list(created) == ["success", "message", "key"]
    assert created["message"] == "API key created successfully"
    key = created["key"]
    assert list(key) == ["id", "username", "key", "createdAt"]
    path = stack.data / "apikeys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key["id"] in {k.id for k in read_keys(path)}
    for body, message in [
        ({"username": "carol"}, "API key already exists for this username"),
        (
            {"username": "a!"},
            "Username must contain only alphanumeric characters, "
            "Username must be at least 3 characters long",
        ),
        ({}, "Username is required"),
    ]:
        bad = admin.post("/api/keys", json=body)
        assert (bad.status_code, bad.json()) == (400, {"success": False, "message": message})
    listed = admin.get("/api/keys").json()
    assert listed["success"] and key in listed["keys"]
    valid = admin.get(f"/api/keys/validate/{key['key']}").json()
    assert valid == {"success": True, "valid": True, "username": "carol"}
    assert admin.get("/api/keys/validate/" + "0" * 64).json() == {"success": True, "valid": False}
    assert admin.get("/api/keys/validate/xyz").status_code == 400
    assert admin.delete(f"/api/keys/{key['id']}").json() == {
        "success": True,
        "message": "API key deleted successfully",
    }
    gone = admin.delete(f"/api/keys/{key['id']}")
    assert (gone.status_code, gone.json()) == (
        404,
        {"success": False, "message": "API key not found"},
    )


def test_concurrent_creations_keep_every_key(stack: Stack, admin: httpx.Client):
    before = {k.id for k in read_keys(stack.data / "apikeys.json")}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda i: admin.post("/api/keys", json={"username": f"bulk{i}"}), range(50))
        )
    assert [r.status_code for r in results] == [200] * 50
    ids = {r.json()["key"]["id"] for r in results}
    assert ids <= {k.id for k in read_keys(stack.data / "apikeys.json")}
    assert len({k.id for k in read_keys(stack.data / "apikeys.json")} - before) == 50
    for key_id in ids:
        admin.delete(f"/api/keys/{key_id}")


def serves(client: openai.OpenAI) -> bool:
    """The proxy knows the client's key (each worker picks a new key up within a second)."""
    try:
        return bool(client.models.list().data)
    except openai.AuthenticationError:
        return False


def test_key_deleted_through_the_api_is_refused_on_v1_within_a_second(
    stack: Stack, admin: httpx.Client
):
    key = admin.post("/api/keys", json={"username": "dave"}).json()["key"]
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key["key"], max_retries=0)
    eventually(lambda: serves(client), timeout=2)
    assert admin.delete(f"/api/keys/{key['id']}").status_code == 200
    deleted = time.monotonic()
    while True:
        try:
            client.models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() - deleted < 1.0
        time.sleep(0.02)


def test_a_rotated_secret_is_refused_on_v1_from_its_chosen_time_and_the_new_one_works(
    stack: Stack, admin: httpx.Client
):
    key = admin.post("/api/keys", json={"username": "erin", "name": "batch"}).json()["key"]
    until = datetime.now(UTC) + timedelta(seconds=3)
    r = admin.post(f"/api/keys/{key['id']}/rotate", json={"until": until.isoformat()})
    assert r.status_code == 200, r.text
    new = r.json()["key"]["key"]
    old_client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key["key"], max_retries=0)
    new_client = openai.OpenAI(base_url=stack.url + "/v1", api_key=new, max_retries=0)
    eventually(lambda: serves(new_client), timeout=5)
    while datetime.now(UTC) <= until:  # only what is sure is asserted: the time has passed
        time.sleep(0.05)
    for _ in range(6):  # every worker, whatever it read when
        with pytest.raises(openai.AuthenticationError) as refused:
            old_client.models.list()
        assert refused.value.body["code"] == "api_key_rotated"
        assert serves(new_client)
    assert admin.get(f"/api/keys/validate/{key['key']}").json() == {"success": True, "valid": False}


def test_a_corrupt_key_file_is_read_from_its_last_good_copy_and_kept_aside(
    stack: Stack, admin: httpx.Client
):
    path = stack.data / "apikeys.json"
    dana = admin.post("/api/keys", json={"username": "dana"}).json()["key"]
    before = admin.get("/api/keys").json()["keys"]
    path.write_text('{"keys": [ broken')
    listed = admin.get("/api/keys")
    assert (listed.status_code, listed.json()["keys"]) == (200, before)
    created = admin.post("/api/keys", json={"username": "erin"})
    assert created.status_code == 200
    assert (stack.data / "apikeys.json.broken").read_text() == '{"keys": [ broken'
    assert [k["username"] for k in admin.get("/api/keys").json()["keys"]] == [
        *(k["username"] for k in before),
        "erin",
    ]
    for key in (dana, created.json()["key"]):
        assert admin.delete(f"/api/keys/{key['id']}").status_code == 200


def test_analytics_records_summary_and_csv(stack: Stack, admin: httpx.Client):
    key = admin.post("/api/keys", json={"username": "frank"}).json()["key"]
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key["key"], max_retries=0)
    eventually(lambda: serves(client), timeout=2)
    for _ in range(3):
        client.chat.completions.create(model="model-a", messages=[])
    by_id = eventually(
        lambda: len(r := admin.get(f"/api/analytics/{key['id']}").json()["records"]) >= 4 and r
    )
    by_key = admin.get(f"/api/analytics/{key['key']}").json()["records"]
    assert by_key == by_id
    chats = [r for r in by_id if r["path"] == "/v1/chat/completions"]
    assert len(chats) == 3
    assert all(r["endTime"] >= r["startTime"] and r["status"] == 200 for r in chats)
    assert chats[0]["promptTokens"] == 7 and chats[0]["model"] == "model-a"
    now = int(time.time() * 1000)
    start_only = admin.get(f"/api/analytics/{key['id']}", params={"startDate": now - 60_000})
    assert len(start_only.json()["records"]) == len(by_id)
    future = admin.get(f"/api/analytics/{key['id']}", params={"startDate": now + 3_600_000})
    assert future.json()["records"] == []
    errors = {
        (now - 10, now - 20): "Start date must be before end date",
        ("abc", None): "Invalid start date: Timestamp must be a number",
        (None, "0"): "Invalid end date: Timestamp must be positive, "
        "Timestamp is too old (more than 1 year ago)",
        (now + 400 * 86400_000, None): "Invalid start date: Timestamp is too far in the "
        "future (more than 1 year from now)",
    }
    for (start, end), message in errors.items():
        params = {k: str(v) for k, v in (("startDate", start), ("endDate", end)) if v is not None}
        r = admin.get(f"/api/analytics/{key['id']}", params=params)
        assert (r.status_code, r.json()) == (400, {"success": False, "message": message})
    bad = admin.get("/api/analytics/not-a-key")
    assert bad.json() == {"success": False, "message": "Invalid API key format"}
    summary = admin.get("/api/analytics/summary", params={"keyId": key["id"]}).json()
    assert summary["totals"]["requests"] == len(by_id)
    assert summary["totals"]["promptTokens"] == 21
    assert sum(p["requests"] for p in summary["series"]) == len(by_id)
    assert [k["username"] for k in summary["keys"]] == ["frank"]
    everyone = admin.get("/api/analytics/summary", params={"bucket": "day"}).json()
    assert everyone["totals"]["requests"] >= len(by_id)
    csv = admin.get(f"/api/analytics/{key['id']}/csv")
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].startswith("startTime,endTime,status,model")
    assert len(lines) == 1 + len(by_id)
    newest = admin.get(f"/api/analytics/{key['id']}", params={"limit": 2}).json()["records"]
    assert newest == by_id[-2:]  # the newest records, still oldest first


def test_every_error_is_json_without_traces(stack: Stack, admin: httpx.Client):
    cases = [
        admin.get("/api/nothing-here"),
        admin.post("/api/keys", content=b"{not json", headers={"content-type": "application/json"}),
        admin.post(
            "/api/keys",
            content=b"x" * (1024 * 1024 + 10),
            headers={"content-type": "application/json"},
        ),
        admin.delete("/api/keys/"),
        httpx.get(stack.url + "/api/keys"),
    ]
    for r in cases:
        assert r.headers["content-type"] == "application/json", r.text
        assert "Traceback" not in r.text
        json.loads(r.text)
    assert [r.status_code for r in cases] == [404, 400, 413, 404, 401]


def test_cookie_auth_accepts_writes_from_its_own_origin(stack: Stack, admin: httpx.Client):
    r = admin.post(
        "/api/keys",
        json={"username": "trent"},
        headers={"Origin": f"http://127.0.0.1:{stack.port}"},
    )
    assert r.status_code == 200
    assert (
        admin.delete(
            f"/api/keys/{r.json()['key']['id']}",
            headers={"Origin": f"http://127.0.0.1:{stack.port}"},
        ).status_code
        == 200
    )


def test_cookie_auth_refuses_cross_origin_writes(stack: Stack, admin: httpx.Client):
    r = admin.post(
        "/api/keys", json={"username": "mallory"}, headers={"Origin": "https://evil.example"}
    )
    assert (r.status_code, r.json()) == (403, {"error": "Cross-origin request refused"})
    assert "mallory" not in {k.username for k in read_keys(stack.data / "apikeys.json")}


def test_openapi_document_is_admin_only(stack: Stack):
    assert httpx.get(stack.url + "/api/openapi.json").status_code == 401
    with stack.admin() as admin:
        document = admin.get("/api/openapi.json").json()
        assert "/api/keys" in document["paths"] and "/auth/login" in document["paths"]
        assert admin.get("/api/docs").status_code == 200
