"""The original's validation messages, word for word (original-behavior.md sections 1.4, 5)."""

from datetime import UTC, datetime

import jsonschema_rs
import pytest

from services.api.validation import login_errors, login_schema
from shared.key_validation import (
    BodyError,
    joined,
    key_create,
    key_policy,
    key_update,
    username_errors,
)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"username": "a!"},
            "Username must contain only alphanumeric characters, "
            "Username must be at least 3 characters long",
        ),
        ({"username": "ab"}, "Username must be at least 3 characters long"),
        ({"username": "a" * 51}, "Username must not exceed 50 characters"),
        ({"username": "a_b-c"}, "Username must contain only alphanumeric characters"),
        ({"username": "héllo"}, "Username must contain only alphanumeric characters"),
        ({}, "Username is required"),
        ({"username": ""}, '"username" is not allowed to be empty'),
        ({"username": 5}, '"username" must be a string'),
        ({"username": None}, '"username" must be a string'),
        ({"username": "Alice42"}, ""),
    ],
)
def test_username_messages(fields, message):
    assert joined(username_errors(fields)) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, '"username" is required, Password is required'),
        (
            {"username": "", "password": "short"},
            '"username" is not allowed to be empty',
        ),
        (
            {"username": "a" * 129, "password": "p" * 129},
            '"username" length must be less than or equal to 128 characters long, '
            "Password must not exceed 128 characters",
        ),
        ({"username": "admin", "password": 12345678}, '"password" must be a string'),
        ({"username": "admin", "password": "longenough"}, ""),
    ],
)
def test_login_messages(fields, message):
    assert joined(login_errors(fields)) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, '"value" must have at least 1 key'),
        ({"enabled": True, "id": "x"}, '"id" is not allowed'),
        ({"enabled": "true"}, '"enabled" must be a boolean'),
        ({"enabled": None}, '"enabled" must be a boolean'),
        ({"expiresAt": 1767225600000}, '"expiresAt" must be in ISO 8601 date format'),
        ({"expiresAt": ""}, '"expiresAt" must be in ISO 8601 date format'),
        ({"expiresAt": "2026-02-30"}, '"expiresAt" must be in ISO 8601 date format'),
        ({"expiresAt": "31/12/2026"}, '"expiresAt" must be in ISO 8601 date format'),
        ({"expiresAt": "2020-01-01T00:00:00Z"}, '"expiresAt" must be greater than "now"'),
        ({"models": "llama3*"}, '"models" must be an array'),
        ({"models": []}, '"models" must contain at least 1 items'),
        ({"models": ["ok", 5]}, '"models[1]" must be a string'),
        ({"models": ["  "]}, '"models[0]" is not allowed to be empty'),
        (
            {"models": ["x" * 201]},
            '"models[0]" length must be less than or equal to 200 characters long',
        ),
        ({"models": ["a*", " a* "]}, '"models[1]" contains a duplicate value'),
        (
            {"models": [f"m{i}" for i in range(101)]},
            '"models" must contain less than or equal to 100 items',
        ),
        ({"limits": []}, '"limits" must be of type object'),
        ({"limits": {"rpm": 5}}, '"limits.rpm" is not allowed'),
        ({"limits": {"requestsPerMinute": "60"}}, '"limits.requestsPerMinute" must be a number'),
        ({"limits": {"tokensPerMinute": True}}, '"limits.tokensPerMinute" must be a number'),
        ({"limits": {"tokensPerDay": float("nan")}}, '"limits.tokensPerDay" must be a number'),
        ({"limits": {"maxConcurrent": 1.5}}, '"limits.maxConcurrent" must be an integer'),
        ({"limits": {"maxConcurrent": 0}}, '"limits.maxConcurrent" must be a positive number'),
        (
            {"limits": {"maxConcurrent": -0.5}},
            '"limits.maxConcurrent" must be an integer, '
            '"limits.maxConcurrent" must be a positive number',
        ),
        ({"limits": {"tokensPerDay": 2**53}}, '"limits.tokensPerDay" must be a safe number'),
        (
            {"limits": {"requestsPerMinute": 0, "x": 1}, "enabled": 0, "y": 2},
            '"enabled" must be a boolean, "limits.requestsPerMinute" must be a positive number, '
            '"limits.x" is not allowed, "y" is not allowed',
        ),
    ],
)
def test_key_update_messages(fields, message):
    with pytest.raises(BodyError) as refused:
        key_update(fields)
    assert str(refused.value) == message


def test_key_update_normalizes_what_it_accepts():
    assert key_update(
        {
            "enabled": False,
            "expiresAt": "2098-12-31T23:30:00-02:00",
            "models": [" llama3* ", "qwen"],
            "limits": {"requestsPerMinute": 60.0, "tokensPerDay": None, "maxConcurrent": 2**53 - 1},
        }
    ) == {
        "enabled": False,
        "expiresAt": "2099-01-01T01:30:00.000Z",
        "models": ("llama3*", "qwen"),
        "limits": {"requestsPerMinute": 60, "tokensPerDay": None, "maxConcurrent": 2**53 - 1},
    }
    assert key_update({"expiresAt": "2099-01-01"}) == {"expiresAt": "2099-01-01T00:00:00.000Z"}
    assert key_update({"expiresAt": None, "models": None}) == {"expiresAt": None, "models": None}


def test_key_create_takes_a_username_and_an_optional_policy():
    assert key_create({"username": "carol", "extra": 1}) == ("carol", {})
    assert key_create({"username": "carol", "enabled": False}) == ("carol", {"enabled": False})
    with pytest.raises(BodyError, match=r'^Username is required, "models" must be an array$'):
        key_create({"models": "x"})


def test_an_expiry_must_be_after_now():
    now = datetime(2030, 6, 1, 12, tzinfo=UTC)
    assert key_policy({"expiresAt": "2030-06-01T12:00:01Z"}, now) == (
        {"expiresAt": "2030-06-01T12:00:01.000Z"},
        [],
    )
    for past in ("2030-06-01T12:00:00Z", "2030-06-01T13:59:00+02:00", "2030-05-31"):
        assert key_policy({"expiresAt": past}, now)[1] == ['"expiresAt" must be greater than "now"']


@pytest.mark.parametrize(
    "body",
    [
        {"username": "admin", "password": "x"},
        {"username": "admin", "password": "x" * 128},
        {"username": "admin", "password": "x" * 129},
        {"username": "a" * 129, "password": "x"},
        {"username": "", "password": "x"},
        {"username": "admin", "password": 1},
        {"username": "admin"},
        {"password": "x"},
    ],
)
def test_the_login_schema_accepts_what_the_check_does(body):
    """The document's login body is written from these rules (tests/shared/test_key_validation.py
    holds the keys' to theirs the same way)."""
    assert jsonschema_rs.Draft202012Validator(login_schema()).is_valid(body) == (
        login_errors(body) == []
    )
