"""`/api/keys`: list, create, delete and validate API keys (the original's answers)."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Request

from services.api.deps import Admin, KeyFileDep
from services.api.errors import Failure
from services.api.validation import BodyError, username_errors, valid_fields
from shared.apikeys import KeyFileError
from shared.keyfile import DuplicateUsername

log = logging.getLogger("api.keys")

router = APIRouter(prefix="/api/keys")

KEY_FORMAT = re.compile(r"(sk-)?[a-f0-9]{64}")

CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["username"],
                    "properties": {"username": {"type": "string"}},
                }
            }
        },
    }
}


@router.get("")
def list_keys(admin: Admin, keyfile: KeyFileDep) -> dict[str, Any]:
    try:
        keys = keyfile.list()
    except KeyFileError as exc:
        log.error("keys unreadable", extra={"fields": {"error": exc}})
        raise Failure(500, "Failed to list API keys") from exc
    return {"success": True, "keys": [k.to_json() for k in keys]}


@router.post("", openapi_extra=CREATE_BODY)
async def create_key(request: Request, admin: Admin, keyfile: KeyFileDep) -> dict[str, Any]:
    try:
        fields = await valid_fields(request, username_errors)
    except BodyError as exc:
        raise Failure(400, str(exc)) from exc
    try:
        key = keyfile.create(fields["username"].strip())
    except DuplicateUsername as exc:
        raise Failure(400, "API key already exists for this username") from exc
    except KeyFileError as exc:
        log.error("keys unreadable; nothing written", extra={"fields": {"error": exc}})
        raise Failure(500, "Failed to create API key: the key file is unreadable") from exc
    except OSError as exc:
        log.error("key not saved", extra={"fields": {"error": exc}})
        raise Failure(500, "Failed to save API key") from exc
    log.info("key created", extra={"fields": {"key": key.id, "username": key.username}})
    return {"success": True, "message": "API key created successfully", "key": key.to_json()}


@router.delete("/{key_id}")
def delete_key(key_id: str, admin: Admin, keyfile: KeyFileDep) -> dict[str, Any]:
    try:
        deleted = keyfile.delete(key_id)
    except KeyFileError as exc:
        log.error("keys unreadable; nothing written", extra={"fields": {"error": exc}})
        raise Failure(500, "Failed to delete API key: the key file is unreadable") from exc
    except OSError as exc:
        log.error("key file not saved", extra={"fields": {"error": exc}})
        raise Failure(500, "Failed to delete API key") from exc
    if not deleted:
        raise Failure(404, "API key not found")
    log.info("key deleted", extra={"fields": {"key": key_id}})
    return {"success": True, "message": "API key deleted successfully"}


@router.get("/validate/{key}")
def validate_key(key: str, admin: Admin, keyfile: KeyFileDep) -> dict[str, Any]:
    if not KEY_FORMAT.fullmatch(key):
        raise Failure(400, "Invalid API key format")
    try:
        found = keyfile.find(key if key.startswith("sk-") else "sk-" + key)
    except KeyFileError as exc:
        raise Failure(500, "Failed to validate API key") from exc
    if found is None:
        return {"success": True, "valid": False}
    return {"success": True, "valid": True, "username": found.username}
