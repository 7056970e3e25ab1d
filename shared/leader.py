"""Leadership of a job that must run once among every process that could run it (rolling up
usage and dropping old partitions, obtaining certificates).

A process asks `lead()` before each run of the job: True while it is the job's leader, False
while another process is. It is cheap (one round trip in PostgreSQL), never waits for the other
leader, and is asked again before every run: a leader whose hold is gone (its database
connection died) learns it there, and another process takes over at its own next `lead()`.
`release()` gives the job up (at a graceful stop) so that another may take it at once.

On one box there is one of each program and no one to share with: `AlwaysLeader`. With
DATABASE_URL, `shared.pg.leader.PgLeader` (a session advisory lock). `shared.storage.leader`
picks one. The jobs are named in `JOBS`, an allowlist, so that two jobs never share a lock by a
typing error.
"""

from __future__ import annotations

from typing import Protocol

# Each job and its number, the last of its lock key (`shared.pg.leader.lock_key`): "usage", the
# usage log's upkeep (rollups, retention); "certd", obtaining and renewing certificates. A
# number is never changed nor given to another job: replicas of two versions run side by side
# during an upgrade, and must take the same lock for the same job (1 and 2 were named in an
# earlier version and never taken).
JOBS = {"usage": 0, "certd": 3}


class Leader(Protocol):
    @property
    def job(self) -> str: ...

    def lead(self) -> bool:
        """Whether this process leads the job now (taking it if no one does)."""

    def release(self) -> None:
        """Give the job up, if held."""


class AlwaysLeader:
    """One box: the one process that runs a job always leads it."""

    def __init__(self, job: str) -> None:
        if job not in JOBS:
            raise ValueError(f"unknown job {job!r}")
        self._job = job

    @property
    def job(self) -> str:
        return self._job

    def lead(self) -> bool:
        return True

    def release(self) -> None:
        pass
