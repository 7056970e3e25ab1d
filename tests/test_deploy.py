"""The deployment examples in deploy/ (compose.yaml and haproxy.cfg, kubernetes/), checked
mechanically: parsed with a real YAML parser, every setting they give llmp is one of llmp's and
passes its validation, the ports agree between haproxy, the services and llmp's settings, and
haproxy's own `haproxy -c` accepts its configuration. (Running them needs Docker or a cluster.)"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SETTINGS = {name.upper() for name in Settings.model_fields}
MIGRATE = ["python", "-m", "llmp", "database", "migrate"]


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def interpolate(value: str) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` with stand-ins."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?(?::\?[^}]*)?\}", lambda m: m[2] or "pw", value)


def image_env() -> dict[str, str]:
    """The settings the Dockerfile's ENV gives llmp in the image."""
    text = (DEPLOY.parent / "Dockerfile").read_text().replace("\\\n", " ")
    found = dict(re.findall(r"\b([A-Z_]+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", text, re.M))))
    return {k: v for k, v in found.items() if k in SETTINGS}


def settings_of(env: dict[str, str], tmp_path: Path) -> Settings:
    unknown = set(env) - SETTINGS
    assert not unknown, f"not llmp settings: {unknown}"
    (tmp_path / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return load_settings(str(tmp_path / "env"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_runs_postgres_valkey_a_migration_replicas_and_haproxy(compose, tmp_path):
    services = compose["services"]
    assert set(services) == {"postgres", "valkey", "migrate", "llmp", "haproxy"}
    llmp, migrate, postgres = services["llmp"], services["migrate"], services["postgres"]
    # The migration runs once the database is up, the replicas once it finished.
    assert migrate["command"] == MIGRATE and migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert llmp["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "valkey": {"condition": "service_healthy"},
    }
    assert interpolate(llmp["deploy"]["replicas"]) == "3"
    # One database, as postgres makes it.
    pg = postgres["environment"]
    for service in (migrate, llmp):
        url = urlsplit(interpolate(service["environment"]["DATABASE_URL"]))
        assert (url.hostname, url.username, url.path) == ("postgres", pg["POSTGRES_USER"], "/llmp")
        assert pg["POSTGRES_DB"] == "llmp" and url.password == "pw"
    # Every setting given is llmp's, and valid together with the shared ones.
    shared = env_file(DEPLOY / "llmp.env.example")
    assert llmp["env_file"] == "llmp.env" and {"JWT_SECRET", "AUTH_PASSWORD"} <= set(shared)
    env = {**shared, **{k: interpolate(v) for k, v in llmp["environment"].items()}}
    settings = settings_of(env | {"JWT_SECRET": "x" * 40}, tmp_path)
    assert settings.database_url.startswith("postgresql://llmp:")
    # Every replica counts its limits in the one Valkey.
    assert urlsplit(settings.redis_url).hostname == "valkey"
    ports = {settings.port, settings.https_port, settings.api_port, settings.proxy_port}
    ports |= {settings.proxy_protocol_port, settings.proxy_protocol_https_port}
    assert len(ports) == 6, "two of llmp's ports collide"
    # The credentials file is where certbot looks for it in the image.
    [mount] = llmp["volumes"]
    assert mount.split(":")[1] == image_env()["CLOUDFLARE_CREDENTIALS"]


def test_haproxy_reaches_the_replicas_ports_from_an_address_they_trust(compose, tmp_path):
    services = compose["services"]
    llmp = services["llmp"]
    env = {k: interpolate(v) for k, v in llmp["environment"].items()}
    settings = settings_of(env | {"JWT_SECRET": "x" * 40}, tmp_path)
    config = (DEPLOY / "haproxy.cfg").read_text()
    assert re.search(r"^\s*mode tcp$", config, re.M)  # TLS is the replicas' own
    backends = re.findall(r"server-template \w+ \d+ (\w+):(\d+) (.*)", config)
    assert {int(port) for _, port, _ in backends} == {
        settings.proxy_protocol_port,
        settings.proxy_protocol_https_port,
    }
    for host, _, options in backends:
        assert host == "llmp" and "send-proxy-v2" in options.split()
        assert f"check port {settings.port}" in options  # PORT, which takes no PROXY line
    binds = set(re.findall(r"^\s*bind :(\d+)$", config, re.M))
    published = {p.split(":")[1] for p in services["haproxy"]["ports"]}
    assert binds == published == {"80", "443"}
    # haproxy's address is the one the replicas trust, in the network's subnet.
    address = ipaddress.ip_address(services["haproxy"]["networks"]["llmp"]["ipv4_address"])
    [subnet] = compose["networks"]["llmp"]["ipam"]["config"]
    assert address in ipaddress.ip_network(subnet["subnet"])
    assert any(address in ipaddress.ip_network(c) for c in settings.trusted_proxies)


def test_the_secrets_beside_the_examples_never_reach_the_image():
    """compose builds the image from the checkout (`build: ..`): deploy/llmp.env, deploy/.env
    and deploy/cloudflare_credentials must not be copied into it."""
    from tests.test_container import _ignored

    for secret in ("deploy/llmp.env", "deploy/.env", "deploy/cloudflare_credentials"):
        assert _ignored(secret), secret


def test_haproxy_accepts_its_configuration():
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.fail("haproxy is missing: run scripts/system-deps test")
    done = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_migration_command_exists(tmp_path, capsys):
    from llmp.__main__ import main

    (tmp_path / "env").touch()
    with pytest.raises(SystemExit) as stop:
        main(["--env-file", str(tmp_path / "env"), *MIGRATE[3:]])
    assert stop.value.code == 1 and "DATABASE_URL is not set" in capsys.readouterr().err


def kubernetes() -> dict[str, list[dict[str, Any]]]:
    folder = DEPLOY / "kubernetes"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return {
        name: [d for d in yaml.safe_load_all((folder / name).read_text()) if d]
        for name in kustomization["resources"]
    }


def test_kubernetes_manifests_agree_with_llmps_settings(tmp_path):
    folder = DEPLOY / "kubernetes"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    generated = {s["name"]: s["envs"] for s in kustomization["secretGenerator"]}
    assert generated == {"llmp": ["llmp.env"], "postgres": ["postgres.env"]}
    docs = [d for ds in kubernetes().values() for d in ds]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    deployment = by_kind[("Deployment", "llmp")]
    pod = deployment["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["command"] == MIGRATE
    [container] = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "llmp"}}]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    env.pop("POSTGRES_PASSWORD")  # the database's, only for DATABASE_URL's $(POSTGRES_PASSWORD)
    assert {e["name"] for e in init["env"]} == {"POSTGRES_PASSWORD", "DATABASE_URL"}
    env["DATABASE_URL"] = env["DATABASE_URL"].replace("$(POSTGRES_PASSWORD)", "pw")
    env["REPLICA_NAME"] = "llmp-0"
    shared = env_file(DEPLOY / "llmp.env.example")
    settings = settings_of({**shared, **env, "JWT_SECRET": "x" * 40}, tmp_path)
    assert urlsplit(settings.database_url).hostname == "postgres"
    assert ("Service", "postgres") in by_kind and ("StatefulSet", "postgres") in by_kind
    assert urlsplit(settings.redis_url).hostname == "valkey"
    valkey = by_kind[("Service", "valkey")]["spec"]
    assert ("Deployment", "valkey") in by_kind and valkey["ports"][0]["port"] == 6379
    # The Service's ports reach the container's, which are llmp's PORT and HTTPS_PORT.
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named == {"http": settings.port, "https": settings.https_port}
    service = by_kind[("Service", "llmp")]["spec"]
    assert {p["targetPort"] for p in service["ports"]} == set(named)
    assert service["externalTrafficPolicy"] == "Local"  # the client's address reaches nginx
    # The folders the image's settings name are the pod's own.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    image = image_env()
    assert {image[k] for k in ("DATA_DIR", "LETSENCRYPT_DIR", "NGINX_CONF_DIR")} <= mounts
    credentials = Path(image["CLOUDFLARE_CREDENTIALS"])
    assert str(credentials.parent) in mounts
    [cloudflare] = [v for v in pod["volumes"] if "secret" in v]
    assert cloudflare["name"] == next(
        m["name"] for m in container["volumeMounts"] if m["mountPath"] == str(credentials.parent)
    )
    assert pod["terminationGracePeriodSeconds"] > 30  # nginx's and the proxy's 30 s for streams
