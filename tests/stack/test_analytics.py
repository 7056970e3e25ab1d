"""Analytics through the whole stack: the request log's filters, sorts and pages, a request found
by the id its client saw, and a budget held across two proxy workers under concurrent load."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import replace
from typing import Any

import httpx
import openai
import pytest

from shared.apikeys import ApiKey, Budget
from tests.conftest import eventually
from tests.stack.conftest import Stack
from tests.upstream import FakeUpstream


def _log(admin: httpx.Client, **params: Any) -> list[dict]:
    r = admin.get("/api/analytics/requests", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    assert r.json()["nextCursor"] is None
    return r.json()["requests"]


def _page(admin: httpx.Client, **params: Any) -> tuple[list[dict], str | None]:
    r = admin.get("/api/analytics/requests", params={"limit": 2, **params})
    assert r.status_code == 200, r.text
    assert len(r.json()["requests"]) <= 2
    return r.json()["requests"], r.json()["nextCursor"]


def _walk(admin: httpx.Client, **params: Any) -> list[dict]:
    """Every page of two, following the cursors."""
    walked, cursor = [], None
    while True:
        entries, cursor = _page(admin, **params, **({"cursor": cursor} if cursor else {}))
        walked += entries
        if cursor is None:
            return walked


def test_the_request_log_filters_pages_and_finds_a_request_by_its_id(
    stack: Stack,
    key: ApiKey,
    admin: httpx.Client,
    fleet: dict[str, FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
):
    # The stream's chunks come 20 ms apart, so its generation lasts whole milliseconds however
    # fast the machine: the breakdown's tokens a second has a duration to divide by.
    monkeypatch.setattr(fleet["a"], "pace", 0.02)
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key.key, max_retries=0)
    seen = []
    for model in ("model-a", "model-b", "model-a", "model-b", "model-a"):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=[])
        seen.append(raw.headers["x-request-id"])
    with client.chat.completions.create(model="model-a", messages=[], stream=True) as stream:
        for _ in stream:
            pass
    missing = httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "no-such-model", "messages": []},
        headers={"Authorization": f"Bearer {key.key}"},
    )
    assert missing.status_code == 404

    chats = {"keyId": key.id, "path": "/v1/chat/completions"}  # not the fixture's /v1/models
    entries = eventually(lambda: len(found := _log(admin, **chats)) == 7 and found, 10)
    starts = [e["startTime"] for e in entries]
    assert starts == sorted(starts, reverse=True)
    assert {e["keyId"] for e in entries} == {key.id}

    # Pages of two, newest first, then oldest first: together, exactly the log.
    for order, expected in (("desc", entries), ("asc", entries[::-1])):
        walked = _walk(admin, **(chats | {"keyId": key.key}), order=order)
        assert [e["id"] for e in walked] == [e["id"] for e in expected]

    # Sorted by each measure: the same rows in the documented order, a row without the measure
    # below every value, ties (the fake upstream's answers all have 7 + 3 tokens) broken by the
    # start, then the id.
    measures = {
        "latency": lambda e: -1 if e["durationMs"] is None else e["durationMs"],
        "ttfb": lambda e: -1 if e["ttfbMs"] is None else e["ttfbMs"],
        "tokens": lambda e: (e["promptTokens"] or 0) + (e["completionTokens"] or 0),
        "status": lambda e: e["status"],
    }
    for sort, value in measures.items():
        ascending = sorted(entries, key=lambda e: (value(e), e["startTime"], e["id"]))
        for order, expected in (("asc", ascending), ("desc", ascending[::-1])):
            walked = _walk(admin, **chats, sort=sort, order=order)
            assert [e["id"] for e in walked] == [e["id"] for e in expected], (sort, order)
    assert len({measures["tokens"](e) for e in entries}) < len(entries)  # there were ties
    mixed = admin.get(
        "/api/analytics/requests",
        params={**chats, "limit": 2, "sort": "tokens", "cursor": _page(admin, **chats)[1]},
    )
    assert (mixed.status_code, mixed.json()["success"]) == (400, False)

    assert len(_log(admin, keyId=key.id, model="model-b")) == 2
    b_url = next(e["upstream"] for e in entries if e["model"] == "model-b")
    assert {e["model"] for e in _log(admin, keyId=key.id, upstream=b_url)} == {"model-b"}
    refused = _log(admin, keyId=key.id, outcome="client_error")
    assert [(e["status"], e["model"], e["error"]) for e in refused] == [
        (404, "no-such-model", "model_not_found")
    ]
    assert _log(admin, keyId=key.id, status=404) == refused
    assert [e["model"] for e in _log(admin, keyId=key.id, stream="true")] == ["model-a"]
    assert len(_log(admin, **chats, stream="false")) == 6
    assert _log(admin, keyId=key.id, path="/v1/embeddings") == []
    now = int(time.time() * 1000)
    assert _log(admin, keyId=key.id, startDate=now + 3_600_000) == []

    # The x-request-id a client saw finds its request, alone or among the others.
    detail = admin.get(f"/api/analytics/requests/{seen[1]}").json()
    assert detail["success"] is True
    assert detail["request"]["requestId"] == seen[1]
    assert (detail["request"]["model"], detail["request"]["promptTokens"]) == ("model-b", 7)
    assert [e["requestId"] for e in _log(admin, requestId=seen[3])] == [seen[3]]
    gone = admin.get("/api/analytics/requests/0000000000ffffff")
    assert (gone.status_code, gone.json()["message"]) == (404, "Request not found")
    bad = admin.get("/api/analytics/requests", params={"cursor": "1;DROP TABLE requests"})
    assert (bad.status_code, bad.json()["success"]) == (400, False)

    # The breakdown by model counts the same requests, from the rollups.
    params = {"by": "model", "keyId": key.id}
    rows = admin.get("/api/analytics/breakdown", params=params).json()["rows"]
    rows = [r for r in rows if r["value"]]  # not the fixture's /v1/models, without a model
    assert {r["value"]: r["requests"] for r in rows} == {
        "model-a": 4,
        "model-b": 2,
        "no-such-model": 1,
    }
    a = next(r for r in rows if r["value"] == "model-a")
    logged = [e for e in entries if e["model"] == "model-a"]
    assert (a["failures"], a["promptTokens"], a["completionTokens"]) == (
        0,
        sum(e["promptTokens"] for e in logged),
        sum(e["completionTokens"] for e in logged),
    )
    assert a["streams"] == 1
    # The stream's completion tokens over at least its 4 gaps of 20 ms between 5 chunks.
    streamed = next(e for e in logged if e["stream"])
    assert 0 < a["tokensPerSecond"] <= streamed["completionTokens"] / 0.08


def test_a_budget_holds_across_two_workers_under_load(stack: Stack, admin: httpx.Client):
    tokens_each = 10  # the fake upstream's usage: 7 prompt, 3 completion
    budgeted = replace(ApiKey.new("budgeted"), budget=Budget("day", tokens=20 * tokens_each))
    stack.keys(budgeted)
    headers = {"Authorization": f"Bearer {budgeted.key}"}
    eventually(lambda: httpx.get(stack.url + "/v1/models", headers=headers).status_code == 200)
    assert len(stack.workers()) == 2
    concurrency = 8

    def ask(_: int) -> httpx.Response:
        # Straight to the proxy's port, a new connection each: the workers take turns at
        # accepting them (nginx would keep a few connections, perhaps all to one worker).
        return httpx.post(
            f"http://127.0.0.1:{stack.proxy_port}/v1/chat/completions",
            json={"model": "model-a", "messages": []},
            headers=headers,
            timeout=30,
        )

    answers: list[httpx.Response] = []
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        # Until both workers have answered (for most of the run, refusing).
        while len(answers) < 400 and (
            len(answers) < 80 or len({r.headers["x-request-id"][:10] for r in answers}) < 2
        ):
            answers += pool.map(ask, range(40))
    served = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(served) + len(refused) == len(answers)
    # Both workers answered; together they let through the budget, and no more than the
    # requests that were already under way when it ran out (one worker alone would allow 20,
    # two counting apart up to 40).
    assert len({r.headers["x-request-id"][:10] for r in answers}) == 2
    assert 20 <= len(served) <= 20 + concurrency - 1
    error = refused[0].json()["error"]
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
    assert "budget of 200 tokens for this day" in error["message"]
    assert refused[0].headers["x-ratelimit-limit-tokens"] == "200"
    assert refused[0].headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(refused[0].headers["retry-after"]) <= 86400

    # The key list shows what the budget has left, from what was recorded.
    def listed() -> dict | None:
        usage = admin.get("/api/keys").json()["usage"][budgeted.id]
        spent = usage["budget"]["usedTokens"] == len(served) * tokens_each
        return usage if spent and usage["requestsToday"] >= len(answers) else None

    usage = eventually(listed, 10)
    assert usage["budget"]["remainingTokens"] == 0
    assert usage["lastUsed"] is not None
