"""Admin sessions: HS256 JWTs bound to the current credentials, revocable, with a hard end.

A token carries the username, its issue and expiry times, a random session id (`sid`) and a
fingerprint of the credentials it was issued for (`cred`: an HMAC, under JWT_SECRET, of
AUTH_USERNAME and AUTH_PASSWORD). It is valid while:
- its signature checks with JWT_SECRET (a new secret ends every session);
- its username and fingerprint match the current AUTH_USERNAME and AUTH_PASSWORD (a change of
  either ends every session);
- it is less than LIFETIME old, whatever its `exp` says (a session is never extended);
- its session id has not been revoked: logout records it in `data/sessions.json` until the
  token would have expired anyway. Every api process reads that file (re-read when it changes),
  so a logout holds in all of them; an unreadable file refuses every session (fail closed).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import jwt

from services.api.errors import AuthError
from shared import files
from shared.files import write_json_atomic
from shared.settings import Settings

log = logging.getLogger("api.sessions")

LIFETIME = 24 * 3600
COOKIE = "auth_token"
CLOCK_SKEW = 60  # seconds a token's issue time may lie ahead of this clock


def fingerprint(secret: str, username: str, password: str) -> str:
    """What a token holds of the credentials it was issued for: an HMAC, not derivable
    without JWT_SECRET (who has that can sign tokens anyway)."""
    mac = hmac.new(secret.encode(), b"llmp-session\0", hashlib.sha256)
    mac.update(username.encode() + b"\0" + password.encode())
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode()


class Revoked:
    """`data/sessions.json`: `{"revoked": {"<sid>": <exp>}}`, session ids ended by a logout,
    each kept until its token would have expired. Written by the api (read-modify-write under
    a `flock`, atomic replace), read by every api process, re-read when its inode, time or size
    changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._revoked: dict[str, int] = {}
        self._error: str | None = None

    def _read(self) -> dict[str, int]:
        """Raises AuthError 401 if the file cannot be read (no session is trusted then)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._signature, self._revoked, self._error = None, {}, None
            return self._revoked
        except OSError as exc:
            self._fail(f"cannot read {self.path}: {exc.strerror}")
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature != self._signature:
            try:
                raw = json.loads(self.path.read_bytes())
                revoked = raw["revoked"]
                if not isinstance(revoked, dict) or not all(
                    isinstance(k, str) and isinstance(v, int) for k, v in revoked.items()
                ):
                    raise ValueError("revoked must map session ids to times")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._fail(f"{self.path} is unreadable: {exc}")
            self._signature, self._revoked, self._error = signature, revoked, None
        return self._revoked

    def _fail(self, error: str) -> None:
        if error != self._error:
            log.error(
                "every session is refused until the sessions file is fixed or removed",
                extra={"fields": {"error": error}},
            )
        self._error = error
        self._signature = None
        raise AuthError(401, "Invalid token")

    def __contains__(self, sid: str) -> bool:
        return sid in self._read()

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return files.locked(self.path)

    def add(self, sid: str, expires: int, now: float) -> None:
        with self._locked():
            self._signature = None  # read afresh under the lock
            try:
                current = self._read()
            except AuthError:
                current = {}  # unreadable: rewritten with what is still worth keeping
            kept = {k: v for k, v in current.items() if v > now}
            kept[sid] = expires
            write_json_atomic(self.path, {"revoked": kept}, mode=0o600)


class Sessions:
    """Issues, checks and ends admin sessions for one set of credentials."""

    def __init__(self, secret: str, username: str, password: str, revoked: Revoked) -> None:
        self._secret = secret
        self._username = username
        self._cred = fingerprint(secret, username, password)
        self.revoked = revoked

    def issue(self, username: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims = {
            "username": username,
            "iat": int(now),
            "exp": int(now) + LIFETIME,
            "sid": secrets.token_urlsafe(16),
            "cred": self._cred,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def _claims(self, token: str, now: float) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                # times are checked below, against the clock given
                options={
                    "require": ["exp", "iat", "sid", "cred", "username"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise AuthError(401, "Invalid token") from exc
        username, sid, cred = claims["username"], claims["sid"], claims["cred"]
        issued, expires = claims["iat"], claims["exp"]
        if not all(isinstance(v, str) for v in (username, sid, cred)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in (issued, expires)
        ):
            raise AuthError(401, "Invalid token")
        current = hmac.compare_digest(username.encode(), self._username.encode())
        if not (current and hmac.compare_digest(cred.encode(), self._cred.encode())):
            raise AuthError(401, "Invalid token")  # the credentials changed since
        if not (now - LIFETIME < issued <= now + CLOCK_SKEW and now < expires):
            raise AuthError(401, "Invalid token")
        return claims

    def verify(self, token: str, now: float | None = None) -> str:
        """The username in a valid session's token; AuthError 401 otherwise."""
        now = time.time() if now is None else now
        claims = self._claims(token, now)
        if claims["sid"] in self.revoked:
            raise AuthError(401, "Invalid token")
        return str(claims["username"])

    def end(self, token: str, now: float | None = None) -> bool:
        """End the session of `token` (a logout); False if it was not a valid session."""
        now = time.time() if now is None else now
        try:
            claims = self._claims(token, now)
        except AuthError:
            return False
        self.revoked.add(claims["sid"], int(claims["iat"]) + LIFETIME, now)
        return True


def for_settings(settings: Settings) -> Sessions:
    """The sessions of the credentials in `settings`, revoked ones in `data/sessions.json`."""
    return Sessions(
        settings.jwt_secret,
        settings.auth_username,
        settings.auth_password,
        Revoked(settings.data_dir / "sessions.json"),
    )
