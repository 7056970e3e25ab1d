"""`.env` on first run: created from `.env.example` with fresh secrets, and checked.

A missing `.env` is created; an empty one (made with `touch .env` so that `docker compose`
mounts a file) is filled in place, since a file mounted into a container cannot be replaced by
a rename. Anything else that is not a regular file is refused: a directory there is what
docker compose makes of a `.env` that does not exist, and starting on the built-in defaults
(admin / secure_password, no upstreams) would look healthy and be wrong.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from shared.files import write_atomic


class EnvFileError(Exception):
    """The settings file is there but cannot be one."""


def _fresh(example: Path) -> tuple[bytes, str]:
    password = secrets.token_urlsafe(18)
    text = example.read_text()
    text = re.sub(r"(?m)^JWT_SECRET=.*$", f"JWT_SECRET={secrets.token_urlsafe(48)}", text)
    text = re.sub(r"(?m)^AUTH_PASSWORD=.*$", f"AUTH_PASSWORD={password}", text)
    return text.encode(), password


def create_env_file(target: Path, example: Path) -> str | None:
    """Write `target` from `example` with a new JWT_SECRET and AUTH_PASSWORD if it is missing
    or empty. Returns the generated admin password (to be shown once), or None if `target`
    has settings already (or there is no example to start from)."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise EnvFileError(
            f"{target} is a directory where the settings file should be (docker compose makes "
            "one when the file it should mount is missing): remove it, create the file "
            "(`touch .env`: llmp fills an empty one with fresh secrets, or `cp .env.example "
            ".env` and edit it) and start again"
        )
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise EnvFileError(f"{target} is not a regular file")
    if (st is not None and st.st_size > 0) or not example.exists():
        return None
    data, password = _fresh(example)
    if st is None:
        write_atomic(target, data, mode=0o600)
        return password
    with open(target, "r+b") as f:  # empty and perhaps mounted: filled where it is
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())
    return password
