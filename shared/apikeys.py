"""`data/apikeys.json`: the API keys, in the original llm-proxy's format.

    {"keys": [{"id": "<32 hex>", "username": "...", "key": "sk-<64 hex>", "createdAt": "<ISO>"}]}

The api service is the only writer; the proxy reads it. A file that cannot be read or parsed is
an error (`KeyFileError`), never an empty key set: the caller keeps what it had.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.files import write_json_atomic


class KeyFileError(Exception):
    """apikeys.json exists but cannot be read or is not in the expected format."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    username: str
    key: str
    createdAt: str

    @classmethod
    def new(cls, username: str) -> ApiKey:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return cls(
            id=secrets.token_hex(16),
            username=username,
            key="sk-" + secrets.token_hex(32),
            createdAt=now,
        )


def _parse(raw: Any) -> list[ApiKey]:
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise KeyFileError('expected {"keys": [...]}')
    keys = []
    for position, item in enumerate(raw["keys"]):
        if not isinstance(item, dict):
            raise KeyFileError(f"keys[{position}] is not an object")
        fields = {name: item.get(name) for name in ("id", "username", "key", "createdAt")}
        if not all(isinstance(value, str) and value for value in fields.values()):
            raise KeyFileError(f"keys[{position}] needs non-empty id, username, key and createdAt")
        keys.append(ApiKey(**fields))  # type: ignore[arg-type]
    return keys


def read_keys(path: Path) -> list[ApiKey]:
    """The keys in `path`; a missing file is no keys. Raises KeyFileError otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return _parse(json.loads(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path} is not valid JSON: {exc}") from exc


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    write_json_atomic(path, {"keys": [asdict(k) for k in keys]}, mode=0o600)
