"""What a key's username and policy may be, with the original's (Joi's) messages word for word:
the one set of rules for the api's `/api/keys` and for `llmp keys` (no web framework here).

Each check returns every message for its field, in Joi's order; `joined` makes the original's
`", "`-separated text. A key's policy (which the original does not have) is checked the same
way, in Joi's default messages, as if by `Joi.object({enabled: boolean(), expiresAt:
date().iso().allow(null), models: array().items(string().trim().min(1).max(200)).min(1).max(100)
.unique().allow(null), limits: object({<each>: number().integer().positive().allow(null)}),
budget: object({period: string().valid('day', 'week', 'month').required(), tokens:
number().integer().positive(), cost: number().positive()}).or('tokens', 'cost').allow(null),
name: string().trim().pattern(/^[A-Za-z0-9][A-Za-z0-9._-]*$/).max(50).allow(null), owner:
string().trim().max(200).allow(null), note: string().trim().max(500).allow(null)})` (owner and
note: printable characters only).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from shared.apikeys import (
    BUDGET_PERIODS,
    MAX_BUDGET_COST,
    Budget,
    Limits,
    PolicyChange,
    format_time,
    parse_time,
)

_ALPHANUM = re.compile(r"[A-Za-z0-9]*")

POLICY_FIELDS = ("enabled", "expiresAt", "models", "limits", "budget", "name", "owner", "note")
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TEXT_LENGTHS = {"name": 50, "owner": 200, "note": 500}
BUDGET_FIELDS = ("period", "tokens", "cost")
LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))
MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 200
MAX_SAFE_INTEGER = 2**53 - 1  # Joi's number() refuses what JavaScript cannot hold exactly


class BodyError(ValueError):
    """Fields that break these rules (or a request body that is not an object of fields): the
    message is the original's, every problem joined."""


def string_errors(
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


def username_errors(fields: dict[str, Any]) -> list[str]:
    def alphanumeric(value: str) -> list[str]:
        if _ALPHANUM.fullmatch(value):
            return []
        return ["Username must contain only alphanumeric characters"]

    return string_errors(
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


def _expiry(value: Any, now: datetime) -> tuple[str | None, list[str]]:
    """An ISO 8601 time after `now` (Joi's `greater('now')`), kept in the original's format
    (`...T03:04:05.678Z`); None: never."""
    if value is None:
        return None, []
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        moment = parse_time(value.strip())
        saved = format_time(moment)
    except (ValueError, OverflowError):  # OverflowError: a zone that leaves years 1-9999
        return None, ['"expiresAt" must be in ISO 8601 date format']
    if moment <= now:
        return saved, ['"expiresAt" must be greater than "now"']
    return saved, []


def _models(value: Any) -> tuple[tuple[str, ...] | None, list[str]]:
    """Glob patterns, trimmed; None: every model."""
    if value is None:
        return None, []
    if not isinstance(value, list):
        return None, ['"models" must be an array']
    errors: list[str] = []
    patterns: list[str] = []
    for position, item in enumerate(value):
        name = f'"models[{position}]"'
        pattern = item.strip() if isinstance(item, str) else None
        if pattern is None:
            errors.append(f"{name} must be a string")
        elif not pattern:
            errors.append(f"{name} is not allowed to be empty")
        elif len(pattern) > MAX_PATTERN_LENGTH:
            errors.append(
                f"{name} length must be less than or equal to {MAX_PATTERN_LENGTH} characters long"
            )
        elif pattern in patterns:
            errors.append(f"{name} contains a duplicate value")
        else:
            patterns.append(pattern)
    if not value:
        errors.append('"models" must contain at least 1 items')
    if len(value) > MAX_PATTERNS:
        errors.append(f'"models" must contain less than or equal to {MAX_PATTERNS} items')
    return tuple(patterns), errors


def _limit(name: str, value: Any) -> tuple[int | None, list[str]]:
    """A positive integer; None: no limit."""
    if value is None:
        return None, []
    label = f'"limits.{name}"'
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, [f"{label} must be a number"]
    if isinstance(value, float) and not math.isfinite(value):  # Python's JSON reads NaN
        return None, [f"{label} must be a number"]
    errors = []
    if isinstance(value, float) and not value.is_integer():
        errors.append(f"{label} must be an integer")
    if value <= 0:
        errors.append(f"{label} must be a positive number")
    if abs(value) > MAX_SAFE_INTEGER:
        errors.append(f"{label} must be a safe number")
    return int(value), errors


def _limits(value: Any) -> tuple[dict[str, int | None], list[str]]:
    if not isinstance(value, dict):
        return {}, ['"limits" must be of type object']
    limits: dict[str, int | None] = {}
    errors: list[str] = []
    for name in LIMIT_FIELDS:
        if name in value:
            limits[name], problems = _limit(name, value[name])
            errors += problems
    errors += [f'"limits.{name}" is not allowed' for name in value if name not in LIMIT_FIELDS]
    return limits, errors


def _budget(value: Any) -> tuple[Budget | None, list[str]]:
    """A key's budget; None: no budget."""
    if value is None:
        return None, []
    if not isinstance(value, dict):
        return None, ['"budget" must be of type object']
    errors: list[str] = []
    period = value.get("period")
    if "period" not in value:
        errors.append('"budget.period" is required')
    elif period not in BUDGET_PERIODS:
        errors.append('"budget.period" must be one of [day, week, month]')
    tokens, cost = value.get("tokens"), value.get("cost")
    if tokens is not None:
        tokens, problems = _limit("tokens", tokens)
        errors += [p.replace('"limits.tokens"', '"budget.tokens"') for p in problems]
    if cost is not None:
        if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost):
            errors.append('"budget.cost" must be a number')
        elif cost <= 0:
            errors.append('"budget.cost" must be a positive number')
        elif cost >= MAX_BUDGET_COST:
            errors.append(f'"budget.cost" must be less than {MAX_BUDGET_COST:.0f}')
    if "tokens" not in value and "cost" not in value:
        errors.append('"budget" must contain at least one of [tokens, cost]')
    errors += [f'"budget.{name}" is not allowed' for name in value if name not in BUDGET_FIELDS]
    if errors:
        return None, errors
    return Budget(str(period), tokens, None if cost is None else float(cost)), []


def _text(name: str, value: Any) -> tuple[str | None, list[str]]:
    """A key's name, owner or note, trimmed; None: none."""
    if value is None:
        return None, []
    label = f'"{name}"'
    if not isinstance(value, str):
        return None, [f"{label} must be a string"]
    text = value.strip()
    if not text:
        return None, [f"{label} is not allowed to be empty"]
    errors = []
    if len(text) > TEXT_LENGTHS[name]:
        errors.append(
            f"{label} length must be less than or equal to {TEXT_LENGTHS[name]} characters long"
        )
    if name == "name" and not _KEY_NAME.fullmatch(text):
        errors.append(
            f"{label} must start with a letter or digit and hold only letters, digits, "
            '".", "_" and "-"'
        )
    elif not text.isprintable():
        errors.append(f"{label} must hold printable characters only")
    return text, errors


def key_policy(
    fields: Mapping[str, Any], now: datetime | None = None
) -> tuple[PolicyChange, list[str]]:
    """The policy in `fields` (only the fields given), normalized, and every message about it;
    an expiry must be after `now` (the current time if not given)."""
    change: PolicyChange = {}
    errors: list[str] = []
    if "enabled" in fields:
        if isinstance(fields["enabled"], bool):
            change["enabled"] = fields["enabled"]
        else:
            errors.append('"enabled" must be a boolean')
    if "expiresAt" in fields:
        change["expiresAt"], problems = _expiry(fields["expiresAt"], now or datetime.now(UTC))
        errors += problems
    if "models" in fields:
        change["models"], problems = _models(fields["models"])
        errors += problems
    if "limits" in fields:
        change["limits"], problems = _limits(fields["limits"])
        errors += problems
    if "budget" in fields:
        change["budget"], problems = _budget(fields["budget"])
        errors += problems
    for name in ("name", "owner", "note"):
        if name in fields:
            change[name], problems = _text(name, fields[name])
            errors += problems
    return change, errors


def key_create(fields: Mapping[str, Any]) -> tuple[str, PolicyChange]:
    """`POST /api/keys`: a username and an optional policy; other fields are ignored, as in the
    original. Raises BodyError with every message."""
    policy, errors = key_policy(fields)
    errors = username_errors(dict(fields)) + errors
    if errors:
        raise BodyError(joined(errors))
    return str(fields["username"]).strip(), policy


def key_update(fields: Mapping[str, Any]) -> PolicyChange:
    """`PATCH /api/keys/{id}`: one or more policy fields and nothing else. Raises BodyError."""
    change, errors = key_policy(fields)
    errors += [f'"{name}" is not allowed' for name in fields if name not in POLICY_FIELDS]
    if not fields:
        errors.append('"value" must have at least 1 key')
    if errors:
        raise BodyError(joined(errors))
    return change


MAX_OVERLAP_DAYS = 365


def key_rotation(fields: Mapping[str, Any], now: datetime | None = None) -> datetime:
    """`POST /api/keys/{id}/rotate`: `until`, when the current secret stops being accepted (an
    ISO 8601 time at most MAX_OVERLAP_DAYS ahead; absent, null or past: at once). Raises
    BodyError."""
    now = now or datetime.now(UTC)
    errors = [f'"{name}" is not allowed' for name in fields if name != "until"]
    until = now
    if fields.get("until") is not None:
        value = fields["until"]
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            until = parse_time(value.strip())
            format_time(until)
        except (ValueError, OverflowError):
            errors.append('"until" must be in ISO 8601 date format')
        else:
            if (until - now).total_seconds() > MAX_OVERLAP_DAYS * 86400:
                errors.append(f'"until" must be at most {MAX_OVERLAP_DAYS} days from now')
    if errors:
        raise BodyError(joined(errors))
    return max(until, now)


def joined(errors: list[str]) -> str:
    return ", ".join(errors)
