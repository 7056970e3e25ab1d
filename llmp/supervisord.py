"""supervisord, its own log lines in llmp's format: `python -m llmp.supervisord -c FILE`.

In the foreground supervisord writes its own lines (a program spawned, exited, stopped) on
stdout as `2026-01-02 03:04:05,678 INFO spawned: ...`, in local time; every other line there is
`time LEVEL program message` (shared/logs.py, llmp.nginx_log). This runs supervisord's own
main() in this process (so it stays the process `llmp run` execs: PID 1 in the container), with
its records stamped and named as ours: `2026-01-02T03:04:05.678Z INFO supervisord spawned: ...`.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from supervisor import loggers, supervisord  # no stubs: mypy ignores supervisor.* (pyproject)

from shared.logs import stamp

# supervisord's level names, as Python's logging names them.
LEVELS = {
    "CRIT": "CRITICAL",
    "ERRO": "ERROR",
    "WARN": "WARNING",
    "INFO": "INFO",
    "DEBG": "DEBUG",
    "TRAC": "DEBUG",
    "BLAT": "DEBUG",
}
FORMAT = "%(asctime)s %(levelname)s supervisord %(message)s\n"


def _asdict(record: Any) -> dict[str, str]:
    if record.dictrepr is None:
        message = loggers.as_string(record.msg)
        if record.kw:
            message = message % record.kw
        name = loggers.LOG_LEVELS_BY_NUM[record.level]
        record.dictrepr = {
            "message": message.rstrip("\n"),
            "levelname": LEVELS.get(name, name),
            "asctime": stamp(time.time()),
        }
    return record.dictrepr  # type: ignore[no-any-return]


def _handle_stdout(logger: Any, fmt: str) -> None:
    handler = loggers.StreamHandler(sys.stdout)
    handler.setFormat(FORMAT)
    handler.setLevel(logger.level)
    logger.addHandler(handler)


def install() -> None:
    """Make supervisord's own log records llmp's lines (its programs' output is untouched)."""
    loggers.LogRecord.asdict = _asdict
    loggers.handle_stdout = _handle_stdout


def main() -> None:
    install()
    supervisord.main()


if __name__ == "__main__":
    main()
