"""Child processes of the benchmark and what /proc says about them.

Every child runs in its own session (so its own process group), with its output in a log file,
and is stopped by a signal to its leader, then SIGKILL to its whole group after a bound: nothing
the benchmark starts outlives it, and nothing else is ever signalled. Ports are picked by the
kernel on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ChildFailed(Exception):
    """A child exited or never became ready; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Child:
    """One child process in its own process group, logging to `log`.

    `stop()` sends `stop_signal` to it, waits up to `grace` seconds, then kills its group.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        grace: float = 10.0,
    ) -> None:
        self.name, self.log = name, log
        self.stop_signal, self.grace = stop_signal, grace
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failed(self, why: str) -> ChildFailed:
        return ChildFailed(f"{self.name}: {why}; last lines of {self.log}:\n{self.tail()}")

    def wait_http(
        self,
        url: str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
    ) -> None:
        """Poll `url` (POST `body` if given) until it answers 200. If the child dies, time runs
        out or the wait is interrupted, stop the child and raise."""
        try:
            self._wait_http(url, timeout, headers or {}, body)
        except BaseException:
            self.stop()
            raise

    def _wait_http(
        self, url: str, timeout: float, headers: Mapping[str, str], body: str | None
    ) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.failed(f"exited with {self.process.returncode} before it was ready")
            request = urllib.request.Request(
                url, data=None if body is None else body.encode(), headers=dict(headers)
            )
            if body is not None:
                request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise self.failed(f"{url} not ready after {timeout:.0f} s ({last})")

    def stop(self) -> None:
        """Signal the leader and wait for it; then SIGKILL whatever is left of its group and of
        its descendants (supervisord gives each program a process group of its own)."""
        descendants = [p for p in tree(self.pid) if p.pid != self.pid]
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(self.grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for proc in descendants:
            now = read_proc(proc.pid)
            if now is not None and now.started == proc.started:  # not a reused pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


# /proc ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    cpu_ticks: int  # utime + stime
    started: int  # clock ticks after boot: with the pid, identifies the process


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces or parentheses itself.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return Proc(pid, int(fields[1]), comm, int(fields[11]) + int(fields[12]), int(fields[19]))


def all_procs() -> list[Proc]:
    procs = (read_proc(int(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return [p for p in procs if p is not None]


def tree(root: int) -> list[Proc]:
    """`root` and all its descendants that are alive now."""
    procs = all_procs()
    children: dict[int, list[Proc]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
    found = [p for p in procs if p.pid == root]
    for proc in found:  # grows while iterating: a breadth-first walk
        found.extend(children.get(proc.pid, []))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """CPU time (user + system) used so far by each of `pids` that is still alive."""
    procs = (read_proc(pid) for pid in pids)
    return {p.pid: p.cpu_ticks / CLOCK_TICKS for p in procs if p is not None}


def cpu_used(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds spent between two `cpu_seconds` samples (a process born in between counts
    from zero; one that died in between is lost)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
