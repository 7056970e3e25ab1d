"""A key deleted or disabled while its requests are in flight: they end within a second, the
upstream's work is cancelled, and the client is told why (openai SDK as the client)."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta

import openai
import pytest

from shared.apikeys import ApiKey, write_keys
from tests.conftest import eventually


def sdk(running, key: ApiKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=running.url + "/v1", api_key=key.key, max_retries=0, timeout=30)


def revoke(running, key: ApiKey, how: str) -> None:
    keys = [] if how == "deleted" else [dataclasses.replace(key, enabled=False)]
    write_keys(running.settings.apikeys_file, keys)


@pytest.mark.parametrize("how", ["deleted", "disabled"])
def test_a_stream_open_when_its_key_is_revoked_ends_with_an_error_event(
    upstreams, proxy, api_key, how
):
    a = upstreams("a", ["m"], pace=0.1, chunks=300)  # 30 s unless cut
    running = proxy(a)
    stream = sdk(running, api_key).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received = [next(stream), next(stream)]
    revoke(running, api_key, how)
    revoked = time.monotonic()
    with pytest.raises(openai.APIError) as ended:
        received.extend(stream)
    assert time.monotonic() - revoked < 5  # within a second of the reload, on a loaded machine
    assert ended.value.body["code"] == "api_key_revoked"
    assert "revoked" in ended.value.message
    eventually(lambda: a.stream_closed)  # the upstream's work was cancelled
    assert 2 <= len(received) < 100
    row = eventually(lambda: running.rows())[0]
    assert (row["status"], row["error"], row["end_ms"]) == (200, "api_key_revoked", None)
    assert row["usage_estimated"] == 1 and row["completion_tokens"] >= 2


def test_a_request_waiting_for_its_answer_when_its_key_is_revoked_is_a_401(
    upstreams, proxy, api_key
):
    a = upstreams("a", ["m"], delay=30)
    running = proxy(a)
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            sdk(running, api_key).chat.completions.create(model="m", messages=[])
        except openai.APIError as exc:
            outcome.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    eventually(lambda: a.active == 1)
    revoke(running, api_key, "disabled")
    asking.join(10)
    assert not asking.is_alive()
    refused = outcome[0]
    assert isinstance(refused, openai.AuthenticationError)
    assert refused.body["code"] == "api_key_revoked"


def test_other_keys_requests_and_changes_that_revoke_nothing_leave_streams_alone(
    upstreams, proxy, api_key
):
    a = upstreams("a", ["m"], pace=0.05, chunks=100)
    running = proxy(a)
    other = ApiKey.new("someone-else")
    stream = sdk(running, api_key).chat.completions.create(model="m", messages=[], stream=True)
    first = next(stream)
    write_keys(running.settings.apikeys_file, [api_key, other])  # a key added
    eventually(lambda: len(running.runtime.keys) == 2)  # the worker has the new keys...
    assert a.active == 1  # ...while the stream is still being answered
    assert [first, *stream][-1].choices[0].delta.content == "a99 "


def test_a_stream_open_with_a_secret_rotated_with_an_overlap_goes_on_and_at_once_ends(
    upstreams, proxy, api_key
):
    a = upstreams("a", ["m"], pace=0.05, chunks=300)  # 15 s unless cut
    running = proxy(a)
    path = running.settings.apikeys_file
    stream = sdk(running, api_key).chat.completions.create(model="m", messages=[], stream=True)
    received = [next(stream), next(stream)]
    later = datetime.now(UTC) + timedelta(hours=1)
    overlapping = api_key.rotated(later)
    write_keys(path, [overlapping])
    eventually(lambda: running.runtime.keys.lookup(overlapping.key) is not None)
    received.extend(next(stream) for _ in range(5))  # still flowing after the reload
    write_keys(path, [overlapping.rotated(datetime.now(UTC))])  # after a leak: none kept
    with pytest.raises(openai.APIError) as ended:
        received.extend(stream)
    assert ended.value.body["code"] == "api_key_revoked"
    assert 7 <= len(received) < 300
