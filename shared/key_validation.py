"""What a key's username and policy may be, with the original's (Joi's) messages word for word:
the one set of rules for the api's `/api/keys` and for `llmp keys` (no web framework here), and
the only statement of them: each rule is an object that both checks a value and describes
itself in JSON Schema, from which the api's OpenAPI document takes its request bodies
(`create_schema`, `update_schema`).

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
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from shared.apikeys import (
    BUDGET_PERIODS,
    MAX_BUDGET_COST,
    Budget,
    Limits,
    PolicyChange,
    format_time,
    parse_time,
)

POLICY_FIELDS = ("enabled", "expiresAt", "models", "limits", "budget", "name", "owner", "note")
KEY_NAME = "[A-Za-z0-9][A-Za-z0-9._-]*"
TEXT_LENGTHS = {"name": 50, "owner": 200, "note": 500}
BUDGET_FIELDS = ("period", "tokens", "cost")
LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))
MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 200
MAX_SAFE_INTEGER = 2**53 - 1  # Joi's number() refuses what JavaScript cannot hold exactly

Schema = dict[str, Any]


class BodyError(ValueError):
    """Fields that break these rules (or a request body that is not an object of fields): the
    message is the original's, every problem joined."""


class Rule:
    """One Joi rule: `check` gives a present value's normalized form and every message about it
    (`label` names the value in them); `schema` says the same rule in JSON Schema, for the api's
    OpenAPI document. Each rule's numbers are its own attributes, read by both."""

    def check(self, label: str, value: Any, now: datetime) -> tuple[Any, list[str]]:
        raise NotImplementedError

    def schema(self) -> Schema:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Text(Rule):
    """`string().min().max()`, and a `pattern` the whole value must match (in the ASCII that
    Python's and JavaScript's regular expressions read alike); `messages` replace Joi's
    defaults by rule (`required`, `pattern`, `min`, `max`)."""

    min_length: int
    max_length: int
    pattern: str | None = None
    messages: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def required(self, name: str) -> str:
        return self.messages.get("required", f'"{name}" is required')

    def check(self, label: str, value: Any, now: datetime) -> tuple[str | None, list[str]]:
        if not isinstance(value, str):
            return None, [f'"{label}" must be a string']
        if value == "":
            return None, [f'"{label}" is not allowed to be empty']
        errors = []
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            errors.append(self.messages.get("pattern", f'"{label}" fails to match the pattern'))
        if len(value) < self.min_length:
            errors.append(
                self.messages.get(
                    "min", f'"{label}" length must be at least {self.min_length} characters long'
                )
            )
        if len(value) > self.max_length:
            errors.append(
                self.messages.get(
                    "max",
                    f'"{label}" length must be less than or equal to {self.max_length} '
                    "characters long",
                )
            )
        return value, errors

    def schema(self) -> Schema:
        out: Schema = {
            "type": "string",
            "minLength": max(1, self.min_length),  # Joi's string() refuses "" in any case
            "maxLength": self.max_length,
        }
        if self.pattern is not None:
            out["pattern"] = f"^(?:{self.pattern})$"
        return out


@dataclasses.dataclass(frozen=True)
class Flag(Rule):
    """`boolean()`, without Joi's conversion of "true" and "false"."""

    def check(self, label: str, value: Any, now: datetime) -> tuple[bool | None, list[str]]:
        if isinstance(value, bool):
            return value, []
        return None, [f'"{label}" must be a boolean']

    def schema(self) -> Schema:
        return {"type": "boolean"}


@dataclasses.dataclass(frozen=True)
class Nullable(Rule):
    """`rule.allow(null)`: null is accepted as it is."""

    rule: Rule

    def check(self, label: str, value: Any, now: datetime) -> tuple[Any, list[str]]:
        if value is None:
            return None, []
        return self.rule.check(label, value, now)

    def schema(self) -> Schema:
        return {"anyOf": [self.rule.schema(), {"type": "null"}]}


@dataclasses.dataclass(frozen=True)
class Expiry(Rule):
    """`date().iso().greater('now')`: an ISO 8601 date or time after now, kept in the original's
    format (`...T03:04:05.678Z`). A document cannot say "after now"; the description does."""

    def check(self, label: str, value: Any, now: datetime) -> tuple[str | None, list[str]]:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            moment = parse_time(value.strip())
            saved = format_time(moment)
        except (ValueError, OverflowError):  # OverflowError: a zone that leaves years 1-9999
            return None, [f'"{label}" must be in ISO 8601 date format']
        if moment <= now:
            return saved, [f'"{label}" must be greater than "now"']
        return saved, []

    def schema(self) -> Schema:
        return {"type": "string", "description": "ISO 8601 date or time, after now"}


@dataclasses.dataclass(frozen=True)
class Patterns(Rule):
    """`array().items(string().trim().min(1).max(max_length)).min(1).max(max_items).unique()`:
    glob patterns, each trimmed (the document counts a pattern's length untrimmed)."""

    max_items: int
    max_length: int

    def check(self, label: str, value: Any, now: datetime) -> tuple[Any, list[str]]:
        if not isinstance(value, list):
            return None, [f'"{label}" must be an array']
        errors: list[str] = []
        patterns: list[str] = []
        for position, item in enumerate(value):
            name = f'"{label}[{position}]"'
            pattern = item.strip() if isinstance(item, str) else None
            if pattern is None:
                errors.append(f"{name} must be a string")
            elif not pattern:
                errors.append(f"{name} is not allowed to be empty")
            elif len(pattern) > self.max_length:
                errors.append(
                    f"{name} length must be less than or equal to {self.max_length} characters long"
                )
            elif pattern in patterns:
                errors.append(f"{name} contains a duplicate value")
            else:
                patterns.append(pattern)
        if not value:
            errors.append(f'"{label}" must contain at least 1 items')
        if len(value) > self.max_items:
            errors.append(f'"{label}" must contain less than or equal to {self.max_items} items')
        return tuple(patterns), errors

    def schema(self) -> Schema:
        return {
            "type": "array",
            "items": {"type": "string", "pattern": r"\S", "maxLength": self.max_length},
            "minItems": 1,
            "maxItems": self.max_items,
            "uniqueItems": True,
            "description": "glob patterns (`llama3*`), trimmed",
        }


@dataclasses.dataclass(frozen=True)
class Label(Rule):
    """`string().trim().max(max_length)`: a key's name (which must match `pattern`) or its owner
    or note (printable characters only), trimmed."""

    max_length: int
    pattern: str | None = None
    pattern_message: str = ""

    def check(self, label: str, value: Any, now: datetime) -> tuple[str | None, list[str]]:
        if not isinstance(value, str):
            return None, [f'"{label}" must be a string']
        text = value.strip()
        if not text:
            return None, [f'"{label}" is not allowed to be empty']
        errors = []
        if len(text) > self.max_length:
            errors.append(
                f'"{label}" length must be less than or equal to {self.max_length} characters long'
            )
        if self.pattern is not None:
            if not re.fullmatch(self.pattern, text):
                errors.append(f'"{label}" {self.pattern_message}')
        elif not text.isprintable():
            errors.append(f'"{label}" must hold printable characters only')
        return text, errors

    def schema(self) -> Schema:
        pattern = r"\S" if self.pattern is None else rf"^\s*(?:{self.pattern})\s*$"
        return {
            "type": "string",
            "pattern": pattern,
            "maxLength": self.max_length,
            "description": "trimmed" + ("" if self.pattern else "; printable characters only"),
        }


def _number_errors(label: str, value: Any) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return [f'"{label}" must be a number']
    if isinstance(value, float) and not math.isfinite(value):  # Python's JSON reads NaN
        return [f'"{label}" must be a number']
    return []


@dataclasses.dataclass(frozen=True)
class Count(Rule):
    """`number().integer().positive()`, and safe: JavaScript holds it exactly."""

    def check(self, label: str, value: Any, now: datetime) -> tuple[int | None, list[str]]:
        if errors := _number_errors(label, value):
            return None, errors
        if isinstance(value, float) and not value.is_integer():
            errors.append(f'"{label}" must be an integer')
        if value <= 0:
            errors.append(f'"{label}" must be a positive number')
        if abs(value) > MAX_SAFE_INTEGER:
            errors.append(f'"{label}" must be a safe number')
        return int(value), errors

    def schema(self) -> Schema:
        return {"type": "integer", "minimum": 1, "maximum": MAX_SAFE_INTEGER}


@dataclasses.dataclass(frozen=True)
class Amount(Rule):
    """`number().positive().less(below)`."""

    below: float

    def check(self, label: str, value: Any, now: datetime) -> tuple[float | None, list[str]]:
        if errors := _number_errors(label, value):
            return None, errors
        if value <= 0:
            return None, [f'"{label}" must be a positive number']
        if value >= self.below:
            return None, [f'"{label}" must be less than {self.below:.0f}']
        return float(value), []

    def schema(self) -> Schema:
        return {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": self.below}


@dataclasses.dataclass(frozen=True)
class Choice(Rule):
    """`string().valid(...)`."""

    values: tuple[str, ...]

    def check(self, label: str, value: Any, now: datetime) -> tuple[str | None, list[str]]:
        if value in self.values:
            return str(value), []
        return None, [f'"{label}" must be one of [{", ".join(self.values)}]']

    def schema(self) -> Schema:
        return {"type": "string", "enum": list(self.values)}


@dataclasses.dataclass(frozen=True)
class Fields(Rule):
    """`object({...})`: each field given is checked by its rule; `required` ones must be there,
    `one_of` at least one of them; other fields are not allowed. The value is the normalized
    fields given, in the rules' order."""

    rules: Mapping[str, Rule]
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()

    def check(self, label: str, value: Any, now: datetime) -> tuple[dict[str, Any], list[str]]:
        if not isinstance(value, dict):
            return {}, [f'"{label}" must be of type object']
        out: dict[str, Any] = {}
        errors: list[str] = []
        for name, rule in self.rules.items():
            if name in value:
                out[name], problems = rule.check(f"{label}.{name}", value[name], now)
                errors += problems
            elif name in self.required:
                errors.append(f'"{label}.{name}" is required')
        if self.one_of and not any(name in value for name in self.one_of):
            errors.append(f'"{label}" must contain at least one of [{", ".join(self.one_of)}]')
        errors += [f'"{label}.{name}" is not allowed' for name in value if name not in self.rules]
        return out, errors

    def schema(self) -> Schema:
        out: Schema = {
            "type": "object",
            "properties": {name: rule.schema() for name, rule in self.rules.items()},
            "additionalProperties": False,
        }
        if self.required:
            out["required"] = list(self.required)
        if self.one_of:
            # At least one of them: with the required fields and nothing else allowed, that is
            # a count of properties (which generated clients read; an anyOf of requireds not).
            assert set(self.rules) == {*self.required, *self.one_of}
            out["minProperties"] = len(self.required) + 1
        return out


@dataclasses.dataclass(frozen=True)
class BudgetFields(Rule):
    """A key's budget: `fields` as a `Budget` (None when they are not a valid one)."""

    fields: Fields

    def check(self, label: str, value: Any, now: datetime) -> tuple[Budget | None, list[str]]:
        fields, errors = self.fields.check(label, value, now)
        if errors:
            return None, errors
        return Budget(fields["period"], fields.get("tokens"), fields.get("cost")), []

    def schema(self) -> Schema:
        return self.fields.schema()


USERNAME = Text(
    3,
    50,
    pattern="[A-Za-z0-9]*",
    messages={
        "required": "Username is required",
        "pattern": "Username must contain only alphanumeric characters",
        "min": "Username must be at least 3 characters long",
        "max": "Username must not exceed 50 characters",
    },
)
LIMITS = Fields({name: Nullable(Count()) for name in LIMIT_FIELDS})
BUDGET = BudgetFields(
    Fields(
        {"period": Choice(BUDGET_PERIODS), "tokens": Count(), "cost": Amount(MAX_BUDGET_COST)},
        required=("period",),
        one_of=("tokens", "cost"),
    )
)
POLICY: Mapping[str, Rule] = {
    "enabled": Flag(),
    "expiresAt": Nullable(Expiry()),
    "models": Nullable(Patterns(MAX_PATTERNS, MAX_PATTERN_LENGTH)),
    "limits": LIMITS,
    "budget": Nullable(BUDGET),
    "name": Nullable(
        Label(
            TEXT_LENGTHS["name"],
            KEY_NAME,
            'must start with a letter or digit and hold only letters, digits, ".", "_" and "-"',
        )
    ),
    "owner": Nullable(Label(TEXT_LENGTHS["owner"])),
    "note": Nullable(Label(TEXT_LENGTHS["note"])),
}
assert tuple(POLICY) == POLICY_FIELDS and tuple(BUDGET.fields.rules) == BUDGET_FIELDS


def string_errors(fields: Mapping[str, Any], name: str, rule: Text) -> list[str]:
    """Every message about the string field `name` (required) by `rule`."""
    if name not in fields:
        return [rule.required(name)]
    return rule.check(name, fields[name], datetime.now(UTC))[1]


def username_errors(fields: Mapping[str, Any]) -> list[str]:
    return string_errors(fields, "username", USERNAME)


def key_policy(
    fields: Mapping[str, Any], now: datetime | None = None
) -> tuple[PolicyChange, list[str]]:
    """The policy in `fields` (only the fields given), normalized, and every message about it;
    an expiry must be after `now` (the current time if not given)."""
    moment = now or datetime.now(UTC)
    change: dict[str, Any] = {}
    errors: list[str] = []
    for name, rule in POLICY.items():
        if name in fields:
            change[name], problems = rule.check(name, fields[name], moment)
            errors += problems
    return cast(PolicyChange, change), errors


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


def rotation_schema() -> Schema:
    """`POST /api/keys/{id}/rotate`'s body in JSON Schema (`key_rotation` checks it)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "until": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "ISO 8601: the current secret is accepted until then (at most "
                f"{MAX_OVERLAP_DAYS} days ahead); absent, null or past: refused at once",
            }
        },
    }


def joined(errors: list[str]) -> str:
    return ", ".join(errors)


def create_schema() -> Schema:
    """`POST /api/keys`'s body in JSON Schema: a username and an optional policy (other fields
    are ignored, as by the original)."""
    policy = {name: rule.schema() for name, rule in POLICY.items()}
    return {
        "type": "object",
        "required": ["username"],
        "properties": {"username": USERNAME.schema(), **policy},
    }


def update_schema() -> Schema:
    """`PATCH /api/keys/{id}`'s body in JSON Schema: one or more policy fields, nothing else."""
    return {**Fields(POLICY).schema(), "minProperties": 1}
