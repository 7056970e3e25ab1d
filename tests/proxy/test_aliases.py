"""Model aliases (services/proxy/aliases.py): which deployment, and the body it gets."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import cast

import openai
import pytest

from services.proxy.aliases import order, resolve, rewrite_model, weighted
from services.proxy.catalog import Catalog
from services.proxy.errors import ProxyError
from services.proxy.upstream import UpstreamClient
from shared import files
from shared.apikeys import ApiKey, write_keys
from shared.fleet import Alias, Deployment
from tests.conftest import eventually, make_settings


def test_a_json_body_gets_the_upstream_model_and_keeps_everything_else():
    body = (
        b'{"messages":[{"role":"user","content":"caf\\u00e9 \xf0\x9f\x98\x80"}],"model":"chat",'
        b'"temperature":0.1,"n":12345678901234567,"x":1e-7}'
    )
    out = json.loads(rewrite_model("application/json", body, "llama-3-70b"))
    assert out == {**json.loads(body), "model": "llama-3-70b"}
    assert list(out) == ["messages", "model", "temperature", "n", "x"]  # order kept


def test_a_body_only_python_reads_is_rewritten_by_python():
    body = b'{"model":"chat","big":123456789012345678901234567890,"t":NaN}'
    out = rewrite_model("application/json", body, "real")
    assert out == b'{"model":"real","big":123456789012345678901234567890,"t":NaN}'


def test_a_multipart_form_gets_the_upstream_model_in_its_field_only():
    form = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        b"model chat model\r\n"  # the same words in the file: left alone
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\n'
        b"chat\r\n"
        b"--XyZ--\r\n"
    )
    out = rewrite_model("multipart/form-data; boundary=XyZ", form, "whisper-large")
    assert out == form.replace(b"\r\n\r\nchat\r\n", b"\r\n\r\nwhisper-large\r\n")
    assert b"model chat model" in out


def catalog_of(tmp_path, count: int) -> Catalog:
    """A catalog of `count` upstreams, `u1`, `u2`... (never asked for anything)."""
    urls = ",".join(f"http://127.0.0.1:{9000 + n}" for n in range(count))
    settings = make_settings(tmp_path, target_urls=urls)
    catalog = Catalog(settings, cast(UpstreamClient, None))
    named = tuple(replace(u, id=f"u{u.index}") for u in settings.target_urls)
    catalog.apply(named, [])  # the same upstreams: kept, with their ids
    return catalog


def first(deployments: list[Deployment]) -> Deployment:
    return deployments[0]


def models_of(pairs) -> list[str]:
    return [deployment.model for _, deployment in pairs]


def test_healthy_deployments_come_first_then_by_priority(tmp_path):
    catalog = catalog_of(tmp_path, 3)
    alias = Alias(
        name="chat",
        deployments=[
            Deployment(upstream="u3", model="c", priority=2),
            Deployment(upstream="u1", model="a", priority=0),
            Deployment(upstream="u2", model="b", priority=1),
        ],
    )
    assert models_of(order(catalog, alias, first, now=0.0)) == ["a", "b", "c"]
    catalog.states[0].healthy = False
    assert models_of(order(catalog, alias, first, now=0.0)) == ["b", "c", "a"]
    catalog.states[1].cool_until = 10.0  # its Retry-After runs until then
    assert models_of(order(catalog, alias, first, now=5.0)) == ["c", "a", "b"]
    assert models_of(order(catalog, alias, first, now=10.0)) == ["b", "c", "a"]


def test_resolve_gives_each_deployment_its_own_body(tmp_path):
    catalog = catalog_of(tmp_path, 2)
    catalog.aliases = {
        "chat": Alias(
            name="chat",
            deployments=[
                Deployment(upstream="u1", model="big"),
                Deployment(upstream="u2", model="small", priority=1),
            ],
        )
    }
    route = resolve(catalog, "chat", "application/json", b'{"model":"chat","n":1}', first)
    assert route is not None and route.fallback is None
    assert [(a.state.upstream.id, a.model, json.loads(a.body)) for a in route.attempts] == [
        ("u1", "big", {"model": "big", "n": 1}),
        ("u2", "small", {"model": "small", "n": 1}),
    ]
    assert resolve(catalog, "big", "application/json", b'{"model":"big"}', first) is None


def test_weights_spread_the_draws_within_a_priority(tmp_path):
    catalog = catalog_of(tmp_path, 2)
    alias = Alias(
        name="chat",
        deployments=[
            Deployment(upstream="u1", model="a", weight=3),
            Deployment(upstream="u2", model="b", weight=1),
        ],
    )
    drawn = [models_of(order(catalog, alias, weighted))[0] for _ in range(2000)]
    assert 0.68 < drawn.count("a") / len(drawn) < 0.82


def test_an_alias_without_an_upstream_in_the_catalog_is_a_503(tmp_path):
    catalog = catalog_of(tmp_path, 1)
    alias = Alias(name="chat", deployments=[Deployment(upstream="gone", model="m")])
    with pytest.raises(ProxyError) as caught:
        order(catalog, alias, first)
    assert caught.value.status == 503


def test_an_alias_is_listed_served_and_recorded_under_both_names(tmp_path, proxy, upstreams):
    a = upstreams("a", ["llama-3-70b"], key="key-of-a")
    b = upstreams("b", ["qwen"])
    key = ApiKey.new("aliased").updated({"models": ("chat",)})  # may use the public name only
    write_keys(tmp_path / "data" / "apikeys.json", [key])
    running = proxy(a, b)
    files.write_json_atomic(
        running.settings.fleet_file,
        {
            "version": 1,
            "upstreams": [
                {"id": "one", "url": a.url + "/v1", "key": "key-of-a"},
                {"id": "two", "url": b.url + "/v1"},
            ],
            "aliases": [
                {"name": "chat", "deployments": [{"upstream": "one", "model": "llama-3-70b"}]}
            ],
        },
    )
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=key.key, max_retries=0)
    eventually(lambda: [m.id for m in client.models.list()] == ["chat"], timeout=10)
    assert client.models.retrieve("chat").owned_by == "llmp"
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "hello from a"
    assert json.loads(a.seen[-1].body)["model"] == "llama-3-70b"
    stream = client.chat.completions.create(model="chat", messages=[], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.PermissionDeniedError):  # the real name is not the key's to use
        client.chat.completions.create(model="llama-3-70b", messages=[])
    rows = [r for r in running.rows() if r["path"] == "/v1/chat/completions"]
    assert [(r["model"], r["upstream_model"], r["status"]) for r in rows] == [
        ("chat", "llama-3-70b", 200),
        ("chat", "llama-3-70b", 200),
        ("llama-3-70b", None, 403),
    ]


def test_least_busy_puts_the_fewest_in_flight_first_within_a_priority(tmp_path):
    catalog = catalog_of(tmp_path, 3)
    alias = Alias(
        name="chat",
        strategy="least-busy",
        deployments=[
            Deployment(upstream="u1", model="a"),
            Deployment(upstream="u2", model="b"),
            Deployment(upstream="u3", model="c", priority=1),
        ],
    )
    catalog.states[0].in_flight = 2
    catalog.states[1].in_flight = 1
    assert models_of(order(catalog, alias, first, now=0.0)) == ["b", "a", "c"]
    catalog.states[1].in_flight = 2  # a tie: the draw decides
    assert models_of(order(catalog, alias, first, now=0.0)) == ["a", "b", "c"]
    weighted_alias = alias.model_copy(update={"strategy": "weighted"})
    catalog.states[1].in_flight = 0
    assert models_of(order(catalog, weighted_alias, first, now=0.0)) == ["a", "b", "c"]


def weighted_against(tmp_path, proxy, strategy: str, heavy, light) -> openai.OpenAI:
    """The proxy on `heavy` (its model `big`) and `light` (`small`), serving the alias `chat` by
    `strategy` over both, weighted 1000 to 1: by weight alone nearly every request would go to
    `heavy`. Returns a client of the proxy with a key of its own."""
    key = ApiKey.new("alias")
    write_keys(tmp_path / "data" / "apikeys.json", [key])
    running = proxy(heavy, light)
    deployments = [
        {"upstream": "h", "model": "big", "weight": 1000},
        {"upstream": "l", "model": "small", "weight": 1},
    ]
    fleet = {
        "version": 1,
        "upstreams": [{"id": "h", "url": heavy.url + "/v1"}, {"id": "l", "url": light.url + "/v1"}],
        "aliases": [{"name": "chat", "strategy": strategy, "deployments": deployments}],
    }
    files.write_json_atomic(running.settings.fleet_file, fleet)
    eventually(lambda: "chat" in running.runtime.catalog.aliases)
    return openai.OpenAI(base_url=running.url + "/v1", api_key=key.key, max_retries=0)


def test_least_busy_sends_the_second_request_to_the_idle_deployment(tmp_path, proxy, upstreams):
    heavy = upstreams("heavy", ["big"], held=True)
    light = upstreams("light", ["small"], held=True)
    client = weighted_against(tmp_path, proxy, "least-busy", heavy, light)
    with ThreadPoolExecutor(2) as pool:
        first_reply = pool.submit(client.chat.completions.create, model="chat", messages=[])
        eventually(lambda: heavy.active + light.active == 1)
        second_reply = pool.submit(client.chat.completions.create, model="chat", messages=[])
        eventually(lambda: heavy.active == 1 and light.active == 1)  # one each
        heavy.release()
        light.release()
        replies = {first_reply.result(30).model, second_reply.result(30).model}
    assert replies == {"big", "small"}
