"""How supervisord starts each program: first retire what a killed predecessor left behind.

supervisord makes every program the leader of its own process group. When a program's main
process is killed (SIGKILL, the OOM killer), its children live on: nginx's workers and uvicorn's
workers keep the listening socket, so the program supervisord starts next cannot bind its port
and ends up FATAL, while the orphans serve with stale state that nothing watches.

    python -m llmp.launch NAME SIGNAL PROGRAM [ARGS...]

finds the processes left in NAME's previous group (recorded in `$LLMP_SUPERVISOR_DIR/NAME.group`
with its leader's start time and the PID namespace, so that a reused process id, or one from a
container's earlier life, is never mistaken for it), sends them SIGNAL (the program's graceful
stop: they close their listening sockets at once and finish the requests they hold), waits
until none of them listens any more (SIGKILL after RETIRE_SECONDS), records its own group and
execs PROGRAM: the pid supervisord knows stays the program's. It imports little (the standard
library and the log format), as it runs at every start.

Whether a process listens is read from its open files in /proc, which the kernel hides from
a process with fewer capabilities: nginx, holding its file capability to bind 443, is opaque to
the launcher although it runs as the same user. For such leftovers the launcher watches the
listening sockets of its own user that no process it can look into holds: those are theirs
(supervisord restarts a program only once its main process is gone, so no other instance of
it is running).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from shared.logs import setup_logging

log = logging.getLogger("launch")

RETIRE_SECONDS = 5.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time in clock ticks since boot) of `pid`, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[2]), int(fields[19])


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def leftovers(group: int, started: int) -> list[int]:
    """Processes still in the process group `group` whose leader started at `started`.

    A group id is not reused while any process is in that group, so if the leader is gone,
    whatever is left in the group is its. If a process with the leader's id exists but started
    at another time, the id was reused: the old group is empty.
    """
    leader = _stat(group)
    if leader is not None and leader[1] != started:
        return []
    me = os.getpid()
    found = []
    for pid in _pids():
        state = _stat(pid)
        if pid != me and state is not None and state[0] == group:
            found.append(pid)
    return found


def _listening_inodes(uid: int | None = None) -> set[str]:
    """The inodes of listening TCP sockets (those of user `uid` only, if given)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                columns = line.split()
                if columns[3] == "0A" and (uid is None or columns[7] == str(uid)):  # LISTEN
                    inodes.add(columns[9])
    return inodes


def _sockets(pid: int) -> set[str] | None:
    """The inodes of the sockets `pid` holds, or None if its open files are hidden from us."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()  # gone
    inodes = set()
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except PermissionError:
            return None
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _listens(pid: int, listening: set[str]) -> bool:
    return bool((_sockets(pid) or set()) & listening)


def _hidden_listeners() -> set[str]:
    """Listening sockets of this user that no process whose open files we can read holds."""
    hidden = _listening_inodes(os.getuid())
    for pid in _pids():
        if hidden:
            hidden -= _sockets(pid) or set()
    return hidden


def retire(pids: list[int], signum: int, timeout: float = RETIRE_SECONDS) -> None:
    """Send `signum` to `pids`; return once none listens any more (SIGKILL the rest after
    `timeout`). Those still finishing requests are left to finish them."""
    opaque = [pid for pid in pids if _sockets(pid) is None]
    hidden = _hidden_listeners() if opaque else set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    deadline = time.monotonic() + timeout
    while True:
        listening = _listening_inodes()
        busy = [pid for pid in pids if _listens(pid, listening)]
        if hidden & listening:  # some opaque leftover still listens: all of them wait
            busy += [pid for pid in opaque if _stat(pid) is not None]
        if not busy:
            return
        if time.monotonic() > deadline:
            for pid in busy:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


def _namespace() -> str:
    """This process's PID namespace: a container restarted is a new one, where the ids of the
    last run's processes mean nothing."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _record(path: Path) -> tuple[int, int] | None:
    """The group recorded at the last start, if it was in this PID namespace."""
    try:
        group, started, namespace = path.read_text().split()
        return (int(group), int(started)) if namespace == _namespace() else None
    except (OSError, ValueError):
        return None


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        print("usage: python -m llmp.launch NAME SIGNAL PROGRAM [ARGS...]", file=sys.stderr)
        raise SystemExit(2)
    name, signame, program = argv[0], argv[1], argv[2:]
    signum = signal.Signals["SIG" + signame.upper().removeprefix("SIG")]
    record = Path(os.environ.get("LLMP_SUPERVISOR_DIR", ".")) / f"{name}.group"
    previous = _record(record)
    if previous is not None:
        left = leftovers(*previous)
        if left:
            setup_logging(name)
            log.warning(
                "retiring processes a killed predecessor left behind",
                extra={"fields": {"pids": ",".join(map(str, left))}},
            )
            retire(left, signum)
    # Under supervisord this process leads its own group; anywhere else the group is not the
    # program's alone, and retiring it next time would hit others.
    me = _stat(os.getpid())
    if me is not None and os.getpgrp() == os.getpid():
        with contextlib.suppress(OSError):  # not recorded: nothing retired next time, that is all
            record.write_text(f"{os.getpid()} {me[1]} {_namespace()}\n")
    os.execvp(program[0], program)


if __name__ == "__main__":
    main(sys.argv[1:])
