"""Requests in flight by the key they came with, so that revoking a key ends them too.

A key deleted or disabled (or whose secret was replaced) stops working for new requests as soon
as the worker reloads the key file; `OpenRequests.revoke` then cancels the requests still in
flight with it, streams included, within the same second. The request's handler asks
`revoked(task)` when its cancellation arrives, and answers accordingly: a 401 `api_key_revoked`
if nothing was sent yet, else a final SSE error event. Other changes to a key (its expiry
passing, its models or limits) apply to new requests only: a request is judged when it starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

Task = asyncio.Task[Any]


class OpenRequests:
    def __init__(self) -> None:
        self._by_key: dict[str, set[Task]] = {}
        self._revoked: set[Task] = set()

    def enter(self, key: str) -> Task | None:
        """The current request came with `key` (the secret, never logged)."""
        task = asyncio.current_task()
        if task is not None:
            self._by_key.setdefault(key, set()).add(task)
        return task

    def leave(self, key: str, task: Task) -> None:
        tasks = self._by_key.get(key)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._by_key[key]
        self._revoked.discard(task)

    def revoke(self, live: Iterable[str]) -> int:
        """Cancel the requests whose key is not among the `live` ones; returns how many."""
        still = set(live)
        cancelled = 0
        for key in [k for k in self._by_key if k not in still]:
            for task in self._by_key.pop(key):
                self._revoked.add(task)
                task.cancel()
                cancelled += 1
        return cancelled

    def revoked(self, task: Task) -> bool:
        """Whether `task` was cancelled because its key was revoked."""
        return task in self._revoked
