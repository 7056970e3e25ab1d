"""Upgrading from the original llm-proxy: its nginx `server.conf` becomes llmp's desired site.

The original kept its site only in `NGINX_CONF_DIR/server.conf`, written from its template:
`server_name <domain>;`, the certificate under `live/<domain>/`, and `allow <cidr>;` lines
before `deny all;` on its admin paths. That file cannot stay: it proxies to localhost:8080,
which is now nginx itself, and llmp renders server.conf from the site (`data/site.json`, or
the database with DATABASE_URL). So the first `llmp run` that finds no site and a server.conf
llmp did not render:

- moves the file aside to `server.conf.llm-proxy` (whatever else the admin had edited into it
  is kept there, not applied);
- writes the site with its domains; its allowed networks plus the private ranges, since the
  original never restricted port 8080, where its admin UI was; the certificates on disk that
  cover those domains (so certd does not ask for new ones); and `httpMode: serve`, since the
  original served everything on plain HTTP too and its clients may still use it.

This runs in `llmp run` before any program starts, so the site still has one writer at a time.

The original also left its secrets readable by anyone on the machine (`.env` with the JWT
secret and the admin password, `data/apikeys.json` with every key, 0644 as created).
`protect_secrets` makes them 0600 at every start, before any program reads them; llmp writes
them 0600 itself.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from services.certd import certs
from services.certd.nginx_conf import HEADER, PRIVATE_RANGES, server_conf_path
from shared import storage
from shared.logs import stamp
from shared.settings import Settings
from shared.site import (
    CertificateRequest,
    Site,
    SiteError,
    certificate_name,
    covers,
    valid_cidr,
    valid_domain,
)

BACKUP_NAME = "server.conf.llm-proxy"
_DIRECTIVE = re.compile(r"(?:^|(?<=[;{}]))\s*(server_name|allow)\s+([^;{}]*);")


SECRET_MODE = 0o600


def protect_secrets(settings: Settings, env_file: Path) -> list[tuple[Path, int]]:
    """Take group and other permissions from the files that hold secrets (regular files only;
    a symbolic link is left as it is). Returns each file changed, with its former mode; one
    that cannot change (a read-only mount) is reported with the mode it keeps."""
    changed = []
    for path in (env_file, settings.apikeys_file, settings.cloudflare_credentials):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode) and mode & 0o077:
            try:
                os.chmod(path, mode & SECRET_MODE)
            except OSError as exc:
                line = f"WARNING llmp {path} stays mode {mode:04o}: {exc}"
                print(f"{stamp(time.time())} {line}", flush=True)  # as llmp.run.say writes
                continue
            changed.append((path, mode))
    return changed


@dataclass(frozen=True)
class Imported:
    site: Site
    backup: Path


def parse_server_conf(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The valid domain names of `server_name` and the networks of `allow` lines, in order.

    Anything else (`_`, the template's unsubstituted `${public_ip}`, `allow all`) is skipped.
    """
    uncommented = re.sub(r"(?m)#.*$", "", text)
    domains: dict[str, None] = {}
    networks: dict[str, None] = {}
    for match in _DIRECTIVE.finditer(uncommented):
        for value in match[2].split():
            value = value.strip("'\"")
            try:
                if match[1] == "server_name":
                    domains[valid_domain(value)] = None
                else:
                    networks[valid_cidr(value)] = None
            except SiteError:
                continue
    return tuple(domains), tuple(networks)


def _certificates(settings: Settings, domains: tuple[str, ...]) -> tuple[CertificateRequest, ...]:
    """The lineages on disk that cover any of `domains`, as requests site.json keeps as they
    are (the name certbot gave the lineage is its first domain, as site.json derives it)."""
    requests = []
    for name, lineage in certs.lineages(settings.certbot_dirs[0]).items():
        if not any(covers(lineage.domains, d) for d in domains):
            continue
        first = [d for d in lineage.domains if certificate_name([d]) == name]
        if first:
            ordered = (first[0], *(d for d in lineage.domains if d != first[0]))
            requests.append(CertificateRequest(name, ordered))
    return tuple(requests)


def import_original_site(settings: Settings) -> Imported | None:
    """If this is an upgrade from the original (see the module's docstring), do it."""
    server = server_conf_path(settings)
    if not server.is_file():
        return None
    text = server.read_text(errors="replace")
    if text.startswith(HEADER):
        return None  # rendered by llmp
    store = storage.site_store(settings)
    if store.has_site():  # raises SiteError if it cannot tell (the database away)
        return None
    domains, networks = parse_server_conf(text)
    site = Site(
        domains=domains,
        cidr_groups=(
            tuple(dict.fromkeys(valid_cidr(c) for c in (*networks, *PRIVATE_RANGES)))
            if networks
            else ()
        ),
        http_mode="serve",
        certificates=_certificates(settings, domains),
    )
    # The desired state first: if the move then failed, certd would still render the site.
    written = store.update_site(lambda current: site)
    backup = server.with_name(BACKUP_NAME)
    number = 0
    while backup.exists():
        number += 1
        backup = server.with_name(f"{BACKUP_NAME}.{number}")
    server.rename(backup)
    return Imported(written, backup)
