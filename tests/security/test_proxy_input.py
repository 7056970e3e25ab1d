"""Hostile bodies on `/v1`, through nginx: JSON nested deeper than any parser's stack, or
shaped to make the model lookup misread it. Answers are OpenAI-shaped, never a crash."""

from __future__ import annotations

import httpx
import pytest

from shared.apikeys import ApiKey
from tests.security.conftest import forwarded
from tests.stack.conftest import Stack

BODIES = {
    "nested arrays": b"[" * 200_000 + b"]" * 200_000,
    "nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "nested under messages": b'{"messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    "two models": b'{"model": "model-a", "model": "model-b", "x": ' + b"[" * 100_000 + b"}",
    "model not a string": b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("name", list(BODIES))
def test_deeply_nested_json_is_an_openai_400(stack: Stack, key: ApiKey, fleet, name: str):
    before = forwarded(fleet)
    r = httpx.post(
        stack.url + "/v1/chat/completions",
        content=BODIES[name],
        headers={"Authorization": f"Bearer {key.key}", "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_json"
    assert forwarded(fleet) == before
