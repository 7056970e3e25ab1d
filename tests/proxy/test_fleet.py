"""The proxy follows data/upstreams.json without a restart (services/proxy/fleet.py)."""

from __future__ import annotations

import concurrent.futures
import json
import threading

import httpx

from shared import files
from tests.conftest import eventually


def write(proxy, upstreams: list[dict], aliases: list[dict] | None = None) -> None:
    document = {"version": 1, "upstreams": upstreams, "aliases": aliases or []}
    files.write_json_atomic(proxy.settings.fleet_file, document)


def entry(upstream, id_: str, **more) -> dict:
    return {"id": id_, "url": upstream.url + "/v1", **({"key": upstream.key} | more)}


def model_ids(client: httpx.Client) -> set[str]:
    return {m["id"] for m in client.get("/v1/models").json()["data"]}


def test_upstreams_follow_the_file_and_target_urls_seeds_them(proxy, upstreams, api_key):
    a = upstreams("a", ["model-a"], key="key-of-a")
    b = upstreams("b", ["model-b"], key="key-of-b")
    running = proxy(a)
    with running.client(api_key) as client:
        assert model_ids(client) == {"model-a"}  # no file: TARGET_URLS
        write(running, [entry(a, "one"), entry(b, "two")])
        eventually(lambda: model_ids(client) == {"model-a", "model-b"}, timeout=10)
        r = client.post("/v1/chat/completions", json={"model": "model-b", "messages": []})
        assert r.json()["choices"][0]["message"]["content"] == "hello from b"
        assert b.seen[-1].headers["Authorization"] == "Bearer key-of-b"
        write(running, [entry(b, "two")])
        eventually(lambda: model_ids(client) == {"model-b"}, timeout=10)
        asked = len(a.seen)
        r = client.post("/v1/chat/completions", json={"model": "model-a", "messages": []})
        # One upstream takes every model (as with TARGET_URLS): a is asked no more.
        assert r.json()["choices"][0]["message"]["content"] == "hello from b"
        assert len(a.seen) == asked
        # The file gone: TARGET_URLS again.
        running.settings.fleet_file.unlink()
        eventually(lambda: model_ids(client) == {"model-a"}, timeout=10)
    heartbeat = running.runtime.catalog.states[0].report()
    assert heartbeat["id"] == "target-1"


def test_a_broken_file_keeps_the_upstreams_in_force(proxy, upstreams, api_key, caplog):
    a = upstreams("a", ["model-a"])
    b = upstreams("b", ["model-b"])
    running = proxy(a)
    with running.client(api_key) as client:
        write(running, [entry(b, "two")])
        eventually(lambda: model_ids(client) == {"model-b"}, timeout=10)
        running.settings.fleet_file.write_text('{"upstreams": [{"id": "x", "url": "ftp://h"}]}')
        # (Written in place: the watch may see the empty file first, then the whole.)
        fleet = running.runtime.fleet
        eventually(lambda: "upstreams.0.url" in (fleet.last_error or ""), timeout=10)
        assert model_ids(client) == {"model-b"}
        write(running, [entry(a, "one")])
        eventually(lambda: model_ids(client) == {"model-a"}, timeout=10)
        assert running.runtime.fleet.last_error is None
    assert "serving the last good ones" in caplog.text


def test_a_request_on_a_removed_upstream_finishes_there(proxy, upstreams, api_key):
    a = upstreams("a", ["model-a"], held=True)
    b = upstreams("b", ["model-b"])
    running = proxy(a)
    with running.client(api_key) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            client.post, "/v1/chat/completions", json={"model": "model-a", "messages": []}
        )
        eventually(lambda: a.active == 1, timeout=10)
        write(running, [entry(b, "two")])
        with httpx.Client(base_url=running.url, headers=client.headers) as other:
            eventually(lambda: model_ids(other) == {"model-b"}, timeout=10)
        a.release()
        answer = pending.result(10)
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "hello from a"


def test_an_unchanged_upstream_keeps_its_state_and_a_filter_hides_models(proxy, upstreams, api_key):
    a = upstreams("a", ["llama-1", "qwen-1"])
    running = proxy(a)
    catalog = running.runtime.catalog
    assert catalog is not None
    with running.client(api_key) as client:
        assert model_ids(client) == {"llama-1", "qwen-1"}
        before = catalog.states[0]
        write(running, [entry(a, "target-1")])  # TARGET_URLS's, written down as is
        eventually(lambda: running.runtime.fleet._signature == _sig(running), timeout=10)
        assert catalog.states[0] is before
        write(running, [entry(a, "target-1", models=["llama*"])])
        eventually(lambda: model_ids(client) == {"llama-1"}, timeout=10)
        assert catalog.serving("qwen-1") == []


def _sig(running):
    from shared.watch import signature

    return signature(running.settings.fleet_file)


def test_stat_poll_catches_changes_inotify_misses(proxy, upstreams, api_key):
    a = upstreams("a", ["model-a"])
    b = upstreams("b", ["model-b"])
    running = proxy(a)
    done = threading.Event()

    def stop_observer() -> None:
        running.runtime.fleet._watch._observer.stop()  # as on a bind mount inotify does not see
        done.set()

    running.server_loop().call_soon_threadsafe(stop_observer)
    assert done.wait(5)
    with running.client(api_key) as client:
        write(running, [entry(b, "two")])
        eventually(lambda: model_ids(client) == {"model-b"}, timeout=10)
    assert json.loads(running.settings.fleet_file.read_text())["upstreams"][0]["id"] == "two"
