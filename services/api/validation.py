"""Request bodies: JSON or urlencoded, as in the original, read into fields and checked with the
original's (Joi's) messages word for word. The rules of a key live in shared/key_validation.py
(`llmp keys` applies them too); the login's are here. The OpenAPI document's request bodies are
written from the same rules (`request_body`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request

from shared.key_validation import BodyError, Schema, Text, joined, string_errors

# The original's rules but its minimum password length: a wrong password of any length is
# answered `Invalid credentials`, never a hint about the right one's length.
LOGIN_USERNAME = Text(1, 128)
PASSWORD = Text(
    1,
    128,
    messages={"required": "Password is required", "max": "Password must not exceed 128 characters"},
)


async def read_fields(request: Request) -> dict[str, Any]:
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in content_type:
        try:
            return dict(parse_qsl(raw.decode(), keep_blank_values=True))
        except UnicodeDecodeError as exc:
            raise BodyError("Invalid request body") from exc
    if not raw.strip():
        return {}
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested too deep
        raise BodyError("Invalid JSON body") from exc
    if not isinstance(document, dict):
        raise BodyError("Invalid request body")
    return document


async def valid_fields(
    request: Request, check: Callable[[dict[str, Any]], list[str]]
) -> dict[str, Any]:
    """The body's fields if `check` finds nothing wrong; BodyError with every message if not."""
    fields = await read_fields(request)
    errors = check(fields)
    if errors:
        raise BodyError(joined(errors))
    return fields


def login_errors(fields: dict[str, Any]) -> list[str]:
    return string_errors(fields, "username", LOGIN_USERNAME) + string_errors(
        fields, "password", PASSWORD
    )


def login_schema() -> Schema:
    """The login's body in JSON Schema, from the same rules."""
    return {
        "type": "object",
        "required": ["username", "password"],
        "properties": {"username": LOGIN_USERNAME.schema(), "password": PASSWORD.schema()},
    }


def request_body(schema: Schema) -> dict[str, Any]:
    """A route's `openapi_extra` for a JSON body of `schema` (the api reads bodies itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
