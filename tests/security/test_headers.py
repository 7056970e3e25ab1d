"""Header injection through nginx: forged client-address headers, and header lines no client
should send (bare CR, NUL, folded lines, oversized). The services must see the real peer, and
every malformed line is refused at the door."""

from __future__ import annotations

import httpx
import pytest

from shared.apikeys import ApiKey
from tests.security.conftest import forwarded, raw_request
from tests.stack.conftest import ADMIN, Stack


def test_forged_forwarding_headers_do_not_dodge_the_login_throttle(stack: Stack):
    stack.forget_failed_logins()
    statuses = []
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for n in range(6):
            forged = f"203.0.113.{n + 1}"
            r = client.post(
                "/auth/login",
                json={"username": ADMIN[0], "password": "wrong-password"},
                headers={
                    "X-Forwarded-For": forged,
                    "X-Real-IP": forged,
                    "Forwarded": f"for={forged}",
                    "X-Client-IP": forged,
                },
            )
            statuses.append(r.status_code)
    # LOGIN_MAX_FAILURES is 3: the fourth try from the same peer is throttled, whatever it says.
    assert statuses == [401, 401, 401, 429, 429, 429], statuses
    assert "203.0.113." not in stack.output()  # the api logged the real peer, not the forgery
    stack.forget_failed_logins()


def test_services_see_nginx_s_peer_not_a_forged_address(stack: Stack, key: ApiKey, fleet):
    r = httpx.post(
        stack.url + "/v1/echo",
        json={"model": "model-a"},
        headers={
            "Authorization": f"Bearer {key.key}",
            "X-Forwarded-For": "203.0.113.9",
            "X-Real-IP": "203.0.113.9",
        },
        timeout=10,
    )
    assert r.status_code == 200
    # nginx replaced both with the peer it saw; the proxy passed them on to the upstream.
    seen = fleet["a"].seen[-1].headers
    assert seen.get("X-Real-IP") == "127.0.0.1"
    assert "203.0.113.9" not in seen.get("X-Forwarded-For", "")


MALFORMED = {
    "bare CR in a value": b"X-Note: a\rAuthorization: Bearer sk-forged\r\n",
    "NUL in a value": b"X-Note: a\x00b\r\n",
    "folded line": b"X-Note: a\r\n Authorization: Bearer sk-forged\r\n",
    "space before the colon": b"Host : other\r\n",
    "no colon": b"Injected-line-without-colon\r\n",
    "name with a space": b"X Note: a\r\n",
    "oversized header": b"X-Note: " + b"a" * 70_000 + b"\r\n",
    "second Host": b"Host: evil.example\r\n",
    "Host with a path": b"Host: evil.example/x\r\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("path", ["/v1/echo", "/api/me"])
def test_malformed_header_lines_are_refused_or_harmless(
    stack: Stack, key: ApiKey, fleet, case: str, path: str
):
    before = forwarded(fleet)
    auth = f"Authorization: Bearer {key.key}\r\n".encode() if path.startswith("/v1") else b""
    r = raw_request(
        stack.port,
        b"GET "
        + path.encode()
        + b" HTTP/1.1\r\nHost: gw\r\n"
        + auth
        + MALFORMED[case]
        + b"Connection: close\r\n\r\n",
    )
    assert r.status in (200, 400, 401, 431, 494), (case, r.status, r.body[:200])
    if r.status == 200 and path == "/v1/echo":
        headers = fleet["a"].seen[-1].headers if forwarded(fleet) != before else {}
        # Whatever passed, no forged key replaced the upstream's own.
        assert "sk-forged" not in str(headers)
    if path == "/api/me":
        assert r.status != 200  # no credentials in any of them
    # The stack still answers normally afterwards.
    assert httpx.get(stack.url + "/healthz", timeout=10).status_code == 200
