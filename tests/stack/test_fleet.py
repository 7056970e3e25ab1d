"""Upstreams and aliases changed through the admin api, served by every proxy worker within a
second, without a restart (the whole stack, three proxy workers)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from shared.apikeys import ApiKey
from tests.conftest import eventually
from tests.stack.conftest import Stack
from tests.upstream import FakeUpstream

SAMPLES = 30  # requests per look, each on a new connection: the kernel spreads them over workers


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    started = {
        "a": FakeUpstream("a", ["model-a"], key="key-of-a").start(),
        "c": FakeUpstream("c", ["model-c", "model-c2"], key="key-of-c").start(),
    }
    yield started
    for upstream in started.values():
        upstream.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstreams) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("fleet"), [upstreams["a"]], workers=3).start()
    yield running
    assert running.stop() == 0, running.output()


@pytest.fixture(scope="module")
def key(stack: Stack) -> ApiKey:
    new = ApiKey.new("fleet-tester")
    stack.keys(new)
    eventually(lambda: all(w["keys"] == 1 for w in stack.workers()) and len(stack.workers()) == 3)
    return new


def sampled(stack: Stack, key: ApiKey, look: Callable[[httpx.Client], object]) -> set[object]:
    """What `look` sees on SAMPLES new connections straight to the proxy's port."""
    with httpx.Client(
        base_url=f"http://127.0.0.1:{stack.proxy_port}",
        headers={"Authorization": f"Bearer {key.key}"},
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=30,
    ) as client:
        return {look(client) for _ in range(SAMPLES)}


def models(client: httpx.Client) -> frozenset[str]:
    return frozenset(m["id"] for m in client.get("/v1/models").json()["data"])


def within_a_second(check: Callable[[], bool], since: float) -> None:
    """`check` holds within a second of `since` (when the api answered)."""
    while True:
        looked = time.monotonic()
        if check():
            print(f"every worker followed within {looked - since:.2f} s")
            return
        assert looked - since < 1.0, "not every worker followed within a second"


def workers_report(stack: Stack, ids: set[str]) -> bool:
    """Every worker's heartbeat lists exactly these upstreams."""
    workers = stack.workers()
    return len(workers) == 3 and all({u["id"] for u in w["upstreams"]} == ids for w in workers)


def test_changes_through_the_api_reach_every_worker_within_a_second(stack, upstreams, key):
    a, c = upstreams["a"], upstreams["c"]
    assert sampled(stack, key, models) == {frozenset({"model-a"})}  # TARGET_URLS
    with stack.admin() as admin:
        added = admin.post("/api/fleet/upstreams", json={"url": c.url, "key": "key-of-c"})
        answered = time.monotonic()
        assert added.status_code == 200, added.text
        c_id = added.json()["upstream"]["id"]
        within_a_second(
            lambda: sampled(stack, key, models) == {frozenset({"model-a", "model-c", "model-c2"})},
            answered,
        )
        eventually(lambda: workers_report(stack, {"target-1", c_id}))

        # Through nginx with the SDK: model-c goes to c, with c's own key.
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key.key, max_retries=0)
        reply = client.chat.completions.create(model="model-c", messages=[])
        assert reply.choices[0].message.content == "hello from c"
        assert c.seen[-1].headers["Authorization"] == "Bearer key-of-c"

        # A new key for c: every worker sends it from then on.
        changed = admin.patch(f"/api/fleet/upstreams/{c_id}", json={"key": "key-of-c-2"})
        answered = time.monotonic()
        assert changed.status_code == 200 and "key-of-c-2" not in changed.text

        def sends_the_new_key(client: httpx.Client) -> str:
            client.post("/v1/chat/completions", json={"model": "model-c", "messages": []})
            return c.seen[-1].headers["Authorization"]

        within_a_second(
            lambda: sampled(stack, key, sends_the_new_key) == {"Bearer key-of-c-2"}, answered
        )

        # A models filter: only what it matches is listed.
        admin.patch(f"/api/fleet/upstreams/{c_id}", json={"models": ["model-c"]})
        answered = time.monotonic()
        within_a_second(
            lambda: sampled(stack, key, models) == {frozenset({"model-a", "model-c"})}, answered
        )

        # An alias: listed by every worker within a second, served under c's own name.
        saved = admin.put(
            "/api/fleet/aliases/team-chat",
            json={"deployments": [{"upstream": c_id, "model": "model-c2"}]},
        )
        answered = time.monotonic()
        assert saved.status_code == 200, saved.text
        within_a_second(
            lambda: sampled(stack, key, models) == {frozenset({"team-chat", "model-a", "model-c"})},
            answered,
        )
        reply = client.chat.completions.create(model="team-chat", messages=[])
        assert reply.choices[0].message.content == "hello from c"
        assert json.loads(c.seen[-1].body)["model"] == "model-c2"
        assert admin.delete("/api/fleet/aliases/team-chat").status_code == 200

        # The seeded upstream removed: a is asked no more, by any worker.
        removed = admin.delete("/api/fleet/upstreams/target-1")
        answered = time.monotonic()
        assert removed.status_code == 200, removed.text
        within_a_second(lambda: sampled(stack, key, models) == {frozenset({"model-c"})}, answered)
        asked = len(a.seen)
        sampled(stack, key, lambda client: client.get("/v1/models").status_code)
        sampled(
            stack,
            key,
            lambda client: (
                client.post(
                    "/v1/chat/completions", json={"model": "model-c", "messages": []}
                ).status_code
            ),
        )
        assert len(a.seen) == asked
        eventually(lambda: workers_report(stack, {c_id}))
    assert "upstreams loaded" in stack.output()
