"""Who gets into the admin API, through nginx: every route in the OpenAPI document needs
credentials; forged JWTs (`alg: none`, other algorithms, bad signatures, no `exp`) are refused as
cookie and as Bearer; cookie-authenticated writes, and the GET routes that act, must come from
the api's own origin."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import warnings
from collections.abc import Iterator

import httpx
import jwt
import jwt.warnings
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from tests.conftest import make_settings
from tests.stack.conftest import ADMIN, Stack

# What answers without credentials: logging in and out, and the health check (admin networks
# only, by nginx). Everything else in the document must refuse.
PUBLIC = {
    ("POST", "/auth/login"),
    ("POST", "/auth/token"),
    ("POST", "/auth/logout"),
    ("GET", "/healthz"),
}


def _b64(part: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _sign_by_hand(claims: dict[str, object], key: bytes) -> str:
    """HS256 by hand (PyJWT refuses an empty key)."""
    signed = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    return signed + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _forgeries(secret: str) -> dict[str, str]:
    with warnings.catch_warnings():  # the forgery with an empty secret is meant to be weak
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return _forge(secret)


def _forge(secret: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"username": "admin", "iat": now, "exp": now + 3600}
    good = jwt.encode(claims, secret, algorithm="HS256")
    header, payload, signature = good.split(".")
    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "alg None": f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{_b64(claims)}.",
        "alg none, signature kept": f"{_b64({'alg': 'none'})}.{payload}.{signature}",
        "HS512 with the right secret": jwt.encode(claims, secret, algorithm="HS512"),
        "HS384 with the right secret": jwt.encode(claims, secret, algorithm="HS384"),
        "another secret": jwt.encode(claims, "x" * 64, algorithm="HS256"),
        "empty secret": _sign_by_hand(claims, b""),
        "bad signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "no signature": f"{header}.{payload}.",
        "payload swapped": f"{header}.{_b64({**claims, 'username': 'root'})}.{signature}",
        "no exp": jwt.encode({"username": "admin", "iat": now}, secret, algorithm="HS256"),
        "no iat": jwt.encode({"username": "admin", "exp": now + 60}, secret, algorithm="HS256"),
        "expired": jwt.encode(
            {"username": "admin", "iat": now - 90_000, "exp": now - 3600}, secret, "HS256"
        ),
        "username not a string": jwt.encode({**claims, "username": ["admin"]}, secret, "HS256"),
        "two tokens": f"{good} {good}",
        "the API key format": "sk-" + "a" * 64,
        "not a JWT": "admin",
    }


@pytest.fixture(scope="module")
def document(stack: Stack) -> dict[str, object]:
    with stack.admin() as admin:
        return admin.get("/api/openapi.json").json()


def _routes(document: dict[str, object]) -> Iterator[tuple[str, str]]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    for path, operations in paths.items():
        for method in operations:
            yield method.upper(), re.sub(r"\{[^}]+\}", "0" * 32, path)


def test_every_documented_route_refuses_without_credentials(stack: Stack, document):
    routes = list(_routes(document))
    assert len(routes) >= 15 and ("DELETE", "/api/keys/" + "0" * 32) in routes
    public = set()
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for method, path in routes:
            r = client.request(method, path, json={})
            if r.status_code == 401:
                assert r.json() == {"error": "Authentication required"}, (method, path)
            else:
                public.add((method, path))
    assert public == PUBLIC


@pytest.mark.parametrize("name", list(_forgeries("s" * 64)))
def test_forged_tokens_are_refused_as_cookie_and_as_bearer(stack: Stack, document, name: str):
    token = _forgeries(stack.env["JWT_SECRET"])[name]
    for method, path in (("GET", "/api/me"), ("GET", "/api/keys"), ("POST", "/api/keys")):
        as_bearer = httpx.request(
            method,
            stack.url + path,
            headers={"Authorization": f"Bearer {token}"},
            json={"username": "forger"},
            timeout=10,
        )
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            client.cookies.set("auth_token", token)
            as_cookie = client.request(method, path, json={"username": "forger"})
        for r in (as_bearer, as_cookie):
            assert r.status_code == 401, (name, method, path, r.text)
            assert r.json()["error"] in ("Invalid token", "Authentication required")
    keys = httpx.get(
        stack.url + "/api/keys",
        headers={"Authorization": f"Bearer {_good_token(stack)}"},
        timeout=10,
    ).json()["keys"]
    assert "forger" not in {k["username"] for k in keys}


def _good_token(stack: Stack) -> str:
    r = httpx.post(
        stack.url + "/auth/token", json={"username": ADMIN[0], "password": ADMIN[1]}, timeout=10
    )
    return str(r.json()["token"])


def test_a_good_token_passes_so_the_refusals_mean_something(stack: Stack):
    token = _good_token(stack)
    r = httpx.get(stack.url + "/api/me", headers={"Authorization": f"Bearer {token}"})
    assert r.json() == {"username": ADMIN[0]}


def test_session_cookie_is_httponly_samesite_strict(stack: Stack):
    r = httpx.post(
        stack.url + "/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]}, timeout=10
    )
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith("auth_token=")
    for attribute in ("httponly", "samesite=strict", "path=/", "max-age=86400"):
        assert attribute in cookie, cookie
    assert "secure" not in cookie  # plain HTTP in development: a Secure cookie would be lost


def test_session_cookie_is_secure_in_production(tmp_path):
    settings = make_settings(
        tmp_path, node_env="production", jwt_secret="k" * 40, auth_password="a-good-password"
    )
    with TestClient(create_app(settings), base_url="https://gw") as client:
        r = client.post("/auth/login", json={"username": "admin", "password": "a-good-password"})
    assert r.status_code == 200
    assert "secure" in r.headers["set-cookie"].lower()


def _cross_origins(port: int) -> list[dict[str, str]]:
    return [
        {"Origin": "null"},
        {"Origin": f"http://127.0.0.1:{port}.evil.example"},
        {"Origin": f"http://evil.example/127.0.0.1:{port}"},
        {"Origin": f"http://127.0.0.1:{port}@evil.example"},
        {"Origin": f"http://127.0.0.1:{port + 1}"},
        {"Origin": "http://127.0.0.1"},
        {"Referer": "https://evil.example/page"},
        {"Referer": f"http://127.0.0.1:{port}.evil.example/"},
        # A browser's own word decides, whatever the page managed to put in the others.
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": f"http://127.0.0.1:{port}"},
    ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/keys", {"username": "csrfvictim"}),
        ("DELETE", "/api/keys/" + "0" * 32, None),
        ("POST", "/nginx/config/update", {"config": "# nothing"}),
        ("POST", "/nginx/config/write-default", {"domain": "x.example", "cidrGroups": []}),
        ("POST", "/nginx/certificates/obtain", {"domains": ["x.example"]}),
        # The original's GET routes that act: SameSite does not cover a sibling subdomain.
        ("GET", "/nginx/reload", None),
        ("GET", "/nginx/certificates/renew", None),
    ],
)
def test_cookie_writes_from_another_origin_are_refused(
    stack: Stack, admin: httpx.Client, method: str, path: str, body
):
    site = stack.data / "site.json"
    site_before = site.read_bytes() if site.exists() else None
    for headers in _cross_origins(stack.port):
        r = admin.request(method, path, json=body, headers=headers)
        assert (r.status_code, r.json()) == (403, {"error": "Cross-origin request refused"}), (
            headers,
            r.text,
        )
    assert (site.read_bytes() if site.exists() else None) == site_before
    assert "csrfvictim" not in admin.get("/api/keys").text


@pytest.mark.parametrize("path", ["/nginx/reload", "/nginx/certificates/renew"])
def test_cookie_gets_that_act_need_a_same_origin_signal(stack: Stack, admin: httpx.Client, path):
    # A same-site page can send a GET with neither Origin nor Referer (an <img> with
    # referrerpolicy=no-referrer): with the admin's cookie, that is not the admin acting.
    site = stack.data / "site.json"
    before = site.read_bytes() if site.exists() else None
    r = admin.get(path)
    assert (r.status_code, r.json()) == (403, {"error": "Cross-origin request refused"})
    assert (site.read_bytes() if site.exists() else None) == before
    # The admin UI (its fetches say same-origin), an address typed by the admin, and the
    # original's clients (a Bearer token, no browser headers at all) act.
    login = {"username": ADMIN[0], "password": ADMIN[1]}
    token = httpx.post(stack.url + "/auth/token", json=login, timeout=10)
    for headers in (
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
        {"Referer": f"http://127.0.0.1:{stack.port}/admin"},
    ):
        assert admin.get(path, headers=headers).json()["success"] is True, headers
    bearer = {"Authorization": f"Bearer {token.json()['token']}"}
    assert httpx.get(stack.url + path, headers=bearer, timeout=30).json()["success"] is True


def test_cookie_reads_from_another_origin_still_answer(stack: Stack, admin: httpx.Client):
    # Reads carry no risk of their own (the browser keeps a cross-origin answer from the page,
    # and CORS is off by default); refusing them would break links into the admin UI.
    r = admin.get("/api/keys", headers={"Referer": "https://evil.example/"})
    assert r.status_code == 200
