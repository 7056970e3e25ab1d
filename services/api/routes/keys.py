"""`/api/keys`: list, create, delete and validate API keys (the original's answers), and change
a key's policy (enabled, expiry, allowed models, limits), name, owner and note, or rotate its
secret with an overlap, which the original does not have."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.api import reports, schemas
from services.api.deps import Admin, AnalyticsDep, KeyFileDep, SettingsDep
from services.api.errors import Failure
from services.api.validation import read_fields, request_body
from shared.apikeys import ApiKey, KeyFileError, format_time
from shared.key_validation import (
    BodyError,
    create_schema,
    key_create,
    key_rotation,
    key_update,
    rotation_schema,
    update_schema,
)
from shared.keyfile import DuplicateUsername
from shared.prices import Prices, PricesError, read_prices

log = logging.getLogger("api.keys")

router = APIRouter(prefix="/api/keys", responses=schemas.FAILURES)


@contextlib.contextmanager
def changing(action: str, not_saved: str) -> Iterator[None]:
    """A change to the key file: one that cannot be read (nothing is written over it) or cannot
    be written is a 500 that says which."""
    try:
        yield
    except KeyFileError as exc:
        log.error("keys unreadable; nothing written", extra={"fields": {"error": exc}})
        raise Failure(500, f"Failed to {action} API key: the key file is unreadable") from exc
    except OSError as exc:
        log.error("key file not saved", extra={"fields": {"error": exc}})
        raise Failure(500, not_saved) from exc


KEY_FORMAT = re.compile(r"(sk-)?[a-f0-9]{64}")

KEY_STATES = ("all", "active", "disabled", "expired")
KEY_SORTS = ("createdAt", "username", "lastUsed", "tokensToday")


def _state(key: ApiKey, now: datetime) -> str:
    if not key.enabled:
        return "disabled"
    return "expired" if key.expired(now) else "active"


@router.get("", response_model=schemas.KeyList)
def list_keys(
    admin: Admin,
    keyfile: KeyFileDep,
    settings: SettingsDep,
    store: AnalyticsDep,
    search: Annotated[str | None, Query(max_length=200)] = None,
    state: str = "all",
    sort: str = "createdAt",
    order: str = "asc",
) -> JSONResponse:
    """The keys (the original's answer), with `usage` by key id: last use, today's requests and
    tokens, and the budget's use. Searched (username, name, owner or id), filtered by state and
    sorted on the server."""
    for name, value, allowed in (
        ("state", state, KEY_STATES),
        ("sort", sort, KEY_SORTS),
        ("order", order, ("asc", "desc")),
    ):
        if value not in allowed:
            raise Failure(400, f'"{name}" must be one of [{", ".join(allowed)}]')
    try:
        keys = keyfile.list()
    except KeyFileError as exc:
        log.error("keys unreadable", extra={"fields": {"error": exc}})
        raise Failure(500, "Failed to list API keys") from exc
    now = datetime.now(UTC)
    if search:
        needle = search.strip().lower()
        keys = [
            k
            for k in keys
            if needle in k.id
            or any(needle in (text or "").lower() for text in (k.username, k.name, k.owner))
        ]
    if state != "all":
        keys = [k for k in keys if _state(k, now) == state]
    try:
        prices = read_prices(settings.prices_file)
    except PricesError:
        prices = Prices()  # the reports say the file is unreadable; the list still works
    usage = reports.key_usage(store, keys, prices, int(now.timestamp() * 1000))
    if sort != "createdAt" or order != "asc":

        def by(key: ApiKey) -> Any:
            if sort == "username":
                return key.username.lower()
            if sort == "createdAt":
                return key.createdAt
            return usage[key.id][sort] or 0

        keys = sorted(keys, key=by, reverse=order == "desc")
    return JSONResponse({"success": True, "keys": [k.to_json() for k in keys], "usage": usage})


@router.post("", response_model=schemas.KeySaved, openapi_extra=request_body(create_schema()))
async def create_key(request: Request, admin: Admin, keyfile: KeyFileDep) -> dict[str, Any]:
    try:
        username, policy = key_create(await read_fields(request))
    except BodyError as exc:
        raise Failure(400, str(exc)) from exc
    try:
        with changing("create", "Failed to save API key"):
            key = await run_in_threadpool(keyfile.create, username, policy)  # waits for the lock
    except DuplicateUsername as exc:
        raise Failure(400, exc.message) from exc
    log.info("key created", extra={"fields": {"key": key.id, "username": key.username}})
    return {"success": True, "message": "API key created successfully", "key": key.to_json()}


@router.patch(
    "/{key_id}", response_model=schemas.KeySaved, openapi_extra=request_body(update_schema())
)
async def update_key(
    key_id: str, request: Request, admin: Admin, keyfile: KeyFileDep
) -> dict[str, Any]:
    try:
        change = key_update(await read_fields(request))
    except BodyError as exc:
        raise Failure(400, str(exc)) from exc
    try:
        with changing("update", "Failed to update API key"):
            key = await run_in_threadpool(keyfile.update, key_id, change)
    except DuplicateUsername as exc:
        raise Failure(400, exc.message) from exc
    if key is None:
        raise Failure(404, "API key not found")
    log.info("key updated", extra={"fields": {"key": key.id, "changed": ",".join(change)}})
    return {"success": True, "message": "API key updated successfully", "key": key.to_json()}


@router.post(
    "/{key_id}/rotate",
    response_model=schemas.KeySaved,
    openapi_extra=request_body(rotation_schema()),
)
async def rotate_key(
    key_id: str, request: Request, admin: Admin, keyfile: KeyFileDep
) -> dict[str, Any]:
    """A new secret for the key; the current one stays accepted until `until`, then is refused
    by the proxy and every route that takes a secret."""
    try:
        until = key_rotation(await read_fields(request))
    except BodyError as exc:
        raise Failure(400, str(exc)) from exc
    with changing("rotate", "Failed to rotate API key"):
        key = await run_in_threadpool(keyfile.rotate, key_id, until)
    if key is None:
        raise Failure(404, "API key not found")
    log.info("key rotated", extra={"fields": {"key": key.id, "until": format_time(until)}})
    return {"success": True, "message": "API key rotated successfully", "key": key.to_json()}


@router.delete("/{key_id}", response_model=schemas.Message)
def delete_key(key_id: str, admin: Admin, keyfile: KeyFileDep) -> schemas.Message:
    with changing("delete", "Failed to delete API key"):
        deleted = keyfile.delete(key_id)
    if not deleted:
        raise Failure(404, "API key not found")
    log.info("key deleted", extra={"fields": {"key": key_id}})
    return {"success": True, "message": "API key deleted successfully"}


@router.get("/validate/{key}", response_model=schemas.KeyValidity)
def validate_key(key: str, admin: Admin, keyfile: KeyFileDep) -> schemas.KeyValidity:
    if not KEY_FORMAT.fullmatch(key):
        raise Failure(400, "Invalid API key format")
    try:
        found = keyfile.find(key if key.startswith("sk-") else "sk-" + key)
    except KeyFileError as exc:
        raise Failure(500, "Failed to validate API key") from exc
    if found is None:
        return {"success": True, "valid": False}
    return {"success": True, "valid": True, "username": found.username}
