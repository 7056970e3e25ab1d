"""API keys in every wrong form and place, through nginx: each is an OpenAI-shaped 401 and
reaches no upstream; the right key, in any place the proxy accepts, never reaches one either."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from shared.apikeys import ApiKey
from tests.conftest import eventually
from tests.security.conftest import forwarded, raw_request
from tests.stack.conftest import Stack


def _wrong_forms(key: str) -> list[dict[str, str]]:
    hex_part = key[3:]
    return [
        {"Authorization": f"Bearer {hex_part}"},  # without sk-
        {"Authorization": f"Bearer {key.upper()}"},
        {"Authorization": f"Bearer {key[:-1]}"},  # one short
        {"Authorization": f"Bearer {key}0"},  # one long
        {"Authorization": f"Bearer {key[:-1]}{'0' if key[-1] != '0' else '1'}"},  # last differs
        {"Authorization": f"Bearer sk-{'0' * 64}"},
        {"Authorization": f"Bearer {key[:35]}"},
        {"Authorization": f"Bearer {key},{key}"},
        {"Authorization": f"Bearer {key} {key}"},
        {"Authorization": f"Bearer {key}%00"},
        {"Authorization": f"Bearer {key.replace('sk-', 'sk_')}"},
        {"Authorization": f"Bearer {base64.b64encode(key.encode()).decode()}"},
        {"Authorization": "Basic " + base64.b64encode(f"user:{key}".encode()).decode()},
        {"Authorization": f"Token {key}"},
        {"Authorization": f"Bearer{key}"},
        {"Authorization": key},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer sk-"},
        {"Proxy-Authorization": f"Bearer {key}"},
        {"Cookie": f"api_key={key}"},
        {"Cookie": f"auth_token={key}"},
        {"X-Forwarded-Authorization": f"Bearer {key}"},
        {"OpenAI-Api-Key": key},
        {"api_key": key},
        # A wrong key first wins over a right one after it: no guessing by adding headers.
        {"Authorization": f"Bearer sk-{'1' * 64}", "x-api-key": key},
    ]


def _wrong_places(key: str) -> list[tuple[str, dict[str, str], bytes]]:
    """(query string, headers, body) with the key where the proxy must not look."""
    body = json.dumps({"model": "model-a", "messages": [], "api_key": key}).encode()
    return [
        (f"?api_key={key}", {}, b""),
        (f"?key={key}", {}, b""),
        (f"?authorization=Bearer%20{key}", {}, b""),
        ("", {"content-type": "application/json"}, body),
    ]


def _is_openai_401(r: httpx.Response) -> bool:
    error = r.json()["error"]
    return (
        r.status_code == 401
        and set(error) == {"message", "type", "param", "code"}
        and error["code"] in ("missing_api_key", "invalid_api_key")
        and r.headers.get("www-authenticate") == "Bearer"
    )


def _refused(r: httpx.Response) -> httpx.Response | None:
    return r if r.status_code == 401 else None


def test_keys_in_wrong_forms_are_refused_before_any_upstream(stack: Stack, key: ApiKey, fleet):
    before = forwarded(fleet)
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for headers in _wrong_forms(key.key):
            r = client.post(
                "/v1/chat/completions", json={"model": "model-a", "messages": []}, headers=headers
            )
            assert _is_openai_401(r), (headers, r.status_code, r.text)
            assert key.key not in r.text
        assert client.get("/v1/models", headers={"x-api-key": key.key}).status_code == 200
    assert forwarded(fleet) == before, "a refused request reached an upstream"


@pytest.mark.parametrize("place", range(4))
def test_keys_in_wrong_places_are_refused(stack: Stack, key: ApiKey, fleet, place: int):
    query, headers, body = _wrong_places(key.key)[place]
    before = forwarded(fleet)
    r = httpx.post(
        f"{stack.url}/v1/chat/completions{query}", content=body, headers=headers, timeout=10
    )
    assert _is_openai_401(r), r.text
    assert key.key not in r.text
    assert forwarded(fleet) == before


def test_key_header_names_and_schemes_the_proxy_accepts(stack: Stack, key: ApiKey):
    for headers in (
        {"Authorization": f"Bearer {key.key}"},
        {"Authorization": f"bearer {key.key}"},
        {"Authorization": f"Bearer   {key.key}"},
        {"api-key": key.key},
        {"x-api-key": key.key},
        {"X-API-KEY": key.key},
    ):
        r = httpx.get(stack.url + "/v1/models", headers=headers, timeout=10)
        assert r.status_code == 200, (headers, r.text)


def test_the_clients_key_never_reaches_an_upstream_from_any_place(stack: Stack, key: ApiKey, fleet):
    for upstream in ("a", "b"):  # a has its own key; b has none (the original forwarded ours)
        model = "model-a" if upstream == "a" else "model-b"
        r = httpx.post(
            stack.url + "/v1/echo",
            json={"model": model},
            headers={
                "Authorization": f"Bearer {key.key}",
                "api-key": key.key,
                "x-api-key": key.key,
                "Cookie": f"session={key.key}",
                "Proxy-Authorization": f"Bearer {key.key}",
                "Connection": "x-api-key, keep-alive",
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        seen = fleet[upstream].seen[-1]
        assert seen.path == "/v1/echo"
        assert key.key not in json.dumps(seen.headers), seen.headers
        expected = "Bearer key-of-a" if upstream == "a" else None
        assert seen.headers.get("Authorization") == expected


def test_revoked_key_in_every_accepted_place_is_refused(stack: Stack, key: ApiKey, fleet):
    stack.keys()  # every key revoked
    before = forwarded(fleet)
    for header in ("Authorization", "api-key", "x-api-key"):
        value = f"Bearer {key.key}" if header == "Authorization" else key.key
        r = eventually(
            lambda h=header, v=value: _refused(  # type: ignore[misc]  # a lambda with default arguments
                httpx.get(stack.url + "/v1/models", headers={h: v}, timeout=10)
            ),
            timeout=1.5,
        )
        assert _is_openai_401(r), (header, r.text)
    assert forwarded(fleet) == before


def test_raw_authorization_header_tricks(stack: Stack, key: ApiKey, fleet):
    before = forwarded(fleet)
    for header in (
        b"Authorization: Bearer\t" + b"sk-" + b"2" * 64,
        b"Authorization : Bearer " + key.key.encode(),  # space before the colon
        b"Authorization: Bearer " + key.key.encode() + b"\x00",
        b"Authorization: Bearer " + key.key.encode()[:-1] + b"\xff",
    ):
        r = raw_request(
            stack.port,
            b"GET /v1/echo HTTP/1.1\r\nHost: gw\r\n" + header + b"\r\nConnection: close\r\n\r\n",
        )
        assert r.status in (400, 401), (header, r.status, r.body)
        assert key.key.encode() not in r.raw
    assert forwarded(fleet) == before
