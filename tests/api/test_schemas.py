"""Every route's real answer, through the real app, against the schema its operation declares in
the OpenAPI document (services/api/schemas.py): a schema that says less, more or otherwise than
what the route answers fails here, and so does a documented operation no case calls.

The app runs on data that fills every field that can be filled: keys with every policy field and
a budget, analytics rows with failures and streams, prices, proxy and certd heartbeats, and a
certd played by a thread that applies each generation of the site the way certd reports it (the
real one is in tests/stack/test_tls.py).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2  # what starlette's TestClient answers with
import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from services.api import sessions
from services.api.app import create_app
from shared import analytics
from shared.analytics import RequestRow
from shared.apikeys import ApiKey, Budget, Limits, write_keys
from shared.files import write_json_atomic
from shared.prices import Price, Prices, write_prices
from shared.settings import Settings
from shared.site import CertdStatus, Site, no_outcome, read_site, update_site, write_status
from tests.conftest import free_port, make_settings
from tests.upstream import FakeUpstream

ISSUED = "llm.example.com"  # the certificate certd reports as issued; others never are


@dataclass
class World:
    api: TestClient
    settings: Settings
    alice: ApiKey  # every policy field set
    bob: ApiKey  # none
    carol: ApiKey  # never used
    made: dict[str, str] = dataclasses.field(default_factory=dict)  # ids made by a case's `before`


class Certd:
    """Applies each generation of site.json and each reload or renewal asked for, as certd
    reports them in status.json, until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="fake-certd", daemon=True)

    def status(self) -> CertdStatus:
        site = read_site(self.settings.site_file)
        certificates = [
            {
                "name": c.name,
                "domains": list(c.domains),
                "notAfter": "2099-01-01T00:00:00Z" if c.name == ISSUED else None,
                "lastRenewal": "2026-01-01T00:00:00Z" if c.name == ISSUED else None,
                "lastError": None,
            }
            for c in site.wanted_certificates()
        ]
        return {
            "appliedGeneration": site.generation,
            "applied": {**no_outcome(), "handled": site.generation},
            "nginx": {"ok": True, "error": None, "at": time.time()},
            "certificates": certificates,  # type: ignore[typeddict-item]
            "reload": {**no_outcome(), "handled": site.reload_requested, "at": time.time()},
            "renew": {**no_outcome(), "handled": site.renew_requested, "at": time.time()},
            "defaultConfig": "# the default\n",
        }

    def run(self) -> None:
        written = None
        while not self.stopped.wait(0.02):
            site = read_site(self.settings.site_file)
            if site != written:
                write_status(self.settings.certd_status_file, self.status())
                written = site


def _heartbeats(settings: Settings) -> None:
    now = time.time()
    upstream = {  # as services/proxy/catalog.py's UpstreamState.report() writes it
        "id": "target-1",
        "url": "http://gpu-1:11434",
        "healthy": False,
        "models": ["llama3:8b", "qwen2.5:7b"],
        "in_flight": 2,
        "queued": 1,
        "concurrency": 4,
        "last_ok": now - 30,
        "last_error": "connection refused",
        "circuit": "cooling",
        "failures": 3,
        "cooling_until": now + 20,
        "last_failure": "HTTP 503",
    }
    idle = {
        **upstream,
        "id": "3f9a0c1d",
        "url": "http://gpu-2:8000",
        "concurrency": None,
        "last_ok": None,
    }
    proxy = {"program": "proxy", "pid": 1, "started": now, "updated": now}
    write_json_atomic(
        settings.run_dir / "proxy-1.json",
        {**proxy, "upstreams": [upstream, idle], "keys_error": "apikeys.json: not JSON"},
    )
    write_json_atomic(settings.run_dir / "proxy-2.json", {**proxy, "upstreams": [upstream, idle]})
    write_json_atomic(
        settings.run_dir / "certd.json",
        {
            "program": "certd",
            "pid": 2,
            "started": now,
            "updated": now,
            "last_error": "renewal failed",
            "nginx": {"ok": False, "error": "nginx -t failed", "at": now},
        },
    )


def _rows(alice: ApiKey, bob: ApiKey, now: int) -> list[RequestRow]:
    rows = []
    for i in range(40):
        key = alice if i % 3 else bob
        start = now - i * 60_000 - 1000
        failed = i % 7 == 0
        rows.append(
            RequestRow(
                f"req{i:03d}",
                key.id,
                key.username,
                start,
                None if failed else start + 800 + i,
                502 if failed else 200,
                method="POST",
                path="/v1/chat/completions",
                model="model-a" if i % 2 else "model-b",
                upstream="http://gpu-1:11434",
                stream=bool(i % 2),
                ttfb_ms=None if failed else 100.5,
                prompt_tokens=10,
                completion_tokens=None if failed else 90,
                bytes_in=200,
                bytes_out=0 if failed else 900,
                error="upstream refused" if failed else None,
                queue_ms=2.5 if i % 4 == 0 else None,
                usage_estimated=i % 5 == 0,
                end_user="user-7" if i % 2 else None,
            )
        )
    return rows


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    running = FakeUpstream("a", ["llama-a", "qwen-a"], key="sk-upstream-0123456789").start()
    yield running
    running.stop()


@pytest.fixture
def world(tmp_path: Path, upstream: FakeUpstream) -> Iterator[World]:
    settings = make_settings(
        tmp_path,
        log_level="ERROR",
        jwt_secret="k" * 40,
        certd_wait_seconds=60.0,
        target_urls=f"{upstream.url}|sk-upstream-0123456789|concurrency=2",
    )
    alice = ApiKey.new("alice").updated(
        {
            "enabled": False,
            "expiresAt": "2099-01-01T00:00:00.000Z",
            "models": ("llama3*",),
            "limits": Limits(requestsPerMinute=60, maxConcurrent=2).to_json(),  # type: ignore[typeddict-item]
            "budget": Budget("month", 1_000_000, 5.0),
        }
    )
    bob, carol = ApiKey.new("bob"), ApiKey.new("carol")
    write_keys(settings.apikeys_file, [alice, bob, carol])
    write_prices(settings.prices_file, Prices("EUR", {"model-a": Price(1.0, 2)}))
    db = analytics.connect(settings.analytics_db)
    analytics.insert(db, _rows(alice, bob, int(time.time() * 1000)))
    db.close()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    _heartbeats(settings)
    certd = Certd(settings)
    certd.thread.start()
    token = sessions.for_settings(settings).issue("admin")
    try:
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as api:
            yield World(api, settings, alice, bob, carol)
    finally:
        certd.stopped.set()
        certd.thread.join()


@dataclass(frozen=True)
class Case:
    """A request to one documented operation (`template`) and the status it must answer."""

    method: str
    template: str
    path: Callable[[World], str] | str
    status: int = 200
    body: Callable[[World], Any] | Any = None
    headers: dict[str, str] | None = None
    before: Callable[[World], object] | None = None

    def send(self, world: World) -> httpx2.Response:
        if self.before is not None:
            self.before(world)
        path = self.path(world) if callable(self.path) else self.path
        body = self.body(world) if callable(self.body) else self.body
        return world.api.request(self.method, path, json=body, headers=self.headers)


NOBODY = {"Authorization": ""}


def login(world: World) -> dict[str, str]:
    return {"username": world.settings.auth_username, "password": world.settings.auth_password}


def _healthy(world: World) -> None:
    """Both proxy workers and certd up, nginx's configuration taken."""
    now = time.time()
    beat = {"program": "proxy", "pid": 1, "started": now, "updated": now, "upstreams": []}
    for name in ("proxy-1", "proxy-2"):
        write_json_atomic(world.settings.run_dir / f"{name}.json", beat)
    certd = {"program": "certd", "pid": 2, "started": now, "updated": now}
    nginx = {"ok": True, "error": None, "at": now}
    write_json_atomic(world.settings.run_dir / "certd.json", {**certd, "nginx": nginx})


POLICY = {
    "enabled": True,
    "expiresAt": "2098-05-01T00:00:00Z",
    "models": ["qwen*"],
    "limits": {"tokensPerDay": 1000},
    "budget": {"period": "week", "tokens": 5000, "cost": 2},
}


def _soon(world: World) -> dict[str, str]:
    return {"until": (datetime.now(UTC) + timedelta(days=1)).isoformat()}


def _alias(world: World) -> None:
    deployments = [{"upstream": "target-1", "model": "llama-a"}]
    assert world.api.put("/api/fleet/aliases/chat", json={"deployments": deployments}).is_success


def _down(world: World) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    added = world.api.post("/api/fleet/upstreams", json={"url": url, "name": "down"})
    world.made["down"] = added.json()["upstream"]["id"]


CASES = [
    Case("GET", "/healthz", "/healthz", 503),
    Case("GET", "/healthz", "/healthz", before=_healthy),
    Case("GET", "/api/upstreams", "/api/upstreams"),
    Case("GET", "/api/upstreams", "/api/upstreams", 401, headers=NOBODY),
    Case("POST", "/auth/login", "/auth/login", body=login),
    Case("POST", "/auth/login", "/auth/login", 401, body=lambda w: {**login(w), "password": "x"}),
    Case("POST", "/auth/login", "/auth/login", 400, body={"username": "admin"}),
    Case("POST", "/auth/token", "/auth/token", body=login),
    Case("POST", "/auth/logout", "/auth/logout"),
    Case("GET", "/api/me", "/api/me"),
    Case("GET", "/api/me", "/api/me", 401, headers=NOBODY),
    Case("GET", "/api/keys", "/api/keys"),
    Case("GET", "/api/keys", "/api/keys?state=colour", 400),
    Case("GET", "/api/keys", "/api/keys", 401, headers=NOBODY),
    Case("POST", "/api/keys", "/api/keys", body={"username": "erin", **POLICY}),
    Case("POST", "/api/keys", "/api/keys", body={"username": "dave"}),
    Case("POST", "/api/keys", "/api/keys", 400, body={"username": "alice"}),
    Case("PATCH", "/api/keys/{key_id}", lambda w: f"/api/keys/{w.bob.id}", body=POLICY),
    Case("PATCH", "/api/keys/{key_id}", lambda w: f"/api/keys/{w.alice.id}", body={"limits": {}}),
    Case("PATCH", "/api/keys/{key_id}", "/api/keys/nobody", 404, body={"enabled": True}),
    Case("DELETE", "/api/keys/{key_id}", lambda w: f"/api/keys/{w.alice.id}"),
    Case("DELETE", "/api/keys/{key_id}", "/api/keys/nobody", 404),
    Case("POST", "/api/keys/{key_id}/rotate", lambda w: f"/api/keys/{w.bob.id}/rotate", body=_soon),
    Case("POST", "/api/keys/{key_id}/rotate", lambda w: f"/api/keys/{w.bob.id}/rotate", body={}),
    Case("POST", "/api/keys/{key_id}/rotate", "/api/keys/nobody/rotate", 404, body={}),
    Case("GET", "/api/keys/validate/{key}", lambda w: f"/api/keys/validate/{w.alice.key}"),
    Case("GET", "/api/keys/validate/{key}", "/api/keys/validate/" + "0" * 64),
    Case("GET", "/api/analytics/{key}", lambda w: f"/api/analytics/{w.carol.id}"),
    Case("GET", "/api/keys/validate/{key}", "/api/keys/validate/nonsense", 400),
    Case("GET", "/api/analytics/summary", "/api/analytics/summary"),
    Case("GET", "/api/analytics/summary", lambda w: f"/api/analytics/summary?keyId={w.alice.id}"),
    Case("GET", "/api/analytics/summary", "/api/analytics/summary?bucket=day"),
    Case("GET", "/api/analytics/summary", "/api/analytics/summary?startDate=x", 400),
    *(
        Case("GET", "/api/analytics/breakdown", f"/api/analytics/breakdown?by={by}")
        for by in ("key", "model", "upstream")
    ),
    *(
        Case("GET", "/api/analytics/spend", f"/api/analytics/spend?by={by}&period={period}")
        for by in ("key", "model")
        for period in ("day", "week", "month")
    ),
    Case("GET", "/api/analytics/prices", "/api/analytics/prices"),
    Case(
        "PUT",
        "/api/analytics/prices",
        "/api/analytics/prices",
        body={"currency": "USD", "models": {"model-b": {"prompt": 0.5, "completion": 1}}},
    ),
    Case("PUT", "/api/analytics/prices", "/api/analytics/prices", 400, body={"currency": "x"}),
    Case("GET", "/api/analytics/requests", "/api/analytics/requests?limit=5"),
    Case("GET", "/api/analytics/requests", "/api/analytics/requests?outcome=server_error"),
    Case("GET", "/api/analytics/requests/{request_id}", "/api/analytics/requests/req001"),
    Case("GET", "/api/analytics/requests/{request_id}", "/api/analytics/requests/nope", 404),
    Case("GET", "/api/analytics/{key}", lambda w: f"/api/analytics/{w.alice.id}"),
    Case("GET", "/api/analytics/{key}", lambda w: f"/api/analytics/{w.bob.key}"),
    Case("GET", "/api/analytics/{key}/csv", lambda w: f"/api/analytics/{w.alice.id}/csv"),
    Case("GET", "/api/fleet", "/api/fleet"),
    Case("GET", "/api/fleet", "/api/fleet", before=_alias),
    Case(
        "POST",
        "/api/fleet/upstreams",
        "/api/fleet/upstreams",
        body={"url": "http://b:8000", "key": "user:secret", "auth": "basic", "models": ["b*"]},
    ),
    Case("POST", "/api/fleet/upstreams", "/api/fleet/upstreams", 400, body={"url": "ftp://b"}),
    Case(
        "PATCH",
        "/api/fleet/upstreams/{upstream_id}",
        "/api/fleet/upstreams/target-1",
        body={"concurrency": 3, "verify": False},
    ),
    Case("DELETE", "/api/fleet/upstreams/{upstream_id}", "/api/fleet/upstreams/target-1"),
    Case("POST", "/api/fleet/upstreams/{upstream_id}/test", "/api/fleet/upstreams/target-1/test"),
    Case(
        "POST",
        "/api/fleet/upstreams/{upstream_id}/test",
        lambda w: f"/api/fleet/upstreams/{w.made['down']}/test",
        before=_down,
    ),
    Case(
        "PUT",
        "/api/fleet/aliases/{name}",
        "/api/fleet/aliases/chat",
        before=_alias,
        body={
            "deployments": [{"upstream": "target-1", "model": "qwen-a", "weight": 2, "priority": 1}]
        },
    ),
    Case("DELETE", "/api/fleet/aliases/{name}", "/api/fleet/aliases/chat", before=_alias),
    Case("DELETE", "/api/fleet/aliases/{name}", "/api/fleet/aliases/none", 404),
    Case("GET", "/nginx/status", "/nginx/status"),
    Case(
        "POST",
        "/nginx/certificates/obtain",
        "/nginx/certificates/obtain",
        body={"domains": [ISSUED], "email": "ops@example.com"},
    ),
    Case("POST", "/nginx/certificates/obtain", "/nginx/certificates/obtain", 400, body={}),
    Case("GET", "/nginx/certificates/renew", "/nginx/certificates/renew"),
    Case(
        "GET",
        "/nginx/certificates/renew",
        "/nginx/certificates/renew",
        before=lambda w: _ask_certificate(w, ISSUED, "new.example.com"),
    ),
    Case(
        "GET",
        "/nginx/certificates/renew",
        "/nginx/certificates/renew",
        409,
        before=lambda w: _ask_certificate(w, "new.example.com"),
    ),
    Case("GET", "/nginx/reload", "/nginx/reload"),
    Case(
        "POST",
        "/nginx/config/write-default",
        "/nginx/config/write-default",
        body={"domain": "llm.example.com", "cidrGroups": ["203.0.113.0/24"], "httpMode": "serve"},
    ),
    Case(
        "POST",
        "/nginx/config/update",
        "/nginx/config/update",
        body={"config": "server {\n    listen 80;\n    return 204;\n}\n"},
    ),
    Case(
        "DELETE",
        "/nginx/certificates/{name}",
        "/nginx/certificates/new.example.com",
        before=lambda w: _ask_certificate(w, "new.example.com"),
    ),
    Case("DELETE", "/nginx/certificates/{name}", "/nginx/certificates/nothing.example.com", 404),
    Case("GET", "/nginx/config/get", "/nginx/config/get", 500),
    Case("GET", "/nginx/config/get", "/nginx/config/get", before=lambda w: _server_conf(w)),
    Case("GET", "/nginx/config/get-default", "/nginx/config/get-default"),
]


def _ask_certificate(world: World, *names: str) -> None:
    """Certificates asked for (as POST /nginx/certificates/obtain would), without waiting."""

    def change(site: Site) -> Site:
        for name in names:
            site = site.with_certificate([name])
        return site

    update_site(world.settings.site_file, change)


def _server_conf(world: World) -> None:
    world.settings.nginx_conf_dir.mkdir(parents=True, exist_ok=True)
    (world.settings.nginx_conf_dir / "server.conf").write_text("server { listen 80; }\n")


def check(document: dict[str, Any], method: str, template: str, response: httpx2.Response) -> None:
    """The response is one its operation declares, in a media type it declares, and its body
    validates against that schema."""
    responses = document["paths"][template][method.lower()]["responses"]
    status = response.status_code
    declared = responses.get(str(status)) or responses.get(f"{status // 100}XX")
    assert declared is not None, f"{method} {template} answered {status}, which is undeclared"
    media = response.headers["content-type"].split(";")[0]
    assert media in declared["content"], f"{method} {template}: {media} is undeclared"
    schema = declared["content"][media]["schema"]
    body = response.json() if media == "application/json" else response.text
    validator = jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})
    errors = [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(body)
    ]
    assert errors == [], f"{method} {template} answered {status} against its schema"


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), template)
        for template, item in document["paths"].items()
        for method in item
    }


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The app's OpenAPI document (the same for any data)."""
    settings = make_settings(tmp_path_factory.mktemp("document"), log_level="ERROR")
    return create_app(settings).openapi()


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{i}: {c.method} {c.template} {c.status}" for i, c in enumerate(CASES)]
)
def test_answer_is_what_its_operation_declares(world, document, case):
    response = case.send(world)
    assert response.status_code == case.status, response.text
    check(document, case.method, case.template, response)


def test_every_operation_is_called_with_a_success(document):
    called = {(c.method, c.template) for c in CASES if 200 <= c.status < 300}
    assert called == _operations(document)


def test_every_success_declares_a_schema_that_names_its_fields(document):
    """No operation answers a free-form object: each 2xx JSON schema is a component whose
    fields are named (and no others allowed)."""
    schemas = document["components"]["schemas"]
    loose = []
    for template, item in document["paths"].items():
        for method, operation in item.items():
            for status, declared in operation["responses"].items():
                content = declared.get("content", {})
                if not status.startswith("2") or "application/json" not in content:
                    continue
                ref = content["application/json"]["schema"].get("$ref", "")
                schema = schemas.get(ref.removeprefix("#/components/schemas/"), {})
                if schema.get("additionalProperties") is not False:
                    loose.append(f"{method.upper()} {template} {status}")
    assert loose == []
