"""`/api/keys`: a key's policy, created and changed through the api (in process), and the key
file's read-modify-write under its lock."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.apikeys import (
    ApiKey,
    Limits,
    format_time,
    last_good_path,
    read_keys,
    write_keys,
)
from shared.keyfile import KeyFile
from tests.conftest import eventually


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "apikeys.json"


@pytest.fixture
def alice(path: Path) -> ApiKey:
    alice, bob = ApiKey.new("alice"), ApiKey.new("bob")
    write_keys(path, [alice, bob])
    return alice


def patch(api: TestClient, key_id: str, body: Any) -> Any:
    return api.patch(f"/api/keys/{key_id}", json=body)


def test_update_answers_with_the_key_and_saves_it(api, path, alice):
    r = patch(
        api,
        alice.id,
        {
            "enabled": False,
            "expiresAt": "2099-01-31T12:00:00+01:00",
            "models": [" llama3* ", "qwen2.5:*"],
            "limits": {"requestsPerMinute": 60, "maxConcurrent": 2},
        },
    )
    assert r.status_code == 200
    assert list(r.json()) == ["success", "message", "key"]
    assert r.json()["message"] == "API key updated successfully"
    assert r.json()["key"] == {
        "id": alice.id,
        "username": "alice",
        "key": alice.key,
        "createdAt": alice.createdAt,
        "enabled": False,
        "expiresAt": "2099-01-31T11:00:00.000Z",  # kept in the original's format, in UTC
        "models": ["llama3*", "qwen2.5:*"],  # trimmed
        "limits": {"requestsPerMinute": 60, "maxConcurrent": 2},
    }
    saved, bob = read_keys(path)
    assert saved.to_json() == r.json()["key"]
    assert bob == ApiKey(bob.id, "bob", bob.key, bob.createdAt)  # untouched
    assert api.get("/api/keys").json()["keys"][0] == r.json()["key"]


def test_limits_merge_field_by_field_and_null_removes(api, path, alice):
    patch(api, alice.id, {"limits": {"requestsPerMinute": 60, "tokensPerMinute": 1000}})
    r = patch(api, alice.id, {"limits": {"tokensPerMinute": None, "maxConcurrent": 3}})
    assert r.json()["key"]["limits"] == {"requestsPerMinute": 60, "maxConcurrent": 3}
    patch(api, alice.id, {"enabled": False})  # other fields leave the limits alone
    assert read_keys(path)[0].limits == Limits(requestsPerMinute=60, maxConcurrent=3)
    patch(api, alice.id, {"limits": {}})
    assert read_keys(path)[0].limits == Limits(requestsPerMinute=60, maxConcurrent=3)


def test_clearing_everything_writes_the_original_format_again(api, path, alice):
    policy = {"expiresAt": "2099-01-01", "models": ["a*"], "limits": {"tokensPerDay": 1}}
    assert patch(api, alice.id, {"enabled": False, **policy}).status_code == 200
    r = patch(
        api,
        alice.id,
        {"enabled": True, "expiresAt": None, "models": None, "limits": {"tokensPerDay": None}},
    )
    assert list(r.json()["key"]) == ["id", "username", "key", "createdAt"]
    assert json.loads(path.read_text())["keys"][0] == {
        "id": alice.id,
        "username": "alice",
        "key": alice.key,
        "createdAt": alice.createdAt,
    }


def test_update_of_an_unknown_key_is_404_and_writes_nothing(api, path, alice):
    before = path.read_bytes()
    r = patch(api, "f" * 32, {"enabled": False})
    assert (r.status_code, r.json()) == (404, {"success": False, "message": "API key not found"})
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, '"value" must have at least 1 key'),
        ({"username": "eve"}, '"username" is not allowed'),
        ({"enabled": "false"}, '"enabled" must be a boolean'),
        ({"expiresAt": "next week"}, '"expiresAt" must be in ISO 8601 date format'),
        ({"models": [""]}, '"models[0]" is not allowed to be empty'),
        (
            {"limits": {"requestsPerMinute": 0, "tokensPerDay": -5}},
            '"limits.requestsPerMinute" must be a positive number, '
            '"limits.tokensPerDay" must be a positive number',
        ),
        ({"limits": None}, '"limits" must be of type object'),
        (
            {"enabled": 1, "models": "llama3", "nope": True},
            '"enabled" must be a boolean, "models" must be an array, "nope" is not allowed',
        ),
    ],
)
def test_update_refuses_a_bad_body_with_every_message(api, path, alice, body, message):
    before = path.read_bytes()
    r = patch(api, alice.id, body)
    assert (r.status_code, r.json()) == (400, {"success": False, "message": message})
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "Invalid JSON body"), (b"[1, 2]", "Invalid request body")],
)
def test_update_refuses_what_is_not_a_json_object(api, alice, content, message):
    r = api.patch(
        f"/api/keys/{alice.id}", content=content, headers={"content-type": "application/json"}
    )
    assert (r.status_code, r.json()) == (400, {"success": False, "message": message})


def test_create_accepts_a_policy(api, path):
    r = api.post(
        "/api/keys",
        json={"username": "carol", "models": ["llama*"], "limits": {"maxConcurrent": 1}},
    )
    assert r.status_code == 200
    key = r.json()["key"]
    assert list(key) == ["id", "username", "key", "createdAt", "models", "limits"]
    assert (key["models"], key["limits"]) == (["llama*"], {"maxConcurrent": 1})
    assert read_keys(path)[-1].to_json() == key
    plain = api.post("/api/keys", json={"username": "dave", "other": 1}).json()["key"]
    assert list(plain) == ["id", "username", "key", "createdAt"]  # unknown fields ignored


def test_create_refuses_a_bad_policy_with_the_username_messages_first(api, path):
    r = api.post("/api/keys", json={"username": "a!", "enabled": "yes"})
    assert (r.status_code, r.json()["message"]) == (
        400,
        "Username must contain only alphanumeric characters, "
        'Username must be at least 3 characters long, "enabled" must be a boolean',
    )
    assert not path.exists()


def test_update_of_an_unreadable_file_without_a_good_copy_is_500_and_never_overwrites_it(
    api, path, alice
):
    path.write_text('{"keys": [ broken')
    last_good_path(path).unlink()
    r = patch(api, alice.id, {"enabled": False})
    assert (r.status_code, r.json()) == (
        500,
        {"success": False, "message": "Failed to update API key: the key file is unreadable"},
    )
    assert path.read_text() == '{"keys": [ broken'


def test_a_failing_write_leaves_the_file_intact(api, path, alice, monkeypatch):
    before = path.read_bytes()

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the os module shared/files.py uses
    r = patch(api, alice.id, {"limits": {"requestsPerMinute": 5}})
    assert (r.status_code, r.json()) == (
        500,
        {"success": False, "message": "Failed to update API key"},
    )
    assert path.read_bytes() == before
    assert list(path.parent.glob(".apikeys.json.*")) == []  # the temporary file is gone too


def test_update_waits_for_the_lock_and_keeps_what_the_holder_wrote(api, path, alice):
    """Another process (here another KeyFile, so another flock) holding the file: the api's
    change waits, then applies on top of what the holder wrote; nothing is lost."""
    other = KeyFile(path)
    answers: list[Any] = []
    with other.locked():
        worker = threading.Thread(
            target=lambda: answers.append(patch(api, alice.id, {"enabled": False}))
        )
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and answers == []  # waiting for the lock
        erin = ApiKey.new("erin")
        write_keys(path, [*read_keys(path), erin])
    worker.join(10)
    assert answers[0].status_code == 200
    assert [(k.username, k.enabled) for k in read_keys(path)] == [
        ("alice", False),
        ("bob", True),
        ("erin", True),
    ]


@pytest.mark.parametrize("damage", ["delete", "break"])
def test_a_deleted_or_broken_key_file_leaves_keys_listed_and_revocable(
    api, path, alice, upstreams, proxy, damage
):
    running = proxy(upstreams("a", ["model-a"]))
    with running.client(alice) as client:
        chat = lambda: client.post("/v1/chat/completions", json={"model": "model-a"})  # noqa: E731
        assert chat().status_code == 200
        if damage == "delete":
            path.unlink()
        else:
            path.write_text('{"keys": [')
        listed = api.get("/api/keys")
        assert [k["username"] for k in listed.json()["keys"]] == ["alice", "bob"]
        assert chat().status_code == 200  # the workers keep the last good keys meanwhile
        assert api.delete(f"/api/keys/{alice.id}").status_code == 200
        assert [k.username for k in read_keys(path)] == ["bob"]  # written again
        if damage == "break":
            assert path.with_name("apikeys.json.broken").read_text() == '{"keys": ['
        eventually(lambda: chat().status_code == 401)


def test_a_user_gets_several_named_keys_with_owner_and_note(api, path, alice):
    r = api.post(
        "/api/keys",
        json={"username": "alice", "name": "ci", "owner": " ops@example.com ", "note": "evals"},
    )
    assert r.status_code == 200
    key = r.json()["key"]
    assert list(key) == ["id", "username", "key", "createdAt", "name", "owner", "note"]
    assert (key["name"], key["owner"], key["note"]) == ("ci", "ops@example.com", "evals")
    again = api.post("/api/keys", json={"username": "alice", "name": "ci"})
    assert again.status_code == 400
    assert again.json() == {
        "success": False,
        "message": 'An API key named "ci" already exists for this username',
    }
    unnamed = api.post("/api/keys", json={"username": "alice"})  # the original's one key each
    assert unnamed.json() == {
        "success": False,
        "message": "API key already exists for this username",
    }
    assert [k["username"] for k in api.get("/api/keys").json()["keys"]] == ["alice", "bob", "alice"]
    assert [k["id"] for k in api.get("/api/keys?search=OPS@").json()["keys"]] == [key["id"]]
    r = patch(api, key["id"], {"note": None, "owner": "team-ml"})
    assert "note" not in r.json()["key"] and r.json()["key"]["owner"] == "team-ml"
    clash = patch(api, alice.id, {"name": "ci"})
    assert clash.status_code == 400 and "already exists" in clash.json()["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "has space"}, '"name" must start with a letter or digit'),
        ({"name": "-x"}, '"name" must start with a letter or digit'),
        ({"name": "x" * 51}, '"name" length must be less than or equal to 50'),
        ({"owner": ""}, '"owner" is not allowed to be empty'),
        ({"note": "a\nb"}, '"note" must hold printable characters only'),
        ({"note": "n" * 501}, '"note" length must be less than or equal to 500'),
        ({"owner": 5}, '"owner" must be a string'),
    ],
)
def test_name_owner_and_note_are_checked(api, path, alice, body, message):
    before = path.read_bytes()
    r = patch(api, alice.id, body)
    assert r.status_code == 400 and r.json()["message"].startswith(message)
    assert path.read_bytes() == before


def test_rotate_answers_the_new_secret_and_keeps_the_old_one_until_asked(api, path, alice):
    until = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    zoned = until.astimezone(timezone(timedelta(hours=1))).isoformat()
    r = api.post(f"/api/keys/{alice.id}/rotate", json={"until": zoned})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["message"] == "API key rotated successfully"
    key = body["key"]
    assert list(key) == ["id", "username", "key", "createdAt", "previousKeys"]
    assert key["id"] == alice.id and key["key"] != alice.key
    assert key["previousKeys"] == [{"key": alice.key, "until": format_time(until)}]  # in UTC
    assert read_keys(path)[0].to_json() == key
    valid = api.get(f"/api/keys/validate/{alice.key}").json()
    assert valid == {"success": True, "valid": True, "username": "alice"}  # still accepted


def test_rotate_without_until_refuses_the_old_secret_at_once(api, path, alice):
    r = api.post(f"/api/keys/{alice.id}/rotate")
    assert r.status_code == 200
    assert "previousKeys" not in r.json()["key"]
    assert api.get(f"/api/keys/validate/{alice.key}").json() == {"success": True, "valid": False}
    new = r.json()["key"]["key"]
    assert api.get(f"/api/keys/validate/{new}").json()["valid"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"until": "tomorrow"}, '"until" must be in ISO 8601 date format'),
        ({"until": 5}, '"until" must be in ISO 8601 date format'),
        ({"until": "2999-01-01T00:00:00Z"}, '"until" must be at most 365 days from now'),
        ({"overlap": 5}, '"overlap" is not allowed'),
    ],
)
def test_rotate_refuses_a_bad_body_and_writes_nothing(api, path, alice, body, message):
    before = path.read_bytes()
    r = api.post(f"/api/keys/{alice.id}/rotate", json=body)
    assert r.status_code == 400
    assert r.json() == {"success": False, "message": message}
    assert path.read_bytes() == before


def test_rotate_of_an_unknown_key_is_404(api, path, alice):
    r = api.post(f"/api/keys/{'0' * 32}/rotate")
    assert r.status_code == 404
    assert r.json() == {"success": False, "message": "API key not found"}


def test_a_budget_of_null_tokens_or_cost_is_refused_as_joi_does(api, path, alice):
    """`number()` refuses null: a budget whose tokens or cost is null is a 400 that says so, and
    the key stays as it was (it was taken for no budget field at all, and then failed)."""
    for name in ("tokens", "cost"):
        r = patch(api, alice.id, {"budget": {"period": "day", name: None}})
        assert (r.status_code, r.json()) == (
            400,
            {"success": False, "message": f'"budget.{name}" must be a number'},
        )
    assert read_keys(path)[0] == alice
