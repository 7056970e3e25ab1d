"""Shared fixtures: fake upstreams on loopback, API keys, and the proxy in a real uvicorn."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import uvicorn

from services.proxy.__main__ import SERVER_OPTIONS
from services.proxy.app import ProxyApp, create_app
from services.proxy.runtime import Runtime
from shared import analytics
from shared.apikeys import ApiKey, write_keys
from shared.settings import Settings, load_settings
from tests.upstream import FakeUpstream

TESTS = Path(__file__).parent

# Folders whose tests run llmp as deployed (supervisord, nginx, several processes) or drive it
# from outside (a browser, podman): all of them are `stack` tests.
STACK_FOLDERS = {"stack", "security", "faults", "e2e"}
STACK_MODULES = {"test_container.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of STACK_FOLDERS and STACK_MODULES `stack` (see pyproject.toml)."""
    for item in items:
        parts = item.path.relative_to(TESTS).parts
        if parts[0] in STACK_FOLDERS or parts[-1] in STACK_MODULES:
            item.add_marker(pytest.mark.stack)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy; fail with its last value.

    The default bound is for a loaded machine (CI runs on two busy cores): it costs nothing when
    the event comes, and an event that llmp must deliver within some time passes its own,
    tighter `timeout`."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = check()
    assert value, f"not true after {timeout}s: {value!r}"
    return value


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    env = tmp / "env"
    env.touch()
    base: dict[str, Any] = {
        "data_dir": tmp / "data",
        "state_dir": tmp / "var",
        "nginx_conf_dir": tmp / "nginx",
        "letsencrypt_dir": tmp / "certs",
        "bind_address": "127.0.0.1",
        "models_timeout_seconds": 1.0,
        "upstream_connect_timeout": 2.0,
        "upstream_read_timeout": 5.0,
    }
    return load_settings(str(env), **{**base, **overrides})


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


@pytest.fixture(autouse=True, scope="session")
def no_proxy_from_the_environment() -> Iterator[None]:
    """llmp honours the proxy variables (shared/settings.py), and so do httpx and the openai
    SDK: a developer's own would send the tests' loopback traffic through their proxy."""
    with pytest.MonkeyPatch.context() as patch:
        for name in PROXY_VARIABLES:
            patch.delenv(name, raising=False)
            patch.delenv(name.lower(), raising=False)
        yield


@pytest.fixture
def upstreams() -> Iterator[Callable[..., FakeUpstream]]:
    """Start fake upstreams: `upstreams("a", ["model-a"], key="k")`."""
    started: list[FakeUpstream] = []

    def start(name: str, models: list[str], **options: Any) -> FakeUpstream:
        upstream = FakeUpstream(name, models, **options).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.stop()


@pytest.fixture
def api_key(tmp_path: Path) -> ApiKey:
    key = ApiKey.new("tester")
    write_keys(tmp_path / "data" / "apikeys.json", [key])
    return key


class RunningProxy:
    """The proxy app served by a real uvicorn (httptools, uvloop) in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        asgi = create_app(settings)
        self.app: ProxyApp = cast(ProxyApp, getattr(asgi, "app", asgi))  # in CORSMiddleware?
        self.port = free_port()
        config = uvicorn.Config(asgi, host="127.0.0.1", port=self.port, **SERVER_OPTIONS)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="proxy", daemon=True)

    def __enter__(self) -> RunningProxy:
        self.thread.start()
        eventually(lambda: self.server.started, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: ApiKey | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key.key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    @property
    def runtime(self) -> Runtime:
        """The worker's long-lived resources, once its lifespan has built them."""
        assert self.app.runtime is not None, "the proxy has not started"
        return self.app.runtime

    def rows(self) -> list[dict[str, Any]]:
        """Analytics rows written so far (after flushing what the recorder holds)."""
        loop = self.server_loop()
        asyncio.run_coroutine_threadsafe(self.runtime.recorder.flush(), loop).result(10)
        db = analytics.connect(self.settings.analytics_db)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
        finally:
            db.close()

    def server_loop(self) -> asyncio.AbstractEventLoop:
        return self.runtime.loop


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    """Start the proxy on the given upstreams: `proxy(upstream_a, upstream_b, payload_limit=10)`."""
    running: list[RunningProxy] = []

    def start(*targets: FakeUpstream | str, **overrides: Any) -> RunningProxy:
        urls = ",".join(
            t if isinstance(t, str) else t.url + (f"|{t.key}" if t.key else "") for t in targets
        )
        settings = make_settings(tmp_path, target_urls=urls, **overrides)
        instance = RunningProxy(settings).__enter__()
        running.append(instance)
        return instance

    yield start
    for instance in running:
        instance.__exit__()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (tests/postgres.py), started by the
    first test that asks for it: tests without DATABASE_URL never start one."""
    from tests.postgres import Cluster

    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def database_url(postgres: Any) -> str:
    """A new empty database in the session's cluster."""
    url: str = postgres.new_database()
    return url
