"""The whole stack under supervisord (`python -m llmp run`), with fake upstreams on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from supervisor.xmlrpc import SupervisorTransport

from llmp.run import socket_path
from shared.apikeys import ApiKey, write_keys
from shared.heartbeat import read_heartbeats
from tests.conftest import free_port
from tests.upstream import FakeUpstream

READY_TIMEOUT = 120.0  # a bound for a loaded machine: start() returns once /healthz says 200
ADMIN = ("admin", "a-long-test-password")
SUPERVISOR_PASSWORD = "a-test-password-for-supervisord"  # supervisorctl's, given to `llmp run`


class Stack:
    def __init__(
        self,
        home: Path,
        upstreams: list[FakeUpstream],
        workers: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.data = home / "data"
        self.port = free_port()
        self.proxy_port = free_port()
        (home / "env").write_text("")
        self.env = {
            **os.environ,
            "ENV_FILE": str(home / "env"),
            "PORT": str(self.port),
            "API_PORT": str(free_port()),
            "PROXY_PORT": str(self.proxy_port),
            "BIND_ADDRESS": "127.0.0.1",
            "DATA_DIR": str(self.data),
            "STATE_DIR": str(home / "var"),
            "NGINX_CONF_DIR": str(home / "nginx"),
            "LETSENCRYPT_DIR": str(home / "certs"),
            "PROXY_WORKERS": str(workers),
            "MODELS_TIMEOUT_SECONDS": "2",
            "AUTH_USERNAME": ADMIN[0],
            "AUTH_PASSWORD": ADMIN[1],
            "JWT_SECRET": "test-secret-" + "x" * 40,
            "LOGIN_MAX_FAILURES": "3",
            # Long enough that a test's failures stay counted however slow the machine is;
            # tests forget them with `forget_failed_logins` (the window's end is tested with
            # an injected clock in tests/api/test_throttle.py).
            "LOGIN_WINDOW_SECONDS": "600",
            "LLMP_SUPERVISOR_PASSWORD": SUPERVISOR_PASSWORD,
            "TARGET_URLS": ",".join(u.url + (f"|{u.key}" if u.key else "") for u in upstreams),
            **(env or {}),  # extra settings for one test's stack
        }
        self.log = home / "stack.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Stack:
        # Appending, as supervisord's own log files of the programs do: a second descriptor of
        # the file without O_APPEND would write over their lines at its own offset.
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "llmp", "run"],
                cwd=self.home,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        output = self.output()
        self.stop()  # nothing left running behind a failed start
        raise AssertionError(f"stack not healthy after {READY_TIMEOUT}s:\n{output}")

    def stop(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(f"stack did not stop in {timeout}s:\n{self.output()}") from exc
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def keys(self, *keys: ApiKey) -> None:
        write_keys(self.data / "apikeys.json", list(keys))

    def accept(self, key: ApiKey, timeout: float = 30.0) -> None:
        """Wait until every live proxy worker has loaded `key`. A worker names itself in the
        request ids it gives (their first ten characters). Asked through nginx, whose kept-alive
        connections to the proxy may all lead to one worker, the others went unasked: each ask
        goes to the proxy's port on a new connection, which any worker may accept."""
        headers = {"Authorization": f"Bearer {key.key}"}
        url = f"http://127.0.0.1:{self.proxy_port}/v1/models"
        deadline = time.monotonic() + timeout
        accepted: set[str] = set()
        while time.monotonic() < deadline:
            live = {b["pid"] for b in self.workers()}
            r = httpx.get(url, headers=headers, timeout=10)
            if r.is_success:
                accepted.add(r.headers["x-request-id"][:10])
                if len(accepted) >= len(live) > 0:
                    return
            time.sleep(0.02)
        raise AssertionError(f"{len(accepted)} proxy workers accepted the new key")

    def forget_failed_logins(self) -> None:
        """What the login throttle counted (it reads its file on every login)."""
        (self.data / "login-failures.json").unlink(missing_ok=True)

    @contextlib.contextmanager
    def admin(self, source: str = "127.0.0.1") -> Iterator[httpx.Client]:
        """A client logged in as the admin (the cookie), connecting from `source`."""
        with httpx.Client(
            base_url=self.url, timeout=30, transport=httpx.HTTPTransport(local_address=source)
        ) as client:
            r = client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
            assert r.status_code == 200, r.text
            yield client

    @contextlib.contextmanager
    def supervisor(self) -> Iterator[Any]:
        """supervisord's XML-RPC interface (what supervisorctl uses), on its unix socket."""
        socket = socket_path(self.home / "var" / "supervisor")
        transport = SupervisorTransport("llmp", SUPERVISOR_PASSWORD, f"unix://{socket}")
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            yield proxy.supervisor
        finally:
            proxy("close")()

    def workers(self) -> list[dict[str, Any]]:
        return [
            b
            for b in read_heartbeats(self.data / "run")
            if b.get("program") == "proxy" and b["alive"]
        ]


@pytest.fixture(scope="session")
def fleet() -> Iterator[dict[str, FakeUpstream]]:
    upstreams = {
        "a": FakeUpstream("a", ["model-a", "shared"], key="key-of-a").start(),
        "b": FakeUpstream("b", ["model-b", "shared", "embed-b"]).start(),
        "slow": FakeUpstream("slow", ["slow-model"], pace=0.2, chunks=10).start(),
    }
    yield upstreams
    for upstream in upstreams.values():
        upstream.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, fleet) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack"), list(fleet.values())).start()
    yield running
    assert running.stop() == 0, running.output()


@pytest.fixture
def key(stack: Stack) -> ApiKey:
    """A fresh key, the only one in apikeys.json, accepted by every proxy worker."""
    new = ApiKey.new("tester")
    stack.keys(new)
    stack.accept(new)
    return new


@pytest.fixture
def admin(stack: Stack) -> Iterator[httpx.Client]:
    """A client of the stack logged in as the admin."""
    with stack.admin() as client:
        yield client
