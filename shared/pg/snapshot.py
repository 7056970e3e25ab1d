"""A replica's last good copy of the keys in PostgreSQL: `data/apikeys.pg-snapshot.json`.

Without it, a proxy worker started while the database is away (a replica restarted during an
outage) would have no keys at all and refuse everyone, while the workers started before it serve
the keys they hold. With it, every worker of the replica serves the same, newest set it has seen.

`{"version": N, "keys": [...]}` in the key file's own form, 0600 like it (it holds the secrets).
The workers write it when they load a newer version than the copy's, under the file's lock, so
an older set never replaces a newer one.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared import files
from shared.apikeys import ApiKey, KeyFileError


def save(path: Path, version: int, keys: list[ApiKey]) -> bool:
    """Make (`version`, `keys`) the copy unless it holds that version or a newer one; True if
    written. Raises OSError (a full or read-only disk)."""
    with files.locked(path):
        try:
            if load(path)[0] >= version:
                return False
        except KeyFileError:
            pass  # missing or broken: replaced
        data = json.dumps({"version": version, "keys": [k.to_json() for k in keys]}, indent=1)
        files.write_atomic(path, data.encode() + b"\n", mode=0o600)
        return True


def load(path: Path) -> tuple[int, list[ApiKey]]:
    """The copy's version and keys. Raises KeyFileError if it is missing or broken."""
    try:
        raw = json.loads(path.read_bytes())
        version, items = raw["version"], raw["keys"]
        if not isinstance(version, int) or not isinstance(items, list):
            raise ValueError("expected {version, keys}")
        return version, [ApiKey.from_json(item) for item in items]
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path} is missing") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path} is unusable: {exc}") from exc
