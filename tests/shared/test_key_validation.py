"""The request bodies of the OpenAPI document are written from the rules that check them: for
each body here, the JSON Schema accepts it exactly when the check does. (The messages are
tests/api/test_validation.py's.) Left out, as no JSON Schema can say them: an expiry in the
past, and patterns equal or too long only once trimmed."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from shared.key_validation import (
    MAX_PATTERN_LENGTH,
    MAX_PATTERNS,
    MAX_SAFE_INTEGER,
    BodyError,
    create_schema,
    key_create,
    key_update,
    update_schema,
)

POLICIES: list[dict[str, Any]] = [
    {"enabled": False},
    {"enabled": "true"},
    {"enabled": None},
    {"expiresAt": "2099-01-31T12:00:00+01:00"},
    {"expiresAt": "2099-01-01"},
    {"expiresAt": None},
    {"expiresAt": 1767225600000},
    {"models": ["llama3*", "qwen2.5:*"]},
    {"models": None},
    {"models": "llama3*"},
    {"models": []},
    {"models": ["ok", 5]},
    {"models": ["  "]},
    {"models": ["x" * MAX_PATTERN_LENGTH]},
    {"models": ["x" * (MAX_PATTERN_LENGTH + 1)]},
    {"models": ["a*", "a*"]},
    {"models": [f"m{i}" for i in range(MAX_PATTERNS)]},
    {"models": [f"m{i}" for i in range(MAX_PATTERNS + 1)]},
    {"limits": {}},
    {"limits": []},
    {"limits": None},
    {"limits": {"rpm": 5}},
    {"limits": {"requestsPerMinute": 60, "tokensPerDay": None}},
    {"limits": {"requestsPerMinute": 60.0}},
    {"limits": {"requestsPerMinute": "60"}},
    {"limits": {"tokensPerMinute": True}},
    {"limits": {"maxConcurrent": 1.5}},
    {"limits": {"maxConcurrent": 0}},
    {"limits": {"maxConcurrent": -3}},
    {"limits": {"tokensPerDay": MAX_SAFE_INTEGER}},
    {"limits": {"tokensPerDay": MAX_SAFE_INTEGER + 1}},
    {"budget": None},
    {"budget": {"period": "day", "tokens": 1000}},
    {"budget": {"period": "week", "cost": 2.5}},
    {"budget": {"period": "month", "tokens": 1, "cost": 1}},
    {"budget": {"period": "year", "tokens": 1}},
    {"budget": {"tokens": 1}},
    {"budget": {"period": "day"}},
    {"budget": {"period": "day", "tokens": None}},
    {"budget": {"period": "day", "cost": None}},
    {"budget": {"period": "day", "tokens": 0}},
    {"budget": {"period": "day", "tokens": 1.5}},
    {"budget": {"period": "day", "cost": 0}},
    {"budget": {"period": "day", "cost": 1e12}},
    {"budget": {"period": "day", "cost": 1e12 - 1}},
    {"budget": {"period": "day", "cost": "1"}},
    {"budget": {"period": "day", "tokens": 1, "colour": "red"}},
    {"budget": []},
    {"name": "laptop-2.prod_x"},
    {"name": " laptop "},
    {"name": "-laptop"},
    {"name": "lap top"},
    {"name": "x" * 50},
    {"name": "x" * 51},
    {"name": ""},
    {"name": None},
    {"owner": "Ops team <ops@example.com>"},
    {"owner": "   "},
    {"owner": "x" * 200},
    {"owner": "x" * 201},
    {"note": "rotated monthly"},
    {"note": 5},
    {"note": None},
    {"enabled": True, "id": "x"},
    {},
]


def _accepts(check: Any, body: Any) -> bool:
    try:
        check(body)
    except BodyError:
        return False
    return True


def _schema_accepts(schema: dict[str, Any], body: Any) -> bool:
    return bool(jsonschema_rs.Draft202012Validator(schema).is_valid(body))


@pytest.mark.parametrize("body", POLICIES)
def test_the_update_schema_accepts_what_the_check_does(body):
    assert _schema_accepts(update_schema(), body) == _accepts(key_update, body)


@pytest.mark.parametrize(
    "body",
    [
        *({"username": "carol", **policy} for policy in POLICIES),
        {"username": "carol", "extra": 1},
        {"username": "ab"},
        {"username": "a" * 50},
        {"username": "a" * 51},
        {"username": "a_b"},
        {"username": "héllo"},
        {"username": ""},
        {"username": 5},
        {"enabled": True},
    ],
)
def test_the_create_schema_accepts_what_the_check_does(body):
    assert _schema_accepts(create_schema(), body) == _accepts(key_create, body)
