"""Admin JWTs and the login throttle."""

import base64
import json
import time

import jwt
import pytest

from services.api import sessions
from services.api.errors import AuthError

SECRET = "s" * 64


def test_token_roundtrip_and_claims():
    token = sessions.issue(SECRET, "admin")
    assert sessions.verify(SECRET, token) == "admin"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def _b64(part: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        sessions.issue(SECRET, "admin", now=time.time() - 25 * 3600),  # expired
        sessions.issue("another-secret-" + "x" * 40, "admin"),  # forged with another secret
        jwt.encode(
            {"username": "admin", "iat": int(time.time())}, SECRET, algorithm="HS256"
        ),  # no exp
        jwt.encode(
            {"username": "admin", "iat": int(time.time()), "exp": int(time.time()) + 60},
            SECRET,
            algorithm="HS512",
        ),  # another algorithm
        _b64({"alg": "none", "typ": "JWT"})
        + "."
        + _b64({"username": "admin", "iat": int(time.time()), "exp": int(time.time()) + 60})
        + ".",
        jwt.encode(
            {"username": 5, "iat": int(time.time()), "exp": int(time.time()) + 60},
            SECRET,
            algorithm="HS256",
        ),
        "not-a-jwt",
        "",
        "a.b.c",
    ],
)
def test_bad_tokens_are_refused(token):
    with pytest.raises(AuthError) as caught:
        sessions.verify(SECRET, token)
    assert (caught.value.status, caught.value.message) == (401, "Invalid token")


def test_throttle_engages_after_limit_and_releases_after_window(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    throttle = sessions.Throttle(limit=3, window=60)
    for _ in range(3):
        assert throttle.retry_after("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == 60
    assert throttle.retry_after("5.6.7.8") == 0  # per address
    clock[0] += 30
    assert throttle.retry_after("1.2.3.4") == 30
    clock[0] += 30
    assert throttle.retry_after("1.2.3.4") == 0


def test_throttle_success_clears_failures():
    throttle = sessions.Throttle(limit=2, window=60)
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 0
