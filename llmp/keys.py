"""`llmp keys`: the API keys by hand, with the api's own rules and messages.

  llmp keys list              every key with its state, allowed models and limits
  llmp keys create USERNAME [--name NAME]   a new key for USERNAME (printed once); a user's
                              further keys need a name of their own
  llmp keys set KEY OPTIONS   change a key's policy (KEY: its id, secret, or username if that
                              user has one key)
  llmp keys rotate KEY [--until ISO]   a new secret (printed once); the old one is accepted
                              until ISO, or refused at once without it
  llmp keys revoke KEY        delete a key

The proxy applies every change within a second, as for the api's. `set` checks its options
with the api's `PATCH /api/keys/{id}` rules, so a value the api refuses is refused here in the
same words (`"limits.requestsPerMinute" must be a positive number`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from shared import storage
from shared.apikeys import ApiKey
from shared.key_validation import BodyError, key_create, key_rotation, key_update
from shared.keystore import DuplicateUsername, KeyAdmin
from shared.settings import Settings

# The options of `set` for the limits, and what each is called in the file and the api.
LIMIT_OPTIONS = {
    "rpm": "requestsPerMinute",
    "tpm": "tokensPerMinute",
    "tpd": "tokensPerDay",
    "concurrency": "maxConcurrent",
}
UNITS = {
    "requestsPerMinute": "requests/min",
    "tokensPerMinute": "tokens/min",
    "tokensPerDay": "tokens/day",
    "maxConcurrent": "concurrent requests",
}
NOTHING_TO_CHANGE = (
    "nothing to change: give --enable, --disable, --expires, --models, --rpm, --tpm, --tpd "
    "or --concurrency"
)


def add_parser(commands: Any) -> None:
    """`keys` and its actions, on the `llmp` parser's subcommands."""
    keys = commands.add_parser("keys", help="list, create, change or revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every key with its policy (never the secret)")
    create = actions.add_parser("create", help="a new key, printed once")
    create.add_argument("username")
    create.add_argument("--name", help="tells this user's keys apart (needed past the first)")
    change = actions.add_parser("set", help="change a key's policy")
    change.add_argument("key", help="the key's id, username or secret")
    state = change.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True)
    state.add_argument(
        "--disable", dest="enabled", action="store_const", const=False, help="refused, kept"
    )
    change.add_argument("--expires", metavar="ISO|never", help="ISO 8601 time, or never")
    change.add_argument("--models", metavar="P1,P2|all", help="glob patterns, or all")
    for flag, name in LIMIT_OPTIONS.items():
        change.add_argument(
            f"--{flag}", metavar="N", help=f"at most N {UNITS[name]}; 0 or none: no limit"
        )
    rotate = actions.add_parser("rotate", help="a new secret, printed once")
    rotate.add_argument("key", help="the key's id, username or secret")
    rotate.add_argument(
        "--until", metavar="ISO", help="the old secret works until then (default: refused now)"
    )
    actions.add_parser("revoke", help="delete a key").add_argument(
        "key", help="the key's id, username or secret"
    )


def _limit(text: str) -> int | str | None:
    if text.strip().lower() in ("0", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        return text  # the api's check says what is wrong with it


def update_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The options given to `set`, as the body of `PATCH /api/keys/{id}` would hold them."""
    fields: dict[str, Any] = {}
    if args.enabled is not None:
        fields["enabled"] = args.enabled
    if args.expires is not None:
        fields["expiresAt"] = None if args.expires.strip().lower() == "never" else args.expires
    if args.models is not None:
        fields["models"] = None if args.models.strip().lower() == "all" else args.models.split(",")
    limits = {
        name: _limit(value)
        for flag, name in LIMIT_OPTIONS.items()
        if (value := getattr(args, flag)) is not None
    }
    if limits:
        fields["limits"] = limits
    return fields


def describe(key: ApiKey, now: datetime | None = None) -> str:
    """`enabled, expires 2026-12-31T00:00:00.000Z  models: llama3*  limits: 60 requests/min`."""
    state = "enabled" if key.enabled else "disabled"
    if key.expiresAt is not None:
        state += f", {'expired' if key.expired(now) else 'expires'} {key.expiresAt}"
    models = ", ".join(key.models) if key.models is not None else "all"
    limits = ", ".join(f"{value} {UNITS[name]}" for name, value in key.limits.to_json().items())
    return f"{state}  models: {models}  limits: {limits or 'none'}"


class Ambiguous(Exception):
    """A username that holds several keys: which one is meant is not said."""


def _find(keyfile: KeyAdmin, value: str) -> ApiKey | None:
    """The key by id or secret, or by username when that user holds exactly one."""
    found = keyfile.by_id_or_secret(value)
    if found is not None:
        return found
    held = [k for k in keyfile.list() if k.username == value]
    if len(held) > 1:
        raise Ambiguous(f"{value} has {len(held)} keys: give the key's id")
    return held[0] if held else None


def _fail(message: str, code: int) -> int:
    print(f"llmp: {message}", file=sys.stderr)
    return code


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    keyfile = storage.key_admin(settings)
    if args.action == "list":
        now = datetime.now(UTC)
        for key in keyfile.list():
            label = f"{key.username} ({key.name})" if key.name else key.username
            print(f"{key.id}  {key.createdAt}  {label}  {describe(key, now)}")
        return 0
    if args.action == "create":
        fields = {"username": args.username}
        if args.name is not None:
            fields["name"] = args.name
        try:  # the api's own rules and messages
            username, details = key_create(fields)
        except BodyError as exc:
            return _fail(str(exc), 2)
        try:
            key = keyfile.create(username, details)
        except DuplicateUsername as exc:
            if exc.name is None:
                return _fail(f"{args.username} already has a key: give --name", 1)
            return _fail(f"{args.username} already has a key named {exc.name}", 1)
        print(key.key)
        return 0
    try:
        found = _find(keyfile, args.key)
    except Ambiguous as exc:
        return _fail(str(exc), 2)
    if args.action == "set":
        fields = update_fields(args)
        if not fields:
            return _fail(NOTHING_TO_CHANGE, 2)
        try:
            change = key_update(fields)
        except BodyError as exc:
            return _fail(str(exc), 2)
        updated = keyfile.update(found.id, change) if found else None
        if updated is None:
            return _fail(f"no key {args.key!r}", 1)
        print(f"updated {updated.id} ({updated.username}): {describe(updated)}")
        return 0
    if args.action == "rotate":
        try:
            until = key_rotation({} if args.until is None else {"until": args.until})
        except BodyError as exc:
            return _fail(str(exc), 2)
        rotated = keyfile.rotate(found.id, until) if found else None
        if rotated is None:
            return _fail(f"no key {args.key!r}", 1)
        print(rotated.key)
        return 0
    if found is None or not keyfile.delete(found.id):
        return _fail(f"no key {args.key!r}", 1)
    print(f"revoked {found.id} ({found.username})")
    return 0
