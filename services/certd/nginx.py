"""Applying a configuration to nginx: test it with `nginx -t`, swap it in, reload.

A candidate is always tested in full before it replaces the live files, so a config nginx
refuses never reaches the running master, and the files on disk stay the last good ones.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.certd.nginx_conf import main_conf_path, render_main, render_server, server_conf_path
from shared.files import write_atomic
from shared.settings import Settings

TIMEOUT = 30.0


class NginxError(Exception):
    """nginx refused a configuration or a command; the message is nginx's own."""


@dataclass(frozen=True)
class Applied:
    changed: bool
    reloaded: bool


def _run(settings: Settings, *args: str) -> None:
    prefix = settings.nginx_prefix.absolute()
    argv = [settings.nginx_bin, "-p", f"{prefix}/", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NginxError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise NginxError(done.stderr.strip() or f"{argv[0]} exited with {done.returncode}")


def prepare_prefix(settings: Settings) -> None:
    prefix = settings.nginx_prefix
    for sub in ("conf", "run", "logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    settings.nginx_conf_dir.mkdir(parents=True, exist_ok=True)


def running(settings: Settings) -> bool:
    pid_file = settings.nginx_prefix / "run" / "nginx.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        Path(f"/proc/{pid}").stat()
    except FileNotFoundError:
        return False
    return True


def reload(settings: Settings) -> None:
    _run(settings, "-c", str(main_conf_path(settings)), "-s", "reload")


def apply(settings: Settings, server: str | None = None) -> Applied:
    """Make nginx serve `server` (default: the rendered bootstrap routes).

    Tests the candidate with `nginx -t`; raises NginxError with nginx's message if it is refused,
    leaving the live files untouched. Reloads nginx only if it runs and something changed.
    """
    prepare_prefix(settings)
    server = render_server(settings) if server is None else server
    main_path, server_path = main_conf_path(settings), server_conf_path(settings)
    main = render_main(settings, server_path)
    if _read(main_path) == main and _read(server_path) == server:
        return Applied(changed=False, reloaded=False)

    candidate_server = server_path.with_name(".candidate-" + server_path.name)
    candidate_main = main_path.with_name(".candidate-" + main_path.name)
    try:
        write_atomic(candidate_server, server.encode(), mode=0o644)
        write_atomic(candidate_main, render_main(settings, candidate_server).encode(), mode=0o644)
        _run(settings, "-t", "-q", "-c", str(candidate_main))
    finally:
        for path in (candidate_server, candidate_main):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    write_atomic(server_path, server.encode(), mode=0o644)
    write_atomic(main_path, main.encode(), mode=0o644)
    if not running(settings):
        return Applied(changed=True, reloaded=False)
    reload(settings)
    return Applied(changed=True, reloaded=True)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
