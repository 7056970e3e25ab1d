"""Creating `.env` on first run, from `.env.example`, with fresh secrets."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from shared.files import write_atomic


def create_env_file(target: Path, example: Path) -> str | None:
    """Write `target` from `example` with a new JWT_SECRET and AUTH_PASSWORD.

    Returns the generated admin password (to be shown once), or None if `target` exists.
    """
    if target.exists():
        return None
    password = secrets.token_urlsafe(18)
    text = example.read_text()
    text = re.sub(r"(?m)^JWT_SECRET=.*$", f"JWT_SECRET={secrets.token_urlsafe(48)}", text)
    text = re.sub(r"(?m)^AUTH_PASSWORD=.*$", f"AUTH_PASSWORD={password}", text)
    write_atomic(target, text.encode(), mode=0o600)
    return password
