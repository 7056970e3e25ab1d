"""llmp/launch.py: the processes a killed program left behind are found and retired."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from llmp import launch
from tests.conftest import eventually, free_port

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


NGINX_CONF = """
daemon off;
worker_processes 2;
pid {home}/nginx.pid;
error_log {home}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    server {{ listen 127.0.0.1:{port}; return 200; }}
}}
"""
NOBODY = 65534


def test_hung_workers_of_nginx_with_its_file_capability_are_retired():
    # As in the image: nginx allowed to bind 443 by a file capability, run unprivileged, which
    # hides its open files from the launcher (same user, fewer capabilities). Its master is
    # killed and its workers hang (stopped): the port is free only once they are gone.
    setcap = shutil.which("setcap")
    assert setcap, "setcap (Debian's libcap2-bin, which nginx's package brings) is missing"
    home = Path(tempfile.mkdtemp(prefix="llmp-launch-"))
    group: tuple[int, int] | None = None
    try:
        home.chmod(0o755)
        os.chown(home, NOBODY, NOBODY)
        nginx = home / "nginx"
        shutil.copy("/usr/sbin/nginx", nginx)
        subprocess.run([setcap, "cap_net_bind_service=+ep", str(nginx)], check=True)
        port = free_port()
        conf = home / "nginx.conf"
        conf.write_text(NGINX_CONF.format(home=home, port=port))
        master = subprocess.Popen(
            [str(nginx), "-c", str(conf), "-p", f"{home}/"],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            start_new_session=True,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while _bindable(port) or len(launch.leftovers(master.pid, _started(master.pid))) < 3:
            assert time.monotonic() < deadline and master.poll() is None
            time.sleep(0.05)
        started = _started(master.pid)
        group = (master.pid, started)
        master.kill()
        master.wait()
        workers = launch.leftovers(master.pid, started)
        assert len(workers) == 2
        for worker in workers:
            os.kill(worker, signal.SIGSTOP)
        assert _retired_by_nobody(workers) == 0
        deadline = time.monotonic() + 2
        while not _bindable(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _bindable(port)
    finally:
        for pid in launch.leftovers(*group) if group else []:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def _retired_by_nobody(pids: list[int]) -> int:
    """launch.retire(pids) in a child process that is nobody, without capabilities, as the
    launcher is under supervisord in the image; its exit status."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child
        child = os.fork()  # only calls retire, which starts none
    if child == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            launch.retire(pids, signal.SIGQUIT, 1.0)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def _started(pid: int) -> int:
    state = launch._stat(pid)
    assert state is not None
    return state[1]
