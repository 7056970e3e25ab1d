"""What a process holds, read from /proc: resident memory, its peak, open file descriptors."""

from __future__ import annotations

import os
from pathlib import Path


def _status(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def rss(pid: int | str = "self") -> int:
    """Resident memory in bytes."""
    return _status(pid, "VmRSS")


def peak_rss(pid: int | str = "self") -> int:
    """The most resident memory since start, or since `reset_peak`."""
    return _status(pid, "VmHWM")


def reset_peak(pid: int | str = "self") -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    """The direct children of `pid`."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(p) for p in text)
    return out


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def label(pid: int) -> str:
    """A short name for a process: its program and what it runs."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return f"{pid}"
    if "-m" in words:  # python -m module ...
        module = words[words.index("-m") + 1]
        rest = words[words.index("-m") + 2 : words.index("-m") + 3]
        return " ".join([module, *rest])
    if words[0].startswith("nginx"):
        return words[0]  # "nginx: master process ...", "nginx: worker process"
    return " ".join(words[:2])


def snapshot(root: int) -> dict[int, tuple[str, int, int]]:
    """(label, resident bytes, open fds) of `root` and every process below it."""
    out: dict[int, tuple[str, int, int]] = {}
    for pid in [root, *descendants(root)]:
        try:
            name = label(pid)
            if name.endswith(" -B"):  # a multiprocessing child: a uvicorn worker, or its tracker
                parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                name = f"{out[parent][0]} child {pid}" if parent in out else name
            out[pid] = (name, rss(pid), open_fds(pid))
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone in the meantime
    return out
