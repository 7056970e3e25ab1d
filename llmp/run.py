"""`llmp run`: prepare everything the programs need, then become supervisord.

The same start-up for `make run` and the container: create `.env` if there is none, check the
settings, in the container take the mounted folders and become the unprivileged user (see
`privileges`), take over an original llm-proxy's nginx site (see `upgrade`), make the folders,
render and test the nginx configuration (so nginx starts with a good one), clear heartbeats of
an earlier run, and exec supervisord in the foreground with `supervisord.conf`, which finds its
paths in the environment set here. supervisord stays the process llmp was started as (PID 1 in
the container): it forwards signals to the programs and reaps every child.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from llmp import privileges, upgrade
from llmp.envfile import EnvFileError, create_env_file
from services.certd import nginx
from services.certd.nginx_conf import main_conf_path
from shared.apikeys import last_good_path, write_keys
from shared.logs import stamp
from shared.settings import Settings, load_settings

HOME = Path(__file__).resolve().parent.parent
SUPERVISORD_CONF = HOME / "supervisord.conf"


def fail(message: str) -> NoReturn:
    print(f"llmp: {message}", file=sys.stderr)
    raise SystemExit(2)


def say(level: str, message: str) -> None:
    """A line on stdout in the programs' format (shared/logs.py): `time LEVEL llmp message`."""
    print(f"{stamp(time.time())} {level} llmp {message}", flush=True)


def socket_path(folder: Path) -> Path:
    """supervisord's control socket: in its folder, unless that path is too long for a unix
    socket (about 100 bytes), then in the temp folder under a name derived from it."""
    path = (folder / "supervisor.sock").absolute()
    if len(os.fsencode(path)) < 100:
        return path
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"llmp-{digest}.sock"


def ensure_key_file(path: Path) -> None:
    """A fresh install has no keys yet, not a missing key file (which the proxy reports). A
    file deleted after keys were made stays missing: its last good copy keeps them in force,
    and revocable (shared/apikeys.load_keys); an empty file would have replaced the copy too."""
    if not path.exists() and not last_good_path(path).exists():
        write_keys(path, [])


def prepare(settings: Settings) -> dict[str, str]:
    """Make folders and the nginx config; return the environment for supervisord."""
    if shutil.which(settings.nginx_bin) is None:
        fail(
            f"nginx not found ({settings.nginx_bin!r}); install it (Debian: apt-get install "
            "nginx, or run `make run` as root) or set NGINX_BIN"
        )
    for folder in (settings.data_dir, settings.run_dir, settings.state_dir / "supervisor"):
        folder.mkdir(parents=True, exist_ok=True)
    for stale in settings.run_dir.glob("*.json"):
        stale.unlink()
    ensure_key_file(settings.apikeys_file)
    # The proxy workers' Prometheus counters, summed by the api; a new run counts from zero.
    metrics = settings.state_dir / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir(parents=True)
    try:
        nginx.apply(settings)
    except nginx.NginxError as exc:
        fail(f"nginx refused the configuration:\n{exc}")
    except PermissionError as exc:
        fail(f"{exc}: set NGINX_CONF_DIR, STATE_DIR and DATA_DIR to folders you can write")
    return {
        "LLMP_SUPERVISOR_SOCKET": str(socket_path(settings.state_dir / "supervisor")),
        "LLMP_HOME": str(Path.cwd()),
        "LLMP_PYTHON": sys.executable,
        "LLMP_SUPERVISOR_DIR": str((settings.state_dir / "supervisor").absolute()),
        "LLMP_NGINX_BIN": shutil.which(settings.nginx_bin) or settings.nginx_bin,
        "LLMP_NGINX_CONF": str(main_conf_path(settings)),
        "LLMP_NGINX_PREFIX": str(settings.nginx_prefix.absolute()),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics.absolute()),
    }


def run(env_file: Path) -> None:
    try:
        password = create_env_file(env_file, HOME / ".env.example")
    except EnvFileError as exc:
        fail(str(exc))
    if password is not None:
        say(
            "WARNING",
            f"wrote {env_file} with new secrets. Admin login: admin / {password} (shown once; "
            "it is kept in that file)",
        )
    try:
        settings = load_settings(str(env_file))
    except ValidationError as exc:
        fail(f"bad settings in {env_file} or the environment:\n{exc}")
    if settings.cloudflare_credentials.is_dir():
        say(
            "WARNING",
            f"{settings.cloudflare_credentials} is a directory, not Cloudflare's credentials "
            "file: certificates through Cloudflare's DNS fail until it is a file",
        )
    user = privileges.target()
    if user is not None:
        privileges.hand_over(settings, env_file, user)
        privileges.become(user)
    for path, mode in upgrade.protect_secrets(settings, env_file):
        say("WARNING", f"{path} was mode {mode:04o}, open to others; now private")
    imported = upgrade.import_original_site(settings)
    if imported is not None:
        site = imported.site
        say(
            "INFO",
            f"took over llm-proxy's nginx site (the file is kept as {imported.backup}): "
            f"domains {', '.join(site.domains) or 'none'}; admin networks "
            f"{', '.join(site.cidr_groups) or 'the private ranges'}; plain HTTP keeps serving",
        )
    environment = {**os.environ, "ENV_FILE": str(env_file.absolute()), **prepare(settings)}
    # supervisord's control socket asks for a password, made anew at each start unless given
    # (tests give one): its mode already keeps others out, but without one supervisord logs a
    # CRITICAL line at every start.
    environment.setdefault("LLMP_SUPERVISOR_PASSWORD", secrets.token_urlsafe(24))
    # supervisord, with its own lines in llmp's format (llmp.supervisord).
    command = [sys.executable, "-m", "llmp.supervisord", "-c", str(SUPERVISORD_CONF)]
    os.execve(sys.executable, command, environment)
