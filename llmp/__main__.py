"""llmp: run the gateway, and do by hand what an operator needs.

  llmp run                      prepare and run every program under supervisord
  llmp keys list                the API keys
  llmp keys create USERNAME     a new key for USERNAME (printed once)
  llmp keys revoke ID|USERNAME  delete a key; the proxy refuses it within a second
  llmp status                   each program, upstream and certificate, from data/
  llmp backup FILE              a consistent copy of data/, taken while llmp runs
  llmp restore FILE             put a backup back (with llmp stopped)

Settings come from $ENV_FILE or .env, overridden by the environment, as for the programs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llmp import backup, privileges
from llmp.run import run
from services.api.validation import username_errors
from shared.apikeys import KeyFileError
from shared.keyfile import DuplicateUsername, KeyFile
from shared.settings import Settings, load_settings
from shared.status import status_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=Path(os.environ.get("ENV_FILE", ".env")),
        help="settings file (default: $ENV_FILE or .env)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="prepare and run every program under supervisord")
    keys = commands.add_parser("keys", help="list, create or revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    actions.add_parser("list")
    actions.add_parser("create").add_argument("username")
    actions.add_parser("revoke").add_argument("key", help="the key's id or its username")
    commands.add_parser("status", help="each program, upstream and certificate")
    commands.add_parser("backup").add_argument("file", type=Path)
    commands.add_parser("restore").add_argument("file", type=Path)
    return parser


def keys_command(settings: Settings, action: str, value: str | None) -> int:
    keyfile = KeyFile(settings.apikeys_file)
    if action == "list":
        for key in keyfile.list():
            print(f"{key.id}  {key.createdAt}  {key.username}")
        return 0
    assert value is not None
    if action == "create":
        errors = username_errors({"username": value})  # the api's own rules and messages
        if errors:
            print(f"llmp: {', '.join(errors)}", file=sys.stderr)
            return 2
        try:
            key = keyfile.create(value)
        except DuplicateUsername:
            print(f"llmp: {value} already has a key", file=sys.stderr)
            return 1
        print(key.key)
        return 0
    match = [k for k in keyfile.list() if value in (k.id, k.username)]
    if not match or not keyfile.delete(match[0].id):
        print(f"llmp: no key {value!r}", file=sys.stderr)
        return 1
    print(f"revoked {match[0].id} ({match[0].username})")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "run":
        run(args.env_file)
        return
    user = privileges.target()
    if user is not None:  # `docker exec` runs as root: files must stay the programs' user's
        privileges.become(user)
    settings = load_settings(str(args.env_file))
    try:
        if args.command == "keys":
            code = keys_command(
                settings, args.action, getattr(args, "username", None) or getattr(args, "key", None)
            )
        elif args.command == "status":
            report = status_report(settings)
            print(json.dumps(report, indent=2))
            code = 0 if report["ok"] else 1
        elif args.command == "backup":
            names = backup.backup(settings.data_dir, args.file)
            print(f"backed up {', '.join(names) or 'nothing'} to {args.file}")
            code = 0
        else:
            names = backup.restore(args.file, settings.data_dir)
            print(f"restored {', '.join(names)} into {settings.data_dir}")
            code = 0
    except (KeyFileError, backup.RestoreRefused, OSError) as exc:
        print(f"llmp: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
