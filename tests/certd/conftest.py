"""Fixtures for certd: a session-wide offline ACME world, echo services standing in for the api
and the proxy, and a real nginx run on the configuration certd renders."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.certd import nginx
from services.certd.nginx_conf import main_conf_path
from shared.settings import Settings
from tests.certd.acme import AcmeServer
from tests.certd.engine import Engine, build_engine
from tests.certd.servers import connects, serve
from tests.conftest import eventually, free_port, make_settings


@pytest.fixture(scope="session")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeServer]:
    server = AcmeServer(tmp_path_factory.mktemp("acme")).start()
    yield server
    server.stop()


@pytest.fixture
def echo_settings(tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    """Settings whose api and proxy are echo servers: `echo_settings(**overrides)`."""
    api, proxy = serve("api"), serve("proxy")

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "port": free_port(),
            "https_port": free_port(),
            "api_port": api.server_port,
            "proxy_port": proxy.server_port,
        }
        return make_settings(tmp_path, **{**base, **overrides})

    yield make
    for server in (api, proxy):
        server.shutdown()
        server.server_close()


@pytest.fixture
def run_nginx() -> Iterator[Callable[[Settings], subprocess.Popen[bytes]]]:
    """Start nginx on what `nginx.apply(settings)` renders; stopped gracefully at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings) -> subprocess.Popen[bytes]:
        nginx.apply(settings)
        prefix = settings.nginx_prefix.absolute()
        process = subprocess.Popen(
            [settings.nginx_bin, "-c", str(main_conf_path(settings)), "-p", f"{prefix}/"]
        )
        started.append(process)
        eventually(lambda: connects(settings.port) and nginx.running(settings))
        return process

    yield start
    for process in started:
        process.send_signal(signal.SIGQUIT)
        process.wait(10)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A library that reports who loaded it (see tests/certd/engine.py), and the secret it tries
    to read: `settings.apikeys_file` of `make_settings(tmp_path)`, created 0600."""
    secret = tmp_path / "data" / "apikeys.json"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text('{"keys": []}')
    secret.chmod(0o600)
    folder = Path(tempfile.mkdtemp(prefix="llmp-engine-"))  # reachable by any user
    try:
        yield build_engine(folder, secret)
    finally:
        shutil.rmtree(folder)
