"""The limits board damaged under a running proxy: truncated by something else while workers
count on it. They keep answering, say so in their log, and make the board again."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from shared.apikeys import ApiKey, Limits, write_keys
from tests.conftest import eventually, free_port
from tests.upstream import FakeUpstream


def test_a_board_truncated_under_load_does_not_kill_the_workers(tmp_path: Path) -> None:
    upstream = FakeUpstream("a", ["model-a"]).start()
    key = ApiKey.new("counted")
    key = ApiKey.from_json({**key.to_json(), "limits": Limits(requestsPerMinute=10**6).to_json()})
    data, state = tmp_path / "data", tmp_path / "var"
    write_keys(data / "apikeys.json", [key])
    port = free_port()
    (tmp_path / "env").write_text("")
    env = {
        **os.environ,
        "ENV_FILE": str(tmp_path / "env"),
        "DATA_DIR": str(data),
        "STATE_DIR": str(state),
        "PROXY_PORT": str(port),
        "PROXY_WORKERS": "2",
        "TARGET_URLS": upstream.url,
    }
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "services.proxy"], env=env, stdout=out, stderr=out
        )
    statuses: list[int | str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        json={"model": "model-a", "messages": []},
                        headers={"Authorization": f"Bearer {key.key}"},
                    )
                    statuses.append(r.status_code)
                except httpx.TransportError as exc:
                    statuses.append(type(exc).__name__)

    try:

        def up() -> bool:
            assert proxy.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
            except httpx.TransportError:
                return False

        eventually(up, timeout=20)
        board = state / "limits.board"
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        for size in (0, 4096, 0, 100, 0):
            counted = len(statuses)
            eventually(lambda: len(statuses) > counted + 20, timeout=10)  # noqa: B023
            os.truncate(board, size)
        counted = len(statuses)
        eventually(lambda: len(statuses) > counted + 50, timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        alive = proxy.poll() is None
        proxy.terminate()
        proxy.wait(15)
        upstream.stop()
    assert alive, log.read_text()
    assert set(statuses) == {200}, {s for s in statuses if s != 200}
    assert "limits board damaged" in log.read_text()
