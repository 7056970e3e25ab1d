"""Applying a configuration to nginx: test it with `nginx -t`, swap it in, reload.

A candidate is always tested in full before it replaces the live files, so a config nginx
refuses never reaches the running master, and the files on disk stay the last good ones. The
test runs in a private folder, unprivileged when certd is root (see `test`). If the
reload itself fails, the previous files are put back and nginx reloaded with them.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from services.certd import certs
from services.certd.nginx_conf import (
    EMPTY_ROOT,
    main_conf_path,
    render_main,
    render_server,
    render_site,
    server_conf_path,
)
from shared import storage
from shared.custom_config import certificate_files, check_custom_config
from shared.files import write_atomic
from shared.settings import Settings
from shared.site import SiteError

log = logging.getLogger("certd.nginx")

TIMEOUT = 30.0
RELOAD_WAIT = 5.0


class NginxError(Exception):
    """nginx refused a configuration or a command; the message is nginx's own."""


@dataclass(frozen=True)
class Applied:
    changed: bool
    reloaded: bool


def _run(settings: Settings, *args: str, prefixed: bool = True) -> None:
    """nginx with `args` (after `-p <prefix>`, unless `prefixed` is False: a whole argv)."""
    prefix = settings.nginx_prefix.absolute()
    argv = [settings.nginx_bin, "-p", f"{prefix}/", *args] if prefixed else list(args)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NginxError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise NginxError(done.stderr.strip() or f"{argv[0]} exited with {done.returncode}")


def prepare_prefix(settings: Settings) -> None:
    prefix = settings.nginx_prefix
    for sub in ("conf", "run", "logs", "tmp", EMPTY_ROOT):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    settings.nginx_conf_dir.mkdir(parents=True, exist_ok=True)


def _master(settings: Settings) -> int | None:
    pid_file = settings.nginx_prefix / "run" / "nginx.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def running(settings: Settings) -> bool:
    return _master(settings) is not None


def _workers(master: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
    except (OSError, ValueError):
        return set()


def _serving(worker: int) -> bool:
    """Is this worker still accepting connections (not gone, not shutting down)?"""
    try:
        title = Path(f"/proc/{worker}/cmdline").read_bytes()
    except OSError:
        return False
    return bool(title) and b"shutting down" not in title


def reload(settings: Settings) -> None:
    """Reload nginx, and wait (boundedly) until the old workers stopped accepting connections:
    from then on, every new connection gets the new configuration."""
    master = _master(settings)
    before = _workers(master) if master else set()
    _run(settings, "-c", str(main_conf_path(settings)), "-s", "reload")
    if not master or not before:
        return
    deadline = time.monotonic() + RELOAD_WAIT
    while time.monotonic() < deadline and (
        not _workers(master) - before or any(_serving(w) for w in before)
    ):
        time.sleep(0.01)


def test(settings: Settings, server: str) -> None:
    """Raise NginxError with nginx's message unless `server` (with our main conf) passes.

    `nginx -t` runs in a private folder of its own (the candidate files, the pid, temp and log
    folders, the empty root): what it writes stays there. When certd runs as root, it runs as
    NGINX_TEST_USER, without groups, capabilities or a way to gain them, so what the tested
    text makes nginx read or load (OpenSSL loads certificate files, and more) is what that user
    may read: the certificates the text names are copied into the private folder for it.
    When certd is not root, it runs as certd's own user (see SECURITY.md)."""
    prepare_prefix(settings)
    sandbox = sandbox_user(settings)
    letsencrypt = str(settings.letsencrypt_dir.absolute())
    with tempfile.TemporaryDirectory(prefix="llmp-nginx-test-") as folder:
        prefix = Path(folder)
        for sub in ("conf", "run", "logs", "tmp", EMPTY_ROOT, "certs"):
            (prefix / sub).mkdir()
        candidate = prefix / "conf" / "server.conf"
        if sandbox is not None:
            try:
                server = _private_certificates(server, letsencrypt, prefix / "certs")
            except SiteError as exc:  # crossplane cannot read it: nginx cannot either
                raise NginxError(str(exc)) from exc
        candidate.write_text(server)
        main = prefix / "conf" / "nginx.conf"
        main.write_text(render_main(settings, candidate, prefix))
        argv = [settings.nginx_bin, "-p", f"{prefix}/", "-e", "stderr", "-t", "-q", "-c", str(main)]
        if sandbox is not None:
            uid, gid = sandbox
            for entry in (prefix, *prefix.rglob("*")):
                os.lchown(entry, uid, gid)
            argv = [
                *("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"),
                *("--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"),
                *argv,
            ]
        try:
            _run(settings, *argv, prefixed=False)
        except NginxError as exc:  # in the words of the files it was asked about
            message = str(exc).replace(str(prefix / "certs"), letsencrypt)
            message = message.replace(str(candidate), str(server_conf_path(settings)))
            message = message.replace(str(main), str(main_conf_path(settings)))
            raise NginxError(message) from None


def sandbox_user(settings: Settings) -> tuple[int, int] | None:
    """The uid and gid `nginx -t` runs as: NGINX_TEST_USER (a name, or `uid[:gid]`) when
    certd is root; None (certd's own) otherwise."""
    if os.geteuid() != 0:
        return None
    name = settings.nginx_test_user
    uid, _, gid = name.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return int(uid), int(gid or uid)
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise NginxError(f"NGINX_TEST_USER={name!r} is not a user of this system") from exc
    if entry.pw_uid == 0:
        raise NginxError(f"NGINX_TEST_USER={name!r} is root: choose an unprivileged user")
    return entry.pw_uid, entry.pw_gid


def _private_certificates(server: str, letsencrypt: str, copies: Path) -> str:
    """`server` with the certificate files it names inside LETSENCRYPT_DIR copied under
    `copies` (with the folders they are in) and named there instead."""
    for name in certificate_files(server):
        if not name.startswith(letsencrypt + "/") or not os.path.isfile(name):
            continue  # nginx says what is wrong with it; it reads no copy of anything
        copy = copies / os.path.relpath(name, letsencrypt)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(name, copy)
        copy.chmod(0o600)
    return server.replace(letsencrypt + "/", f"{copies}/")


def apply(settings: Settings, server: str | None = None, force_reload: bool = False) -> Applied:
    """Make nginx serve `server` (default: what the site asks for, see `desired`).

    Tests the candidate with `nginx -t`; raises NginxError with nginx's message if it is refused,
    leaving the live files untouched. Reloads nginx if it runs and something changed (or
    `force_reload`, after new certificates); if that reload fails, restores the previous files.
    """
    if server is None:
        return _apply_desired(settings)
    prepare_prefix(settings)
    main_path, server_path = main_conf_path(settings), server_conf_path(settings)
    main = render_main(settings, server_path)
    old_main, old_server = _read(main_path), _read(server_path)
    changed = (old_main, old_server) != (main, server)
    if changed:
        test(settings, server)
        write_atomic(server_path, server.encode(), mode=0o644)
        write_atomic(main_path, main.encode(), mode=0o644)
    if not running(settings) or not (changed or force_reload):
        return Applied(changed=changed, reloaded=False)
    try:
        reload(settings)
    except NginxError:
        if changed and old_main is not None and old_server is not None:
            rollback(settings, old_main, old_server)
        raise
    return Applied(changed=changed, reloaded=True)


def rollback(settings: Settings, main: str, server: str) -> None:
    """Put back files that were serving before, and reload nginx with them."""
    log.warning("rolling back to the previous nginx configuration")
    write_atomic(server_conf_path(settings), server.encode(), mode=0o644)
    write_atomic(main_conf_path(settings), main.encode(), mode=0o644)
    if running(settings):
        reload(settings)


def desired(settings: Settings) -> str:
    """server.conf as the site and the certificates on disk make it now."""
    try:
        site = storage.site_store(settings).read_site()
        return render_site(settings, site, certs.lineages(settings.certbot_dirs[0]))
    except SiteError as exc:
        raise NginxError(f"site not applied: {exc}") from exc


def _apply_desired(settings: Settings) -> Applied:
    """At start-up: the desired config; if nginx refuses it, the live files if they still pass,
    else the bootstrap routes, so that nginx always starts."""
    try:
        return apply(settings, desired(settings))
    except NginxError as exc:  # refused, or no valid site to render
        log.error("desired nginx config refused", extra={"fields": {"error": exc}})
    current = _read(server_conf_path(settings))
    if current is not None:
        try:
            # An older llmp may have left what the allowlist refuses: never even tested.
            check_custom_config(current, settings.letsencrypt_dir)
            return apply(settings, current)
        except (NginxError, SiteError) as exc:
            log.error("live nginx config refused", extra={"fields": {"error": exc}})
    return apply(settings, render_server(settings))


def served_certificate(settings: Settings, server_name: str, timeout: float = 2.0) -> bytes | None:
    """The certificate (DER) nginx presents on HTTPS_PORT for `server_name`, or None if it does
    not answer TLS there."""
    host = settings.bind_address if settings.bind_address not in ("", "0.0.0.0") else "127.0.0.1"
    if host == "::":
        host = "::1"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, settings.https_port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            return tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
