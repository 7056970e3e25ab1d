"""The image, run with podman as docker-compose.yml runs it: its ports (on free loopback ports
here), its volumes (from a folder per test), its stop grace period.

`.ci/run` builds the image (LLMP_IMAGE, localhost/llmp:ci by default) from the Debian base it
makes, and runs these tests once on the machine, as root. podman runs here with runc and
without default ulimits (.ci/containers.conf); there is no systemd, so the health check is
polled with `podman healthcheck run`. The fake upstreams listen on the bridge's gateway, which
the container reaches as host.containers.internal.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("LLMP_IMAGE", "localhost/llmp:ci")
PODMAN = ["podman", "--runtime", "runc"]
BRIDGE = os.environ.get("LLMP_BRIDGE_ADDRESS", "10.88.0.1")  # podman's default network
HEALTHY_WITHIN = 240.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.container)


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.setdefault("CONTAINERS_CONF", str(ROOT / ".ci" / "containers.conf"))
    done = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done


def compose_service() -> dict[str, object]:
    service: dict[str, object] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"
    ]["llmp"]
    return service


def original_layout(home: Path) -> None:
    """What the README says to make before the first `docker compose up`."""
    home.mkdir(parents=True, exist_ok=True)
    for name in ("data", "nginx", "certs"):
        (home / name).mkdir(exist_ok=True)
    for name in (".env", "cloudflare_credentials"):
        (home / name).touch()


@dataclass
class Container:
    name: str
    home: Path
    port: int
    https_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def exec(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *args, timeout=timeout)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads(podman("inspect", self.name).stdout)[0]["State"]
        return state

    def wait_healthy(self, timeout: float = HEALTHY_WITHIN) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            assert state["Running"], f"the container stopped:\n{self.logs()}"
            if podman("healthcheck", "run", self.name, check=False).returncode == 0:
                return
            assert time.monotonic() < deadline, f"not healthy after {timeout}s:\n{self.logs()}"
            time.sleep(2)


def run_as_compose(
    home: Path, name: str, env: dict[str, str] | None = None, detach: bool = True
) -> list[str]:
    """`podman run` arguments for docker-compose.yml's service, its folders in `home`."""
    service = compose_service()
    args = ["run", "--name", name, "--hostname", str(service["hostname"])]
    grace = str(service["stop_grace_period"]).removesuffix("s")
    args += ["--stop-timeout", grace]
    for volume in service["volumes"]:  # type: ignore[attr-defined]
        source, target = str(volume).split(":")[:2]
        args += ["--volume", f"{(home / source).resolve()}:{target}"]
    for variable, value in (env or {}).items():
        args += ["--env", f"{variable}={value}"]
    return [*args, "-d"] if detach else args


@pytest.fixture
def start_llmp(tmp_path: Path) -> Iterator[object]:
    """Start llmp's image as compose does, in `home`, with ports on free loopback ports."""
    started: list[str] = []

    def start(home: Path, env: dict[str, str] | None = None) -> Container:
        name = f"llmp-test-{secrets.token_hex(4)}"
        port, https_port = free_port(), free_port()
        args = run_as_compose(home, name, env)
        args += ["--publish", f"127.0.0.1:{port}:8080", "--publish", f"127.0.0.1:{https_port}:443"]
        podman(*args, IMAGE)
        started.append(name)
        return Container(name, home, port, https_port)

    yield start
    for name in started:
        podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("up", ["llama3"], host=BRIDGE, pace=0.0).start()
    yield fake
    fake.stop()


def in_container(url: str) -> str:
    """The fake upstream's URL as the container sees it."""
    return re.sub(r"^http://[^:/]+", "http://host.containers.internal", url)
