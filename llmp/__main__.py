"""llmp: run the gateway, and do by hand what an operator needs.

  llmp run                      prepare and run every program under supervisord
  llmp keys list                the API keys, each with its state, models and limits
  llmp keys create USERNAME     a new key for USERNAME (printed once)
  llmp keys set KEY [--enable|--disable] [--expires ISO|never] [--models P1,P2|all]
                [--rpm N] [--tpm N] [--tpd N] [--concurrency N]
                                change a key's policy (0 or none removes a limit)
  llmp keys revoke KEY          delete a key; the proxy refuses it within a second
                                (KEY: the key's id, username or secret)
  llmp status                   each program, upstream and certificate, from data/
  llmp database import|export   move keys and history from data/ into DATABASE_URL, or back
  llmp database migrate         bring DATABASE_URL's tables up to date, then exit
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

from llmp import backup, database, keys, privileges
from llmp.run import run
from shared.apikeys import KeyFileError
from shared.settings import load_settings
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
    keys.add_parser(commands)
    database.add_parser(commands)
    commands.add_parser("status", help="each program, upstream and certificate")
    commands.add_parser("backup").add_argument("file", type=Path)
    commands.add_parser("restore").add_argument("file", type=Path)
    return parser


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
            code = keys.keys_command(settings, args)
        elif args.command == "database":
            code = database.database_command(settings, args)
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
