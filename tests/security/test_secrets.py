"""No key, password, JWT or prompt in any log line, state file or error body.

A stack of its own, with distinctive secrets: the admin password, the JWT secret, upstream keys
(one upstream that answers, one that hangs, one that is down), API keys (live, revoked, wrong)
and a prompt. It is driven through what leaks most: failed and good logins, issued and forged
JWTs, keys in admin paths (`/api/keys/validate/{key}`), bad keys, upstream timeouts, bodies too
large or not JSON, and nginx's own error lines while the api is down. Then every line the stack
printed (supervisord's output: every program's and nginx's), every file it wrote outside the
key file and `.env`, and every error body it answered are searched for each secret.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from services.api import sessions
from services.api.app import create_app
from shared.logs import _Formatter
from tests.conftest import eventually, free_port, make_settings
from tests.stack.conftest import Stack
from tests.upstream import FakeUpstream


@dataclass
class Secrets:
    password: str = "pw-" + secrets.token_hex(12)
    jwt_secret: str = "jwt-secret-" + secrets.token_hex(24)
    prompt: str = "PROMPT-" + secrets.token_hex(12) + " tell me a secret"
    upstream_keys: dict[str, str] = field(
        default_factory=lambda: {n: f"upk-{n}-" + secrets.token_hex(12) for n in ("ok", "hang")}
    )
    dead_key: str = "upk-dead-" + secrets.token_hex(12)
    wrong_passwords: list[str] = field(
        default_factory=lambda: ["wrongpw-" + secrets.token_hex(8) for _ in range(2)]
    )
    seen: dict[str, str] = field(default_factory=dict)  # more secrets, met while driving

    def all(self) -> dict[str, str]:
        found = {
            "password": self.password,
            "JWT secret": self.jwt_secret,
            "prompt": self.prompt.split()[0],
            "dead upstream key": self.dead_key,
            **{f"upstream key {n}": k for n, k in self.upstream_keys.items()},
            **{f"wrong password {i}": p for i, p in enumerate(self.wrong_passwords)},
            **self.seen,
        }
        for name, value in list(found.items()):
            if value.startswith("sk-"):
                found[name + " (hex alone)"] = value[3:]
        return found


@dataclass
class Drive:
    stack: Stack
    secrets: Secrets
    errors: list[str] = field(default_factory=list)  # every error answer: status, headers, body

    def keep(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            self.errors.append(f"{r.status_code} {r.headers} {r.text}")  # what it answered
        return r


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drive]:
    s = Secrets()
    ok = FakeUpstream("ok", ["m-ok"], key=s.upstream_keys["ok"]).start()
    hang = FakeUpstream("hang", ["m-hang"], key=s.upstream_keys["hang"], hang=True).start()
    targets = f"{ok.url}|{ok.key},{hang.url}|{hang.key},http://127.0.0.1:{free_port()}|{s.dead_key}"
    stack = Stack(
        tmp_path_factory.mktemp("secrets"),
        [],
        workers=1,
        env={
            "TARGET_URLS": targets,
            "AUTH_PASSWORD": s.password,
            "JWT_SECRET": s.jwt_secret,
            "UPSTREAM_READ_TIMEOUT": "1",
            "LOGIN_MAX_FAILURES": "10",
        },
    ).start()
    try:
        drive = Drive(stack, s)
        _drive(drive)
        yield drive
    finally:
        stack.stop()
        ok.stop()
        hang.stop()


def _drive(d: Drive) -> None:
    stack, s = d.stack, d.secrets
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        # Logins: wrong passwords (one in the username field too), then the right one.
        for wrong in s.wrong_passwords:
            d.keep(c.post("/auth/login", json={"username": "admin", "password": wrong}))
        d.keep(c.post("/auth/login", json={"username": s.wrong_passwords[0], "password": "x" * 9}))
        d.keep(c.post("/auth/token", data={"username": "admin", "password": s.wrong_passwords[1]}))
        assert c.post("/auth/login", json={"username": "admin", "password": s.password}).is_success
        token = c.post("/auth/token", json={"username": "admin", "password": s.password}).json()
        s.seen["issued JWT"] = token["token"]
        s.seen["cookie JWT"] = c.cookies["auth_token"]
        bearer = {"Authorization": f"Bearer {token['token']}"}
        expired = jwt.encode({"username": "admin", "iat": 1, "exp": 2}, s.jwt_secret, "HS256")
        s.seen["expired JWT"] = expired
        d.keep(c.get("/api/me", headers={"Authorization": f"Bearer {expired}"}))
        d.keep(c.get("/api/me", headers={"Authorization": f"Bearer {expired[:-3]}abc"}))

        # Keys: one live, one revoked, both also in admin paths.
        live = c.post("/api/keys", json={"username": "alice"}).json()["key"]["key"]
        gone = c.post("/api/keys", json={"username": "bob"}, headers=bearer).json()["key"]
        assert c.delete(f"/api/keys/{gone['id']}").is_success
        s.seen["API key"], s.seen["revoked API key"] = live, gone["key"]
        s.seen["wrong API key"] = "sk-" + secrets.token_hex(32)
        for path in (
            f"/api/keys/validate/{live}",
            f"/api/keys/validate/{live[3:]}",
            f"/api/analytics/{live}",
            f"/api/analytics/{live}/csv",
            f"/api/analytics/summary?keyId={live}",
            f"/api/analytics/{live}?startDate=abc",
        ):
            d.keep(c.get(path))

        # The proxy: good, streamed, timed out, refused and malformed requests with the prompt.
        auth = {"Authorization": f"Bearer {live}"}
        chat = {"messages": [{"role": "user", "content": s.prompt}]}
        eventually(lambda: c.get("/v1/models", headers=auth).status_code == 200, timeout=5)
        assert c.post("/v1/chat/completions", json={**chat, "model": "m-ok"}, headers=auth)
        streamed = c.post(
            "/v1/chat/completions", json={**chat, "model": "m-ok", "stream": True}, headers=auth
        )
        assert streamed.status_code == 200
        d.keep(c.post("/v1/chat/completions", json={**chat, "model": "m-hang"}, headers=auth))
        d.keep(c.post("/v1/chat/completions", json={**chat, "model": "nope"}, headers=auth))
        for wrong in (s.seen["wrong API key"], gone["key"]):
            d.keep(c.post("/v1/chat/completions", json=chat, headers={"x-api-key": wrong}))
            d.keep(c.post("/v1/chat/completions", json=chat, headers={"Authorization": wrong}))
        d.keep(c.post(f"/v1/chat/completions?api_key={s.seen['wrong API key']}", json=chat))
        d.keep(
            c.post(
                "/v1/chat/completions",
                content=f'{{"model": "m-ok", "messages": "{s.prompt}" oops'.encode(),
                headers={**auth, "content-type": "application/json"},
            )
        )
        big = f'{{"model": "m-ok", "prompt": "{s.prompt}{"x" * (1024 * 1024)}"}}'.encode()
        d.keep(c.post("/v1/completions", content=big, headers=auth))
        d.keep(c.post("/api/keys", content=big, headers=bearer))
        d.keep(c.post("/v1/chat/completions", json={**chat, "model": ["m-ok"]}, headers=auth))

        # nginx's own error lines: the api down while admin paths carry a key.
        with stack.supervisor() as supervisor:
            supervisor.stopProcess("api")
            try:
                for path in (f"/api/keys/validate/{live}", f"/api/analytics/{live}"):
                    r = d.keep(c.get(path))
                    assert r.status_code == 502, r.text
            finally:
                supervisor.startProcess("api")
        eventually(lambda: c.get("/api/me", headers=bearer).status_code == 200, timeout=15)

        # Answers that are not errors but describe the running system.
        for path in ("/healthz", "/api/upstreams", "/nginx/status", "/metrics"):
            d.errors.append(c.get(path, headers=bearer).text)
    time.sleep(0.5)  # lines below WARNING are written at most 0.2 s late


KEY_FILES = ("apikeys.json", "apikeys.json.last-good")  # must hold the keys; 0600


def _written_files(home: Path) -> Iterator[Path]:
    """Everything the stack wrote but the key file and its last good copy, and `env`."""
    for path in sorted(home.rglob("*")):
        if path.is_file() and path.name not in (*KEY_FILES, "env"):
            yield path


def _where(text: str, secret: str) -> str:
    at = text.index(secret)
    return text[max(0, at - 200) : at + len(secret) + 50]


def test_no_secret_in_any_log_line(driven: Drive):
    output = driven.stack.output()
    assert "login failed" in output and " nginx " in output  # the lines searched are there
    for name, secret in driven.secrets.all().items():
        assert secret not in output, f"{name} in the log: {_where(output, secret)}"


def test_no_secret_in_any_file_written(driven: Drive):
    files = list(_written_files(driven.stack.home))
    assert any(p.name == "analytics.db" for p in files)
    for name in KEY_FILES:
        assert (driven.stack.data / name).stat().st_mode & 0o077 == 0
    for path in files:
        content = path.read_bytes().decode("latin-1")
        for name, secret in driven.secrets.all().items():
            assert secret not in content, f"{name} in {path}: {_where(content, secret)}"


def test_no_secret_in_any_error_body(driven: Drive):
    assert len(driven.errors) > 20
    # The wrong key and the JWTs were sent to the routes answered here; none may come back.
    for body in driven.errors:
        for name, secret in driven.secrets.all().items():
            assert secret not in body, f"{name} in an answer: {body[:300]}"


def test_an_unexpected_error_logs_the_route_not_the_key_in_its_path(tmp_path, caplog):
    settings = make_settings(tmp_path, jwt_secret="k" * 40, auth_password="a-good-password")
    app = create_app(settings)

    def broken(key: str) -> None:
        raise RuntimeError("the key file went away")

    app.state.keyfile.find = broken
    key = "sk-" + secrets.token_hex(32)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get(
            f"/api/keys/validate/{key}",
            headers={"Authorization": f"Bearer {sessions.for_settings(settings).issue('admin')}"},
        )
    assert (r.status_code, r.json()) == (
        500,
        {"success": False, "message": "Internal server error"},
    )
    ours = _Formatter("api")  # how the api's lines are printed, fields included
    lines = "\n".join(ours.format(rec) for rec in caplog.records if rec.name.startswith("api"))
    assert "unexpected error route=/api/keys/validate/{key}" in lines
    assert key[3:] not in lines
