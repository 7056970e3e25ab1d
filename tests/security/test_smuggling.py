"""Request smuggling through nginx: requests whose length nginx and the service behind it could
read differently (conflicting or disguised `Content-Length` and `Transfer-Encoding`). Whatever
nginx makes of each, the request hidden in the body never runs, neither on the proxy (it would
reach an upstream) nor on the api (it would create a key), and the requests that follow on
nginx's pooled connections get their own answers."""

from __future__ import annotations

import secrets

import httpx
import pytest

from services.api import sessions
from shared.apikeys import ApiKey, read_keys
from tests.security.conftest import raw_request
from tests.stack.conftest import Stack


def _hidden_v1(key: ApiKey, marker: str) -> bytes:
    return (
        f"GET /v1/smuggled-{marker} HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {key.key}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _hidden_admin(token: str, marker: str) -> bytes:
    body = f'{{"username": "smuggled{marker}"}}'
    return (
        f"POST /api/keys HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def _attacks(front: bytes, hidden: bytes) -> dict[str, bytes]:
    """`front` is the request line and headers of the carrier, without the final CRLF."""
    chunk_of_hidden = f"{len(hidden):x}\r\n".encode() + hidden + b"\r\n0\r\n\r\n"
    cl_te_body = b"0\r\n\r\n" + hidden
    return {
        "CL.TE": front
        + f"Content-Length: {len(cl_te_body)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + cl_te_body,
        "TE.CL": front
        + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        + chunk_of_hidden,
        "TE.TE xchunked": front
        + f"Content-Length: {len(cl_te_body)}\r\nTransfer-Encoding: xchunked\r\n\r\n".encode()
        + cl_te_body,
        "TE space before colon": front
        + f"Content-Length: {len(cl_te_body)}\r\nTransfer-Encoding : chunked\r\n\r\n".encode()
        + cl_te_body,
        "TE chunked, identity": front
        + f"Content-Length: {len(cl_te_body)}\r\n".encode()
        + b"Transfer-Encoding: chunked, identity\r\n\r\n"
        + cl_te_body,
        "TE twice": front
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
        + chunk_of_hidden,
        "TE tab": front
        + f"Content-Length: {len(cl_te_body)}\r\nTransfer-Encoding:\tchunked\r\n\r\n".encode()
        + cl_te_body,
        "TE folded": front
        + f"Content-Length: {len(cl_te_body)}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n".encode()
        + cl_te_body,
        "CL twice": front
        + f"Content-Length: 0\r\nContent-Length: {len(hidden)}\r\n\r\n".encode()
        + hidden,
        "CL list": front + f"Content-Length: 0, {len(hidden)}\r\n\r\n".encode() + hidden,
        "CL plus": front + f"Content-Length: +{len(hidden)}\r\n\r\n".encode() + hidden,
        "CL negative": front + b"Content-Length: -1\r\n\r\n" + hidden,
        "chunk size overflow": front
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"10000000000000000\r\n"
        + hidden
        + b"\r\n0\r\n\r\n",
        "HTTP/1.0 chunked": front.replace(b"HTTP/1.1", b"HTTP/1.0")
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + chunk_of_hidden,
    }


def _names() -> list[str]:
    return list(_attacks(b"GET / HTTP/1.1\r\n", b"").keys())


def _followers_get_their_own_answers(stack: Stack, key: ApiKey) -> None:
    """Requests after an attack, enough to go through every pooled connection of nginx."""
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for _ in range(12):
            r = client.get("/v1/models", headers={"Authorization": f"Bearer {key.key}"})
            assert r.status_code == 200 and r.json()["object"] == "list", r.text
            me = client.get("/api/me", headers={"Authorization": f"Bearer {_token(stack)}"})
            assert me.json() == {"username": "admin"}, me.text


def _token(stack: Stack) -> str:
    env = stack.env
    revoked = sessions.Revoked(stack.data / "sessions.json")
    issuer = sessions.Sessions(
        env["JWT_SECRET"], env["AUTH_USERNAME"], env["AUTH_PASSWORD"], revoked
    )
    return issuer.issue("admin")


@pytest.mark.parametrize("attack", _names())
def test_no_request_hides_in_a_v1_body(stack: Stack, key: ApiKey, fleet, attack: str):
    marker = secrets.token_hex(4)
    front = (
        f"POST /v1/echo HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key.key}\r\n"
        "Content-Type: text/plain\r\n"
    ).encode()
    r = raw_request(stack.port, _attacks(front, _hidden_v1(key, marker))[attack])
    assert r.status < 500 or r.status == 501, (r.status, r.raw[:400])  # 501: unknown coding
    assert f"smuggled-{marker}".encode() not in r.raw.split(b"\r\n\r\n", 1)[0]
    _followers_get_their_own_answers(stack, key)
    paths = [s.path for u in fleet.values() for s in u.seen]
    assert f"/v1/smuggled-{marker}" not in paths, f"{attack}: the hidden request ran"


@pytest.mark.parametrize("attack", _names())
def test_no_request_hides_in_an_admin_body(stack: Stack, key: ApiKey, attack: str):
    marker = secrets.token_hex(4)
    front = (
        f"POST /auth/logout HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {_token(stack)}\r\n"
    ).encode()
    r = raw_request(stack.port, _attacks(front, _hidden_admin(_token(stack), marker))[attack])
    assert r.status < 500 or r.status == 501, (r.status, r.raw[:400])
    _followers_get_their_own_answers(stack, key)
    names = {k.username for k in read_keys(stack.data / "apikeys.json")}
    assert f"smuggled{marker}" not in names, f"{attack}: the hidden request ran"
