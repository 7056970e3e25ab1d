"""The image as users build and run it: from a fresh folder, and from the original's files."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import threading
import time
from pathlib import Path

import httpx
import openai

from shared.apikeys import ApiKey
from tests import original
from tests.container.conftest import (
    IMAGE,
    in_container,
    original_layout,
    podman,
    run_as_compose,
)
from tests.upstream import FakeUpstream

LLMP_UID = 10001
LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) "
)
# Every process in the container with its uid, from /proc (the image has no ps), less the
# process that lists them.
PROCESSES = """
import os
me = os.getpid()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        uid = open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[1]
        cmd = open(f"/proc/{pid}/cmdline").read().replace("\\0", " ").strip()
    except OSError:
        continue
    if int(pid) != me:
        print(pid, uid, cmd)
"""


def _rows(data: Path, where: str = "1") -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{data / 'analytics.db'}?mode=ro", uri=True) as db:
        query = f"SELECT username, status, end_ms, stream FROM requests WHERE {where}"
        return db.execute(query).fetchall()


def test_a_directory_where_env_should_be_is_refused(tmp_path: Path):
    # `docker compose up` without .env: compose makes a directory in its place.
    original_layout(tmp_path)
    (tmp_path / ".env").unlink()
    (tmp_path / ".env").mkdir()
    args = run_as_compose(tmp_path, f"llmp-test-env-{time.monotonic_ns()}", detach=False)
    done = podman(*args, "--rm", IMAGE, check=False, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is a directory where the settings file should be" in done.stderr


def test_a_fresh_install_serves_streams_drains_on_stop_and_keeps_its_data(
    tmp_path: Path, start_llmp, upstream: FakeUpstream
):
    original_layout(tmp_path)  # the README's `touch .env cloudflare_credentials`, folders
    llmp = start_llmp(tmp_path, {"TARGET_URLS": in_container(upstream.url)})
    llmp.wait_healthy()
    # The empty .env got fresh secrets, the password shown once; private, and the user's.
    env = (tmp_path / ".env").read_text()
    password = re.search(r"(?m)^AUTH_PASSWORD=(.+)$", env)
    assert password and f"admin / {password[1]}" in llmp.logs()
    mode = (tmp_path / ".env").stat()
    assert (stat.S_IMODE(mode.st_mode), mode.st_uid) == (0o600, LLMP_UID)

    # Every process runs as llmp, supervisord (PID 1) and nginx included.
    listed = llmp.exec("python", "-c", PROCESSES).stdout
    processes = [line.split(" ", 2) for line in listed.splitlines()]
    assert {uid for _, uid, _ in processes} == {str(LLMP_UID)}, processes
    commands = " ".join(command for _, _, command in processes)
    assert "supervisord" in commands and "nginx: worker process" in commands
    assert " -m llmp.supervisord " in next(p for p in processes if p[0] == "1")[2]

    # A key made with `docker exec`, a stream through the official client.
    secret = llmp.exec("llmp", "keys", "create", "alice").stdout.strip()
    assert secret.startswith("sk-")
    client = openai.OpenAI(base_url=llmp.url + "/v1", api_key=secret, max_retries=0)
    pieces = client.chat.completions.create(
        model="llama3", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert text == "up0 up1 up2 up3 up4 "

    # The admin UI.
    with httpx.Client(base_url=llmp.url, timeout=10) as http:
        page = http.get("/admin/")
        assert page.status_code == 200 and '<div id="app">' in page.text
        asset = re.search(r'src="(/admin/assets/[^"]+\.js)"', page.text)
        assert asset and http.get(asset[1]).status_code == 200

    # Every line on stdout is `time LEVEL program message` (supervisord's own included), and a
    # fresh install has nothing to complain about.
    lines = podman("logs", llmp.name).stdout.splitlines()
    assert lines and [line for line in lines if not LINE.match(line)] == []
    assert {"supervisord", "llmp", "api", "proxy", "certd"} <= {  # nginx: nothing to say
        LINE.match(line)[2] for line in lines
    }
    assert [line for line in lines if LINE.match(line)[1] in ("ERROR", "CRITICAL")] == []

    # `docker compose stop` while a stream is open: the stream ends as it would have.
    upstream.pace, upstream.chunks = 0.5, 8
    got: list[str] = []
    first = threading.Event()

    def stream() -> None:
        for chunk in client.chat.completions.create(
            model="llama3", messages=[{"role": "user", "content": "slow"}], stream=True
        ):
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
                first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(60)
    stopped = podman("stop", llmp.name, timeout=120)
    reader.join(60)
    assert "".join(got) == "".join(f"up{i} " for i in range(8))
    assert stopped.returncode == 0 and llmp.state()["ExitCode"] == 0, llmp.logs()

    # Started again: the key, and the stream's analytics row, are still there.
    podman("start", llmp.name)
    llmp.wait_healthy()
    rows = _rows(tmp_path / "data", "stream = 1")
    assert [(user, status, end is not None) for user, status, end, _ in rows] == [
        ("alice", 200, True),
        ("alice", 200, True),  # the drained stream, written before the stop ended
    ]
    chat = client.chat.completions.create(model="llama3", messages=[])
    assert chat.choices[0].message.content == "hello from up"


def test_an_upgrade_from_the_originals_files(tmp_path: Path, start_llmp, upstream: FakeUpstream):
    data = tmp_path / "data"
    original_layout(tmp_path)
    alice = ApiKey.new("alice")
    original.write_keys(data / "apikeys.json", [alice])
    now = int(time.time() * 1000)
    original.write_csv(data, alice, [(now - 7200_000, now - 7200_000 + 900)])
    (tmp_path / ".env").write_text(original.env_file(in_container(upstream.url), 8080))
    (tmp_path / ".env").chmod(0o644)
    (tmp_path / "nginx" / "server.conf").write_text(original.server_conf("llm.example.com", []))

    llmp = start_llmp(tmp_path)
    llmp.wait_healthy()

    client = openai.OpenAI(base_url=llmp.url + "/v1", api_key=alice.key, max_retries=0)
    assert client.chat.completions.create(model="llama3", messages=[]).choices
    # The secrets are private now, and the user's; the history imported at the first start.
    for secret in (tmp_path / ".env", data / "apikeys.json"):
        st = secret.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, LLMP_UID), secret
    deadline = time.monotonic() + 30
    while len(_rows(data, "username = 'alice'")) < 2:
        assert time.monotonic() < deadline, _rows(data)
        time.sleep(0.5)
    assert (tmp_path / "nginx" / "server.conf.llm-proxy").exists()
    status = json.loads(llmp.exec("llmp", "status").stdout)
    assert status["ok"], status
