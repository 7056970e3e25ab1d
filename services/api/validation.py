"""Request bodies and their validation, with the original's (Joi's) messages word for word.

Bodies may be JSON or urlencoded, as in the original. Each check returns every message for its
field, in Joi's order; `joined` makes the original's `", "`-separated text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request

_ALPHANUM = re.compile(r"[A-Za-z0-9]*")


class BodyError(ValueError):
    """The body is not JSON (or urlencoded) describing an object."""


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
    except (ValueError, UnicodeDecodeError) as exc:
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


def _string(
    fields: dict[str, Any],
    name: str,
    min_length: int,
    max_length: int,
    messages: dict[str, str],
    extra: Callable[[str], list[str]] = lambda value: [],
) -> list[str]:
    if name not in fields:
        return [messages.get("required", f'"{name}" is required')]
    value = fields[name]
    if not isinstance(value, str):
        return [f'"{name}" must be a string']
    if value == "":
        return [f'"{name}" is not allowed to be empty']
    errors = extra(value)
    if len(value) < min_length:
        errors.append(
            messages.get("min", f'"{name}" length must be at least {min_length} characters long')
        )
    if len(value) > max_length:
        errors.append(
            messages.get(
                "max", f'"{name}" length must be less than or equal to {max_length} characters long'
            )
        )
    return errors


def login_errors(fields: dict[str, Any]) -> list[str]:
    return _string(fields, "username", 1, 128, {}) + _string(
        fields,
        "password",
        8,
        128,
        {
            "required": "Password is required",
            "min": "Password must be at least 8 characters long",
            "max": "Password must not exceed 128 characters",
        },
    )


def username_errors(fields: dict[str, Any]) -> list[str]:
    def alphanumeric(value: str) -> list[str]:
        if _ALPHANUM.fullmatch(value):
            return []
        return ["Username must contain only alphanumeric characters"]

    return _string(
        fields,
        "username",
        3,
        50,
        {
            "required": "Username is required",
            "min": "Username must be at least 3 characters long",
            "max": "Username must not exceed 50 characters",
        },
        alphanumeric,
    )


def joined(errors: list[str]) -> str:
    return ", ".join(errors)
