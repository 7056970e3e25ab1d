"""llmp/launch.py: the processes a killed program left behind are found and retired."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from llmp import launch
from tests.conftest import eventually

# A program whose child shares its listening socket, like nginx's or uvicorn's workers. The
# child's graceful stop closes the socket at once and lingers (finishing requests).
PROGRAM = """
import os, signal, socket, sys, time
graceful = sys.argv[1] == "graceful"
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
child = os.fork()
if child == 0:
    def stop(*_):
        s.close()
        time.sleep(60)  # the test kills it once it has seen it linger
        os._exit(0)
    signal.signal(signal.SIGTERM, stop if graceful else signal.SIG_IGN)
    while True:
        time.sleep(1)
print(s.getsockname()[1], child, flush=True)
time.sleep(60)
"""


def _killed_leader(mode: str) -> tuple[int, int, int, int]:
    """Start the program in its own group, SIGKILL its leader: (group, start, port, child)."""
    leader = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, mode], stdout=subprocess.PIPE, start_new_session=True
    )
    assert leader.stdout is not None
    port, child = map(int, leader.stdout.readline().split())
    state = launch._stat(leader.pid)
    assert state is not None and state[0] == leader.pid
    leader.kill()
    leader.wait()
    leader.stdout.close()
    return leader.pid, state[1], port, child


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_leftovers_are_found_and_retired_gracefully():
    group, started, port, child = _killed_leader("graceful")
    assert launch.leftovers(group, started) == [child]
    assert not _bindable(port)  # what made the restarted program fail
    launch.retire([child], signal.SIGTERM)
    assert _bindable(port)
    assert launch._stat(child) is not None  # returned once the socket closed, not at the exit
    os.kill(child, signal.SIGKILL)


def test_a_leftover_that_keeps_listening_is_killed():
    group, started, port, _ = _killed_leader("stubborn")
    launch.retire(launch.leftovers(group, started), signal.SIGTERM, timeout=0.3)
    eventually(lambda: _bindable(port), interval=0.01)


def test_a_reused_group_id_is_not_mistaken_for_the_old_group():
    me = launch._stat(os.getpid())
    assert me is not None
    assert launch.leftovers(os.getpid(), me[1] + 1) == []  # the id's process started later


def test_a_group_leader_records_its_group(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "llmp.launch", "demo", "TERM", "true"],
        env={**os.environ, "LLMP_SUPERVISOR_DIR": str(tmp_path)},
        start_new_session=True,
        timeout=30,
    )
    assert done.returncode == 0
    group, started, namespace = (tmp_path / "demo.group").read_text().split()
    assert int(group) > 0 and int(started) > 0 and namespace.startswith("pid:[")
    assert launch._record(tmp_path / "demo.group") == (int(group), int(started))
    # Recorded in another PID namespace (a container's earlier life): ignored.
    (tmp_path / "demo.group").write_text(f"{group} {started} pid:[1]\n")
    assert launch._record(tmp_path / "demo.group") is None
    # Not a group leader (run by hand): nothing recorded that could point at someone else.
    (tmp_path / "demo.group").unlink()
    subprocess.run(
        [sys.executable, "-m", "llmp.launch", "demo", "TERM", "true"],
        env={**os.environ, "LLMP_SUPERVISOR_DIR": str(tmp_path)},
        timeout=30,
        check=True,
    )
    assert not (tmp_path / "demo.group").exists()
