"""Logging: one line per event on stdout, `time level program message key=value ...`.

Context goes in `extra={"fields": {...}}` (None values are left out); values are never keys,
passwords or prompts.

Lines below WARNING are written in batches, at most FLUSH_SECONDS late: the proxy logs a line
per request, and one write per line (each also a wake-up of supervisord, which relays it) cost
more than the rest of the logging. Warnings and errors go out at once, with what was waiting.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from typing import Any, TextIO

FLUSH_SECONDS = 0.2
BATCH_LINES = 256


def stamp(now: float) -> str:
    """The time of a line in llmp's format: `2026-12-03T16:43:50.123Z` (UTC, milliseconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class _Formatter(logging.Formatter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program
        self._stamp = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        line = self.line(record.created, record.levelname, record.getMessage(), fields)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def line(self, created: float, level: str, message: str, fields: dict[str, Any]) -> str:
        """A line without its traceback: `time level program message key=value ...`."""
        second, stamp = self._stamp
        if int(created) != second:  # one strftime a second, not one a line
            second = int(created)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = (second, stamp)  # one assignment: safe from any thread
        parts = [f"{stamp}.{int((created - second) * 1000):03d}Z {level} {self.program} {message}"]
        for name, value in fields.items():
            if value is None:
                continue
            text = str(value)
            if " " in text or not text:
                text = '"' + text.replace('"', '\\"') + '"'
            parts.append(f"{name}={text}")
        return " ".join(parts)


class _Handler(logging.Handler):
    """Ours (so that setting up again replaces it and leaves other handlers alone): batches
    lines below WARNING, flushed by size, by a background thread, or at exit."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._pending: list[str] = []
        self._stop_flushing = threading.Event()
        flusher = threading.Thread(target=self._flush_periodically, name="log-flush", daemon=True)
        flusher.start()
        atexit.register(self.close)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a broken record must not break the caller (as StreamHandler)
            self.handleError(record)
            return
        # uvicorn's own lines (start, shutdown) go out at once with what came before: a server
        # stopped by a signal raises it again once shut down, and dies without running atexit.
        self.queue(line, record.levelno >= logging.WARNING or record.name.startswith("uvicorn"))

    def queue(self, line: str, urgent: bool = False) -> None:
        """Add a formatted line to the batch; write the batch now if `urgent` or full."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._pending.append(line + "\n")
            if urgent or len(self._pending) >= BATCH_LINES:
                self._write()

    def _write(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # stdout gone: nothing useful left to do
                pass

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _flush_periodically(self) -> None:
        while not self._stop_flushing.wait(FLUSH_SECONDS):
            self.flush()

    def close(self) -> None:
        self._stop_flushing.set()
        self.flush()
        super().close()


def event(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """`logger.info(message, extra={"fields": fields})`, for the lines written per request.

    When llmp's handler is the only one the record would reach (as deployed: no filters, no
    other handler on the way), the line is formatted and queued without a LogRecord and
    logging's dispatch, which cost more than half of a line. The line is the same.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _only_handler(logger)
    if handler is None:
        logger.info(message, extra={"fields": fields})
    else:
        formatter = handler.formatter
        assert isinstance(formatter, _Formatter)
        handler.queue(formatter.line(time.time(), "INFO", message, fields))


def _only_handler(logger: logging.Logger) -> _Handler | None:
    """Our handler, if it is the only thing an INFO record of `logger` would meet."""
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or type(handler) is not _Handler or handler.filters:
                return None
            if handler.level > logging.INFO or not isinstance(handler.formatter, _Formatter):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


def setup_logging(program: str, level: str = "INFO") -> None:
    # The optimisations of the logging HOWTO: no caller, thread or process looked up for each
    # record (our lines show none of them): 8.7 µs a line down to 6.8.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _Handler(sys.stdout)
    handler.setFormatter(_Formatter(program))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        old.close()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _Handler)] + [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "watchdog", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
