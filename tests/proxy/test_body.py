"""A request's body, parsed once for everything the proxy reads in it."""

from __future__ import annotations

import orjson
import pytest

from services.proxy.attribution import end_user
from services.proxy.body import RequestBody
from services.proxy.routing import request_model
from services.proxy.usage import ask_for_usage


def test_the_body_is_parsed_once_for_the_model_the_user_and_the_usage(monkeypatch):
    calls, loads = [], orjson.loads

    def counting(data: bytes) -> object:
        calls.append(data)
        return loads(data)

    monkeypatch.setattr(orjson, "loads", counting)
    raw = b'{"model": "m", "user": "alice", "stream": true, "messages": []}'
    body = RequestBody(raw)
    assert request_model("application/json", body) == "m"
    assert end_user("application/json", body) == "alice"
    assert ask_for_usage("/v1/chat/completions", body) is not None
    assert calls == [raw]


def test_what_orjson_refuses_is_read_as_python_reads_it():
    body = RequestBody(b'{"model": "m", "temperature": NaN}')
    assert body.members is not None and body.members["model"] == "m"
    assert body.strict is False and body.error is None


@pytest.mark.parametrize("raw", [b'{"model": ', b"", b"\xff"])
def test_what_is_not_json_has_no_document_and_says_why(raw):
    body = RequestBody(raw)
    assert body.document is None and body.members is None
    assert body.error


def test_a_json_value_other_than_an_object_has_no_members():
    body = RequestBody(b"[1, 2]")
    assert body.document == [1, 2] and body.members is None and body.error is None
