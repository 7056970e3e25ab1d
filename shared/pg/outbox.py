"""The usage rows a proxy worker could not write to the database yet, kept on its own disk.

Each worker appends to its own file, `usage-<pid>.jsonl` (one JSON object per row, one write and
one fsync per batch), and holds an exclusive `flock` on it for as long as it lives. Draining
takes the worker's own file, then any file whose lock can be taken: its worker is gone (stopped,
crashed, killed), and its rows are not lost with it. A row is removed from the outbox only after
the database has committed it; a row written twice (the commit happened but its answer was lost)
is harmless, the database keeps one per request id (`shared.pg.schema`). A line cut short by a
crash in the middle of an append is skipped and counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import IO

import orjson

from shared.analytics import COLUMNS, RequestRow

log = logging.getLogger("usage.outbox")

_KNOWN = {f.name for f in fields(RequestRow)}


class Outbox:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"usage-{os.getpid()}.jsonl"
        self._file: IO[bytes] | None = None
        self.rows = 0  # rows in our own file
        self.damaged = 0  # lines skipped because a crash cut them short

    def append(self, rows: list[RequestRow]) -> None:
        """Keep `rows` on disk (fsynced). Raises OSError (a full or read-only disk)."""
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "ab")  # noqa: SIM115 (open for the worker's lifetime)
            fcntl.flock(handle, fcntl.LOCK_EX)
            os.chmod(self.path, 0o600)
            self._file = handle
        data = b"".join(
            orjson.dumps(dict(zip(COLUMNS, _values(row), strict=True))) + b"\n" for row in rows
        )
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows += len(rows)

    def batches(self, size: int) -> Iterator[tuple[list[RequestRow], Path]]:
        """The rows waiting, `size` at most at a time, with the file they come from. The caller
        writes each batch before asking for the next; a file is forgotten once the batch after
        its last is asked for, so a failed write leaves it (and what it holds) for later."""
        paths = [self.path] if self.rows else []
        paths += sorted(p for p in self.folder.glob("usage-*.jsonl") if p != self.path)
        for path in paths:
            with contextlib.ExitStack() as stack:
                if path != self.path:
                    try:
                        other = stack.enter_context(open(path, "rb"))
                        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except (BlockingIOError, FileNotFoundError):
                        continue  # its worker is alive, or another drained it
                    if not path.exists():
                        continue  # drained and removed while we waited
                batch: list[RequestRow] = []
                for line in _lines(path):
                    row = self._row(line)
                    if row is not None:
                        batch.append(row)
                    if len(batch) >= size:
                        yield batch, path
                        batch = []
                if batch:
                    yield batch, path
                self.done(path)

    def others_waiting(self) -> bool:
        """Whether files of other workers are here (alive or not)."""
        return any(p != self.path for p in self.folder.glob("usage-*.jsonl"))

    def done(self, path: Path) -> None:
        """Every row of `path` is in the database: forget them."""
        if path == self.path:
            if self._file is not None:
                self._file.truncate(0)
            self.rows = 0
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _row(self, line: bytes) -> RequestRow | None:
        try:
            raw = orjson.loads(line)
            return RequestRow(**{k: v for k, v in raw.items() if k in _KNOWN})
        except (orjson.JSONDecodeError, TypeError, AttributeError):
            self.damaged += 1
            log.error("usage outbox: a damaged line skipped", extra={"fields": {"count": 1}})
            return None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self.rows == 0:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                yield line


def _values(row: RequestRow) -> tuple[object, ...]:
    return tuple(getattr(row, name) for name in COLUMNS)
