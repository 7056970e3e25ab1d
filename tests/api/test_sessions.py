"""Admin sessions: tokens bound to the credentials, revocable in every api process, capped."""

import base64
import json
import time
from collections.abc import Callable

import jwt
import pytest
from fastapi.testclient import TestClient

from services.api import sessions
from services.api.app import create_app
from services.api.errors import AuthError
from tests.conftest import make_settings

SECRET = "s" * 64
PASSWORD = "a-good-password-1234"


@pytest.fixture
def revoked(tmp_path):
    return sessions.Revoked(tmp_path / "data" / "sessions.json")


@pytest.fixture
def admin_sessions(revoked):
    return sessions.Sessions(SECRET, "admin", PASSWORD, revoked)


def refused(checker: sessions.Sessions, token: str, now: float | None = None) -> bool:
    with pytest.raises(AuthError) as caught:
        checker.verify(token, now)
    return (caught.value.status, caught.value.message) == (401, "Invalid token")


def test_token_roundtrip_and_claims(admin_sessions):
    token = admin_sessions.issue("admin")
    assert admin_sessions.verify(token) == "admin"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert len(claims["sid"]) >= 20 and PASSWORD not in json.dumps(claims)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert admin_sessions.issue("admin") != token  # a session id each


def _b64(part: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _signed(**claims) -> str:
    now = int(time.time())
    base = {
        "username": "admin",
        "iat": now,
        "exp": now + 3600,
        "sid": "x" * 22,
        "cred": sessions.fingerprint(SECRET, "admin", PASSWORD),
    }
    return jwt.encode({k: v for k, v in {**base, **claims}.items() if v is not None}, SECRET)


def _unbound(algorithm: str = "HS256") -> str:
    """A token as issued before sessions were bound to the credentials."""
    now = int(time.time())
    return jwt.encode({"username": "admin", "iat": now, "exp": now + 3600}, SECRET, algorithm)


def _unsigned() -> str:
    now = int(time.time())
    claims = {"username": "admin", "iat": now, "exp": now + 3600}
    return _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + "."


# Each made when its test runs (made at import, every token would expire in a long run and be
# refused for that alone); `_signed()` itself is accepted (the first test below).
BAD_TOKENS: dict[str, Callable[[], str]] = {
    "expired": lambda: _signed(iat=int(time.time()) - 25 * 3600, exp=int(time.time()) - 3600),
    "too old": lambda: _signed(iat=int(time.time()) - 25 * 3600),
    "from the future": lambda: _signed(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200),
    "unbound": _unbound,
    "no session id": lambda: _signed(sid=None),
    "no credentials": lambda: _signed(cred=None),
    "another user": lambda: _signed(username="someone-else"),
    "a number for a name": lambda: _signed(username=5),
    "the old password": lambda: _signed(
        cred=sessions.fingerprint(SECRET, "admin", "the-old-password")
    ),
    "another secret": lambda: sessions.Sessions(
        "another-secret-" + "x" * 40,
        "admin",
        PASSWORD,
        None,  # type: ignore[arg-type]
    ).issue("admin"),
    "HS512": lambda: _unbound("HS512"),
    "alg none": _unsigned,
    "not a JWT": lambda: "not-a-jwt",
    "empty": lambda: "",
    "three dots": lambda: "a.b.c",
}


def test_a_token_made_as_the_bad_ones_are_but_right_is_accepted(admin_sessions):
    assert admin_sessions.verify(_signed()) == "admin"


@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_bad_tokens_are_refused(admin_sessions, make):
    assert refused(admin_sessions, make())


def test_a_change_of_password_or_username_ends_every_session(revoked):
    token = sessions.Sessions(SECRET, "admin", PASSWORD, revoked).issue("admin")
    assert refused(sessions.Sessions(SECRET, "admin", "a-new-password-5678", revoked), token)
    assert refused(sessions.Sessions(SECRET, "root", PASSWORD, revoked), token)
    assert sessions.Sessions(SECRET, "admin", PASSWORD, revoked).verify(token) == "admin"


def test_a_session_ends_after_its_lifetime_whatever_the_clock_says_next(admin_sessions):
    issued = 1_000_000.0
    token = admin_sessions.issue("admin", now=issued)
    assert admin_sessions.verify(token, now=issued + 24 * 3600 - 1) == "admin"
    assert refused(admin_sessions, token, now=issued + 24 * 3600)


def test_logout_ends_the_session_in_every_process(tmp_path, admin_sessions):
    other_process = sessions.Sessions(
        SECRET, "admin", PASSWORD, sessions.Revoked(tmp_path / "data" / "sessions.json")
    )
    token, kept = admin_sessions.issue("admin"), admin_sessions.issue("admin")
    assert other_process.verify(token) == "admin"  # read (and cached) before the logout
    assert admin_sessions.end(token)
    assert refused(other_process, token) and refused(admin_sessions, token)
    assert other_process.verify(kept) == "admin"  # only that session
    assert not admin_sessions.end("not-a-jwt")


def test_revocations_are_kept_until_their_tokens_expire(tmp_path, admin_sessions, revoked):
    now = time.time()
    old = admin_sessions.issue("admin", now=now - 23 * 3600)
    admin_sessions.end(old, now=now)
    admin_sessions.end(admin_sessions.issue("admin"), now=now + 2 * 3600)  # the first expired
    kept = json.loads(revoked.path.read_text())["revoked"]
    assert len(kept) == 1 and oct(revoked.path.stat().st_mode & 0o777) == "0o600"


def test_an_unreadable_revocation_file_refuses_every_session(admin_sessions, revoked):
    token = admin_sessions.issue("admin")
    revoked.path.parent.mkdir(parents=True, exist_ok=True)
    revoked.path.write_text("{not json")
    assert refused(admin_sessions, token)
    assert admin_sessions.end(token)  # a logout rewrites it
    assert refused(admin_sessions, token)
    assert admin_sessions.verify(admin_sessions.issue("admin")) == "admin"


def test_logout_through_the_api_ends_the_cookie_and_the_bearer_token(tmp_path):
    settings = make_settings(
        tmp_path, jwt_secret=SECRET, auth_username="admin", auth_password=PASSWORD
    )
    login = {"username": "admin", "password": PASSWORD}
    with TestClient(create_app(settings)) as client, TestClient(create_app(settings)) as other:
        assert client.post("/auth/login", json=login).status_code == 200
        cookie = client.cookies[sessions.COOKIE]
        bearer = {
            "Authorization": "Bearer " + client.post("/auth/token", json=login).json()["token"]
        }
        assert (
            other.get("/api/me", headers={"Cookie": f"{sessions.COOKIE}={cookie}"}).status_code
            == 200
        )
        assert other.get("/api/me", headers=bearer).status_code == 200
        assert client.post("/auth/logout").status_code == 200
        assert client.post("/auth/logout", headers=bearer).status_code == 200
        assert (
            other.get("/api/me", headers={"Cookie": f"{sessions.COOKIE}={cookie}"}).status_code
            == 401
        )
        assert other.get("/api/me", headers=bearer).status_code == 401
    changed = make_settings(
        tmp_path, jwt_secret=SECRET, auth_username="admin", auth_password=PASSWORD + "-new"
    )
    with TestClient(create_app(settings)) as client:
        token = client.post("/auth/token", json=login).json()["token"]
    with TestClient(create_app(changed)) as client:
        assert (
            client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        )
