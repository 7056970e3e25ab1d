"""The proxy's webhook events, with two proxy workers on one data folder, the openai SDK as the
client and a real HTTP receiver: an upstream down and back is announced once by all of them, a
key reaching a limit or its budget once; without WEBHOOK_URLS nothing is hooked."""

from __future__ import annotations

import functools

import openai
import pytest

from shared.apikeys import ApiKey, Budget, write_keys
from tests.conftest import eventually, free_port
from tests.upstream import FakeUpstream
from tests.webhook_receiver import Receiver

SECRET = "w" * 32


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def hooked(receiver: Receiver) -> dict[str, object]:
    return {"webhook_urls": receiver.url, "webhook_secret": SECRET}


def sdk(running, key: ApiKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=running.url + "/v1", api_key=key.key, max_retries=0, timeout=30)


def ask(running, key: ApiKey, model: str) -> str:
    try:
        sdk(running, key).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    except openai.APIStatusError as exc:
        return str(exc.body.get("code") if isinstance(exc.body, dict) else exc.status_code)
    except openai.APIConnectionError:
        return "connection"
    return "ok"


def test_an_upstream_down_then_back_is_announced_once_by_every_worker(
    upstreams, proxy, api_key, receiver
):
    a = upstreams("a", ["m"])
    port = free_port()
    b = FakeUpstream("b", ["n"], port=port)  # not started yet: refuses connections
    workers = [proxy(a, f"http://127.0.0.1:{port}", **hooked(receiver)) for _ in range(2)]

    def healthy(worker) -> bool:
        return bool(worker.runtime.catalog.states[1].healthy)

    for worker in workers:
        eventually(functools.partial(lambda w: not healthy(w), worker))
    eventually(lambda: receiver.received)
    b.start()
    try:
        for worker in workers:  # each worker's refresh sees it back within DOWN_RETRY_SECONDS
            eventually(functools.partial(healthy, worker))
        eventually(lambda: len(receiver.received) == 2)
        assert ask(workers[0], api_key, "n") == "ok"
    finally:
        b.stop()
    for worker in workers:
        worker.runtime.webhooks.close()  # what either had queued is sent or dropped by now
    events = receiver.events()
    assert [e["type"] for e in events] == ["upstream.down", "upstream.up"]
    label = workers[0].runtime.catalog.states[1].upstream.label
    assert events[0]["data"]["upstream"] == label and "error" in events[0]["data"]
    assert events[1]["data"] == {"upstream": label}
    assert all(r.signed_with(SECRET) for r in receiver.received)


def test_a_key_reaching_its_limit_or_its_budget_is_announced_once(
    tmp_path, upstreams, proxy, receiver
):
    limited = ApiKey.new("alice").updated({"name": "ci", "limits": {"requestsPerMinute": 1}})
    spent = ApiKey.new("bob").updated({"budget": Budget("month", tokens=1)})
    write_keys(tmp_path / "data" / "apikeys.json", [limited, spent])
    a = upstreams("a", ["m"])
    running = proxy(a, **hooked(receiver))
    assert ask(running, limited, "m") == "ok"
    assert [ask(running, limited, "m") for _ in range(3)] == ["rate_limit_exceeded"] * 3
    assert ask(running, spent, "m") == "ok"  # uses more than its one token
    assert eventually(lambda: ask(running, spent, "m") == "insufficient_quota" or None)
    assert ask(running, spent, "m") == "insufficient_quota"
    eventually(lambda: len(receiver.received) == 2)
    running.runtime.webhooks.close()
    by_type = {e["type"]: e["data"] for e in receiver.events()}
    assert len(receiver.received) == 2
    assert by_type["key.limit_reached"] == {
        "keyId": limited.id,
        "username": "alice",
        "name": "ci",
        "limit": "1 requests per minute",
    }
    assert by_type["key.budget_reached"] == {
        "keyId": spent.id,
        "username": "bob",
        "name": None,
        "unit": "tokens",
        "budget": {"period": "month", "tokens": 1},
    }
    assert spent.key not in receiver.received[0].body.decode() + receiver.received[1].body.decode()


def test_without_webhook_urls_nothing_is_hooked(upstreams, proxy, api_key):
    running = proxy(upstreams("a", ["m"]))
    runtime = running.runtime
    assert runtime.catalog.on_health is None and runtime.limiter.on_refused is None
    assert runtime.budgets.on_spent is None and runtime.webhooks._thread is None
