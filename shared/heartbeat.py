"""`data/run/<name>.json`: each program's heartbeat, written by that program alone.

A program (or each worker of one) rewrites its file every few seconds with its pid, when it
started, when it last beat, and whatever state it wants to report (applied generations, last
error). A reader judges a program alive by how fresh `updated` is. `beat` may run in a thread
(the proxy keeps its fsync off the event loop): once `remove` has run, no beat writes again.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from shared.files import write_json_atomic

INTERVAL = 2.0
STALE_AFTER = 3 * INTERVAL


class Heartbeat:
    def __init__(self, run_dir: Path, program: str, name: str | None = None) -> None:
        self.path = run_dir / f"{name or program}.json"
        self.program = program
        self.started = time.time()
        self.state: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._removed = False

    def beat(self) -> None:
        with self._lock:
            if not self._removed:
                self._write()

    def _write(self) -> None:
        write_json_atomic(
            self.path,
            {
                "program": self.program,
                "pid": os.getpid(),
                "started": self.started,
                "updated": time.time(),
                **self.state,
            },
            mode=0o644,
        )

    def remove(self) -> None:
        with self._lock:
            self._removed = True
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def read_heartbeats(run_dir: Path) -> list[dict[str, Any]]:
    """Every heartbeat in `run_dir`, each with `alive` set from its age. Unreadable ones are
    reported as such rather than skipped."""
    beats = []
    now = time.time()
    for path in sorted(run_dir.glob("*.json")):
        try:
            beat = json.loads(path.read_bytes())
            beat["alive"] = now - float(beat["updated"]) < STALE_AFTER
        except (OSError, ValueError, KeyError, TypeError) as exc:
            beat = {"program": path.stem, "alive": False, "last_error": f"unreadable: {exc}"}
        beat["name"] = path.stem
        beats.append(beat)
    return beats
