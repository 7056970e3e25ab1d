"""Day-2 operations of the whole stack under supervisord: programs killed at random come back,
a stop lets open streams finish, and every line on stdout names its program."""

from __future__ import annotations

import configparser
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmp.run import SUPERVISORD_CONF
from shared.apikeys import ApiKey, read_keys
from tests.conftest import eventually
from tests.stack.conftest import ADMIN, Stack

RECOVERY_SECONDS = 10.0
PROGRAMS = ("nginx", "proxy", "api", "certd")


def test_every_program_restarts_and_logs_to_stdout():
    config = configparser.RawConfigParser()
    config.read(SUPERVISORD_CONF)
    sections = {name.split(":", 1)[1]: config[name] for name in config.sections() if ":" in name}
    for name in (*PROGRAMS, "nginx-log"):
        section = sections[name]
        assert section["autorestart"] == "true", name
        assert "-m llmp.launch" in section["command"] or name == "nginx-log", name
        # Our programs write their own name (shared/logs.py); nginx's output goes to the
        # nginx-log listener as events, which prints it with the name.
        if name == "nginx":
            assert section["stdout_events_enabled"] == "true"
            assert section["stdout_logfile"] == "NONE"
        elif name == "nginx-log":
            assert section["stderr_logfile"] == "/dev/stdout"
        else:
            assert section["stdout_logfile"] == "/dev/stdout"
            assert section["redirect_stderr"] == "true"


class Traffic:
    """Requests through nginx in a thread: chat completions with `key`, and new keys through
    the admin API; remembers what succeeded."""

    def __init__(self, stack: Stack, key: ApiKey) -> None:
        self.stack, self.key = stack, key
        self.stop = threading.Event()
        self.completions = 0
        self.created: list[str] = []  # usernames whose key creation was answered 200
        self.threads = [
            threading.Thread(target=self._chat, name="chat"),
            threading.Thread(target=self._keys, name="keys"),
        ]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def _chat(self) -> None:
        headers = {"Authorization": f"Bearer {self.key.key}"}
        with httpx.Client(base_url=self.stack.url, headers=headers, timeout=5) as client:
            while not self.stop.is_set():
                try:
                    r = client.post("/v1/chat/completions", json={"model": "model-a"})
                    self.completions += r.status_code == 200
                except httpx.HTTPError:
                    pass
                self.stop.wait(0.01)

    def _keys(self) -> None:
        with httpx.Client(base_url=self.stack.url, timeout=5) as client:
            login = {"username": ADMIN[0], "password": ADMIN[1]}
            assert client.post("/auth/login", json=login).status_code == 200
            number = 0
            while not self.stop.is_set():
                number += 1
                try:
                    r = client.post("/api/keys", json={"username": f"user{number}"})
                    if r.status_code == 200:
                        self.created.append(f"user{number}")
                except httpx.HTTPError:
                    pass
                self.stop.wait(0.05)


def _serving(stack: Stack, key: ApiKey) -> bool:
    try:
        r = httpx.post(
            stack.url + "/v1/chat/completions",
            json={"model": "model-a"},
            headers={"Authorization": f"Bearer {key.key}"},
            timeout=2,
        )
        return r.status_code == 200 and httpx.get(stack.url + "/healthz").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory, fleet) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("supervised"), [fleet["a"]]).start()
    yield running
    assert running.stop() == 0, running.output()


def test_killed_programs_come_back_without_losing_anything(own_stack):
    stack = own_stack
    with stack.supervisor() as supervisor:
        _kill_each_program(stack, supervisor)


def _kill_each_program(stack: Stack, supervisor: Any) -> None:
    key = ApiKey.new("tester")
    stack.keys(key)
    eventually(lambda: _serving(stack, key))

    def proxy_worker() -> int:
        return int(stack.workers()[0]["pid"])

    targets: list[tuple[str, Callable[[], int]]] = [
        (name, lambda name=name: supervisor.getProcessInfo(name)["pid"])  # type: ignore[misc]
        for name in PROGRAMS
    ]
    targets.insert(2, ("proxy worker", proxy_worker))
    targets.append(("nginx-log", lambda: supervisor.getProcessInfo("nginx-log")["pid"]))
    recovery: dict[str, float] = {}
    killed_groups: list[int] = []
    with Traffic(stack, key) as traffic:
        for name, find in targets:
            served, created = traffic.completions, len(traffic.created)
            eventually(
                lambda served=served, created=created: (  # type: ignore[misc]  # a lambda with default arguments
                    traffic.completions > served and len(traffic.created) > created
                ),
                timeout=10,
            )
            pid = find()
            program = name.split()[0]
            if name in PROGRAMS:
                killed_groups.append(pid)  # supervisord made each program a group leader
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            if name == "proxy worker":  # uvicorn replaces it: a new worker beats
                eventually(
                    lambda pid=pid: len({w["pid"] for w in stack.workers()} - {pid}) == 2,  # type: ignore[misc]  # a lambda with default arguments
                    timeout=RECOVERY_SECONDS,
                )
            else:
                eventually(
                    lambda program=program, pid=pid: (  # type: ignore[misc]  # a lambda with default arguments
                        (info := supervisor.getProcessInfo(program))["statename"] == "RUNNING"
                        and info["pid"] != pid
                    ),
                    timeout=RECOVERY_SECONDS,
                )
            eventually(lambda: _serving(stack, key), timeout=RECOVERY_SECONDS)
            recovery[name] = round(time.monotonic() - killed, 2)
        created_names = list(traffic.created)
    print(f"serving again after SIGKILL, seconds: {recovery}")
    assert len(created_names) > 5
    # Every key the api said it created is on disk, in a valid file, and works.
    names = {k.username for k in read_keys(stack.data / "apikeys.json")}
    assert set(created_names) <= names and "tester" in names
    assert _serving(stack, key)
    db = sqlite3.connect(stack.data / "analytics.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    # Nothing the killed programs left behind (workers holding ports) is still running.
    eventually(lambda: not _alive_in_groups(killed_groups), timeout=RECOVERY_SECONDS)


def _alive_in_groups(groups: list[int]) -> list[int]:
    found = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) in groups:
            found.append(pid)
    return found


def test_stdout_lines_name_their_program(own_stack):
    with own_stack.supervisor() as supervisor:
        assert supervisor.getState()["statename"] == "RUNNING"  # its log so far
    lines = own_stack.output().splitlines()
    ours = re.compile(r"^\S+Z [A-Z]+ (\S+) ")
    named = {m[1] for line in lines if (m := ours.match(line))}
    assert {"nginx", "proxy", "api", "certd"} <= named
    raw_nginx = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[")
    assert not [line for line in lines if raw_nginx.match(line)]


def test_health_check_of_the_container(own_stack):
    env = {**own_stack.env, "ENV_FILE": str(own_stack.home / "env")}
    run = [sys.executable, "-m", "llmp.health"]
    assert subprocess.run(run, env=env, timeout=30).returncode == 0
    down = {**env, "API_PORT": str(own_stack.port + 1 if own_stack.port < 65535 else 1)}
    failed = subprocess.run(run, env=down, capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1 and "unhealthy" in failed.stderr


def test_sigterm_lets_an_open_stream_finish_and_records_everything(tmp_path, fleet):
    stack = Stack(tmp_path, [fleet["a"], fleet["slow"]], workers=2).start()
    key = ApiKey.new("tester")
    stack.keys(key)
    eventually(lambda: _serving(stack, key))
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key.key, max_retries=0, timeout=30)
    before = 5
    for _ in range(before):
        client.chat.completions.create(model="model-a", messages=[])
    stream = client.chat.completions.create(model="slow-model", messages=[], stream=True)
    chunks = [next(iter(stream))]
    assert stack.process is not None
    stack.process.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    chunks += list(stream)  # the proxy drains: the stream goes on to its end
    assert len(chunks) == 10
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("slow0 slow1")
    assert stack.stop(timeout=40) == 0
    stopped = time.monotonic() - stopping
    print(f"stream finished, then supervisord exited {stopped:.1f}s after SIGTERM")
    db = sqlite3.connect(stack.data / "analytics.db")
    try:
        rows = db.execute(
            "SELECT model, end_ms IS NOT NULL FROM requests WHERE key_id = ? AND path = ?",
            (key.id, "/v1/chat/completions"),
        ).fetchall()
    finally:
        db.close()
    assert rows.count(("model-a", 1)) >= before  # _serving's requests come on top
    assert ("slow-model", 1) in rows
    assert json.loads((stack.data / "apikeys.json").read_text())["keys"][0]["id"] == key.id
