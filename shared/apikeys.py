"""`data/apikeys.json`: the API keys, in the original llm-proxy's format, plus optional policy.

    {"keys": [{"id": "<32 hex>", "username": "...", "key": "sk-<64 hex>", "createdAt": "<ISO>",
               "enabled": false,                       # optional, default true
               "expiresAt": "<ISO>",                   # optional, default never
               "models": ["llama3*", "qwen2.5:*"],     # optional glob patterns, default all
               "limits": {"requestsPerMinute": 60,     # optional, each a positive integer
                          "tokensPerMinute": 100000,
                          "tokensPerDay": 2000000,
                          "maxConcurrent": 4},
               "budget": {"period": "month",           # optional: day, week or month (UTC)
                          "tokens": 5000000,            # ... and a positive integer,
                          "cost": 20.0},                # a positive amount (data/prices.json),
                                                        # or both
               "name": "ci",                            # optional: tells a user's keys apart
               "owner": "ops@example.com",              # optional: who answers for the key
               "note": "nightly evals",                 # optional free text
               "previousKeys": [{"key": "sk-<64 hex>",  # optional: secrets replaced by a
                                 "until": "<ISO>"}]}]}  # rotation, accepted until `until`

A user may hold several keys, told apart by their `name` (unique per username; the original's
one key per username is the key without a name). Rotating a key gives it a new secret and keeps
the old one in `previousKeys`, accepted until its `until` and refused from then on, everywhere.

A key without policy is written exactly as the original writes it, so the file stays readable by
llm-proxy. It is written under its lock (`shared.keyfile`) by the api and the `llmp` command;
the proxy reads it. A file that cannot be read or
parsed, or holds a policy field of the wrong type, is an error (`KeyFileError`), never an empty
key set: the caller keeps what it had.

`apikeys.json.last-good` is a copy of the newest valid key file: written with it, and refreshed
(under the key file's lock, see `shared.keyfile`) by whoever reads a valid file that differs from
it (an operator's edit, a restore). When `apikeys.json` is missing or broken, the keys in force
are the copy's (`load_keys`): a proxy worker started then serves them, and the api lists them and
writes the file again from them at the next change. A missing file is "no keys" only while there
is no copy either (a new install); to remove every key, delete them, do not delete the file.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from shared.files import Reserve, write_atomic

log = logging.getLogger("apikeys")


class KeyFileError(Exception):
    """apikeys.json exists but cannot be read or is not in the expected format."""


def parse_time(value: str) -> datetime:
    """An ISO 8601 timestamp; one without a zone is UTC. Raises ValueError."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(value: datetime) -> str:
    """The original's timestamp format: `2026-01-02T03:04:05.678Z`."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-key limits; None is no limit."""

    requestsPerMinute: int | None = None
    tokensPerMinute: int | None = None
    tokensPerDay: int | None = None
    maxConcurrent: int | None = None

    def to_json(self) -> dict[str, int]:
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    @classmethod
    def from_json(cls, raw: Any) -> Limits:
        """Raises ValueError naming the bad field."""
        if not isinstance(raw, dict):
            raise ValueError("limits must be an object")
        names = {f.name for f in fields(cls)}
        for name, value in raw.items():
            if name not in names:
                raise ValueError(f"limits.{name} is not a known limit")
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"limits.{name} must be a positive integer or null")
        return cls(**raw)


BUDGET_PERIODS = ("day", "week", "month")
MAX_BUDGET_COST = 1e12  # a budget in money is below this


def period_bounds(period: str, now: float) -> tuple[int, float, float]:
    """The period's number and its start and end (epoch seconds, UTC)."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start = day
        end = start.timestamp() + 86400
        return int(start.timestamp() // 86400), start.timestamp(), end
    if period == "week":
        start_s = day.timestamp() - day.weekday() * 86400
        return int(start_s // (7 * 86400)) + 1, start_s, start_s + 7 * 86400
    first = day.replace(day=1)
    following = (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )
    number = (first.year - 1970) * 12 + first.month
    return number, first.timestamp(), following.timestamp()


@dataclass(frozen=True, slots=True)
class Budget:
    """What a key may use per calendar period (UTC): tokens, cost (in the currency of
    data/prices.json), or both."""

    period: str
    tokens: int | None = None
    cost: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"period": self.period}
        if self.tokens is not None:
            out["tokens"] = self.tokens
        if self.cost is not None:
            out["cost"] = self.cost
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Budget:
        """Raises ValueError naming the bad field."""
        if not isinstance(raw, dict) or set(raw) - {"period", "tokens", "cost"}:
            raise ValueError("budget must be an object of period, tokens and cost")
        if raw.get("period") not in BUDGET_PERIODS:
            raise ValueError("budget.period must be day, week or month")
        tokens, cost = raw.get("tokens"), raw.get("cost")
        if tokens is not None and (
            not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1
        ):
            raise ValueError("budget.tokens must be a positive integer")
        if cost is not None and (
            not isinstance(cost, int | float)
            or isinstance(cost, bool)
            or not 0 < cost < MAX_BUDGET_COST
        ):
            raise ValueError("budget.cost must be a positive number")
        if tokens is None and cost is None:
            raise ValueError("budget needs tokens, cost or both")
        return cls(raw["period"], tokens, None if cost is None else float(cost))


class PolicyChange(TypedDict, total=False):
    """A change to a key's policy, already validated; a field left out stays as it is.

    `limits` changes only the limits it names (None removes one)."""

    enabled: bool
    expiresAt: str | None
    models: tuple[str, ...] | None
    limits: dict[str, int | None]
    budget: Budget | None
    name: str | None
    owner: str | None
    note: str | None


@dataclass(frozen=True, slots=True)
class PreviousKey:
    """A secret replaced by a rotation, still accepted before `until` (ISO 8601)."""

    key: str
    until: str

    def accepted(self, now: datetime | None = None) -> bool:
        return parse_time(self.until) > (now or datetime.now(UTC))

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "until": self.until}

    @classmethod
    def from_json(cls, raw: Any) -> PreviousKey:
        """Raises ValueError naming the bad field."""
        if not isinstance(raw, dict) or set(raw) != {"key", "until"}:
            raise ValueError("previousKeys items must be objects of key and until")
        if not isinstance(raw["key"], str) or not raw["key"]:
            raise ValueError("previousKeys[].key must be a non-empty string")
        if not isinstance(raw["until"], str):
            raise ValueError("previousKeys[].until must be an ISO 8601 time")
        parse_time(raw["until"])
        return cls(raw["key"], raw["until"])


def _text(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{name} must be a non-empty string or null")
    return value


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    username: str
    key: str
    createdAt: str
    enabled: bool = True
    expiresAt: str | None = None
    models: tuple[str, ...] | None = None
    limits: Limits = field(default_factory=Limits)
    budget: Budget | None = None
    name: str | None = None
    owner: str | None = None
    note: str | None = None
    previousKeys: tuple[PreviousKey, ...] = ()

    @classmethod
    def new(cls, username: str) -> ApiKey:
        return cls(
            id=secrets.token_hex(16),
            username=username,
            key="sk-" + secrets.token_hex(32),
            createdAt=format_time(datetime.now(UTC)),
        )

    def expired(self, now: datetime | None = None) -> bool:
        if self.expiresAt is None:
            return False
        return parse_time(self.expiresAt) <= (now or datetime.now(UTC))

    def updated(self, change: PolicyChange) -> ApiKey:
        """This key with `change` applied. Raises ValueError if the result is not a valid key
        (the file must never hold one the proxy would refuse to read)."""
        key = replace(
            self,
            enabled=change.get("enabled", self.enabled),
            expiresAt=change.get("expiresAt", self.expiresAt),
            models=change.get("models", self.models),
            limits=replace(self.limits, **change.get("limits", {})),
            budget=change.get("budget", self.budget),
            name=change.get("name", self.name),
            owner=change.get("owner", self.owner),
            note=change.get("note", self.note),
        )
        return ApiKey.from_json(key.to_json())

    def rotated(self, until: datetime, now: datetime | None = None) -> ApiKey:
        """This key with a new secret; the current one stays accepted before `until` (not at
        all if that has passed), and so do earlier ones at the latest (a rotation after a leak
        ends them all). Previous secrets no longer accepted are dropped."""
        now = now or datetime.now(UTC)
        kept = [
            PreviousKey(p.key, min(p.until, format_time(until), key=parse_time))
            for p in (*self.previousKeys, PreviousKey(self.key, format_time(until)))
        ]
        return replace(
            self,
            key="sk-" + secrets.token_hex(32),
            previousKeys=tuple(p for p in kept if p.accepted(now)),
        )

    def accepts(self, secret: str, now: datetime | None = None) -> bool:
        """Whether `secret` is this key's, or a previous one still accepted; compared in
        constant time."""
        found = hmac.compare_digest(self.key.encode(), secret.encode())
        for previous in self.previousKeys:
            if hmac.compare_digest(previous.key.encode(), secret.encode()):
                found = found or previous.accepted(now)
        return found

    def to_json(self) -> dict[str, Any]:
        """The file's (and the api's) form: the original's four fields, then any policy."""
        out: dict[str, Any] = {
            "id": self.id,
            "username": self.username,
            "key": self.key,
            "createdAt": self.createdAt,
        }
        if not self.enabled:
            out["enabled"] = False
        if self.expiresAt is not None:
            out["expiresAt"] = self.expiresAt
        if self.models is not None:
            out["models"] = list(self.models)
        if limits := self.limits.to_json():
            out["limits"] = limits
        if self.budget is not None:
            out["budget"] = self.budget.to_json()
        for name in ("name", "owner", "note"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        if self.previousKeys:
            out["previousKeys"] = [p.to_json() for p in self.previousKeys]
        return out

    @classmethod
    def from_json(cls, item: Any) -> ApiKey:
        """Raises ValueError naming the bad field."""
        if not isinstance(item, dict):
            raise ValueError("is not an object")
        base = {name: item.get(name) for name in ("id", "username", "key", "createdAt")}
        if not all(isinstance(value, str) and value for value in base.values()):
            raise ValueError("needs non-empty id, username, key and createdAt")
        enabled = item.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ValueError("enabled must be true or false")
        expires = item.get("expiresAt")
        if expires is not None:
            if not isinstance(expires, str):
                raise ValueError("expiresAt must be an ISO 8601 time or null")
            parse_time(expires)
        models = item.get("models")
        if models is not None:
            if not isinstance(models, list) or not all(
                isinstance(m, str) and m.strip() for m in models
            ):
                raise ValueError("models must be a list of non-empty patterns or null")
            models = tuple(models)
        limits = Limits.from_json(item.get("limits") or {})
        budget = None if item.get("budget") is None else Budget.from_json(item["budget"])
        previous = item.get("previousKeys") or []
        if not isinstance(previous, list):
            raise ValueError("previousKeys must be a list")
        return cls(
            **base,  # type: ignore[arg-type]
            enabled=enabled,
            expiresAt=expires,
            models=models,
            limits=limits,
            budget=budget,
            name=_text(item, "name"),
            owner=_text(item, "owner"),
            note=_text(item, "note"),
            previousKeys=tuple(PreviousKey.from_json(p) for p in previous),
        )


def _parse(raw: Any) -> list[ApiKey]:
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise KeyFileError('expected {"keys": [...]}')
    keys = []
    for position, item in enumerate(raw["keys"]):
        try:
            keys.append(ApiKey.from_json(item))
        except ValueError as exc:
            raise KeyFileError(f"keys[{position}] {exc}") from None
    return keys


def read_keys(path: Path) -> list[ApiKey]:
    """The keys in `path`; a missing file is no keys. Raises KeyFileError otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return _parse(json.loads(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path} is not valid JSON: {exc}") from exc


def last_good_path(path: Path) -> Path:
    return path.with_name(path.name + ".last-good")


def load_keys(path: Path) -> tuple[list[ApiKey], str | None]:
    """The keys in force and, when they come from the last good copy, why (the file is missing
    or broken). Raises KeyFileError when the file is broken and no good copy is left."""
    copy = last_good_path(path)
    try:
        if not path.exists() and copy.exists():
            raise KeyFileError(f"{path} is missing")
        return read_keys(path), None  # a missing file and no copy: a new install
    except KeyFileError as exc:
        if not copy.exists():
            raise
        try:
            return read_keys(copy), str(exc)
        except KeyFileError:
            raise exc from None


def write_keys(path: Path, keys: list[ApiKey], reserve: Reserve | None = None) -> None:
    """Replace the key file (through `reserve` if the disk is full), then its last good copy.
    A copy that cannot be written is deleted: a stale one could bring back a revoked key."""
    data = (json.dumps({"keys": [k.to_json() for k in keys]}, indent=2) + "\n").encode()
    if reserve is None:
        write_atomic(path, data, mode=0o600)
    else:
        reserve.write(path, data, mode=0o600)
    save_last_good(path, data)


def save_last_good(path: Path, data: bytes) -> bool:
    """Make `data` the last good copy of the key file at `path`; True if written. A copy that
    cannot be written is deleted: a stale one could bring back a revoked key."""
    copy = last_good_path(path)
    try:
        write_atomic(copy, data, mode=0o600)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(copy)
        log.error("last good key file not written; removed", extra={"fields": {"error": exc}})
        return False
    return True
