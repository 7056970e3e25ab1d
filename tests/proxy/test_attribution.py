"""The OpenAI `user` field of a request, recorded beside its key (openai SDK as the client)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from services.api import reports, request_log
from services.api.analytics_sqlite import SqliteAnalytics
from services.proxy.attribution import MAX_USER, end_user
from services.proxy.body import RequestBody
from tests.conftest import eventually

JSON = "application/json"


@pytest.mark.parametrize(
    "body,user",
    [
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "alice"}, "alice"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, None),
        ({"model": "m", "user": ""}, None),
        ({"model": "m", "user": 42}, None),
        ({"model": "m", "user": "x" * 1000}, "x" * MAX_USER),
        # Two string members named "user": only the top-level one counts.
        ({"metadata": {"user": "nested"}, "user": "top"}, "top"),
        ({"metadata": {"user": "nested"}, "tools": [{"user": "other"}]}, None),
        ({"model": "m", "metadata": {"user": "nested"}}, None),
        ({"model": "m", "user": 'quote " and \\ in it'}, 'quote " and \\ in it'),
    ],
)
def test_end_user_is_the_top_level_user_member(body, user):
    assert end_user(JSON, RequestBody(json.dumps(body).encode())) == user


def test_end_user_of_what_is_not_json_is_none():
    assert end_user("multipart/form-data; boundary=x", RequestBody(b'{"user": "a"}')) is None
    assert (
        end_user(JSON, RequestBody(b'{"user": [1], "user": [')) is None
    )  # broken: not ours to judge
    assert end_user("", RequestBody(b'{"user": "a"}')) == "a"


def test_the_user_field_is_recorded_for_each_api(upstreams, proxy, api_key):
    running = proxy(upstreams("a", ["m"]))
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model="m", messages=messages, user="alice@example.com")
    list(client.chat.completions.create(model="m", messages=messages, user="bob", stream=True))
    client.embeddings.create(model="m", input="hi", user="carol")
    client.chat.completions.create(model="m", messages=messages)
    rows = eventually(lambda: len(r := running.rows()) == 4 and r)
    assert [r["end_user"] for r in rows] == ["alice@example.com", "bob", "carol", None]
    # The admin sees it in a key's records (and so its CSV) and in the request log.
    db, everything = running.settings.analytics_db, reports.Window(0, 2**62)
    found = reports.records(SqliteAnalytics(db), api_key.id, everything, 10)
    records = [json.loads(r) for r in found.json]
    assert [r["endUser"] for r in records] == ["alice@example.com", "bob", "carol", None]
    logged = request_log.find(SqliteAnalytics(db), rows[0]["request_id"])
    assert logged is not None and logged["endUser"] == "alice@example.com"
