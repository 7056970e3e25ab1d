"""`llmp`: run the stack."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llmp.run import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llmp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("run", help="prepare and run every program under supervisord")
    start.add_argument(
        "--env-file",
        type=Path,
        default=Path(os.environ.get("ENV_FILE", ".env")),
        help="settings file (default: $ENV_FILE or .env)",
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.env_file)


if __name__ == "__main__":
    main()
