"""Logging: one line per event on stdout, `time level program message key=value ...`.

Context goes in `extra={"fields": {...}}` (None values are left out); values are never keys,
passwords or prompts.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


class _Formatter(logging.Formatter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {self.program}"
        line += " " + record.getMessage()
        fields: dict[str, Any] = getattr(record, "fields", {})
        for name, value in fields.items():
            if value is None:
                continue
            text = str(value)
            if " " in text or text == "":
                text = '"' + text.replace('"', '\\"') + '"'
            line += f" {name}={text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that setting up again replaces it and leaves other handlers alone."""


def setup_logging(program: str, level: str = "INFO") -> None:
    handler = _Handler(sys.stdout)
    handler.setFormatter(_Formatter(program))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _Handler)] + [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "watchdog", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
