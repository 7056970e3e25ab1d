"""The certificates certbot keeps: `<config-dir>/live/<name>/`, read with `cryptography`; and
their files and certbot's account as replicas share them (`LineageFiles`, `read_files`,
`write_files`, `read_account`, `write_account`).

A lineage counts only if nginx could load it: its certificate parses, and its chain and key are
there and readable. Anything else is left out of nginx's configuration (and reported), so one
broken folder cannot make nginx refuse every change.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from shared.files import write_atomic

log = logging.getLogger("certd.certs")

_VERSION = re.compile(r"cert(\d+)\.pem")
SHORT_LIFETIME = timedelta(days=10)


@dataclass(frozen=True)
class Lineage:
    name: str
    domains: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    serial: int
    fingerprint: bytes
    fullchain: Path
    privkey: Path
    renewed_at: datetime | None  # when certbot wrote the current version, if it is a renewal

    def renewal_time(self) -> datetime:
        """When certbot's default rule makes this certificate due: half of its lifetime for
        short-lived certificates (under 10 days), two thirds otherwise."""
        lifetime = self.not_after - self.not_before
        share = 1 / 2 if lifetime < SHORT_LIFETIME else 2 / 3
        return self.not_before + lifetime * share


def load(config_dir: Path, name: str) -> Lineage | None:
    """The lineage `name`, or None if it is missing or nginx could not use it."""
    live = config_dir / "live" / name
    cert_path, fullchain, privkey = live / "cert.pem", live / "fullchain.pem", live / "privkey.pem"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        fullchain.read_bytes()
        privkey.read_bytes()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("certificate unusable", extra={"fields": {"name": name, "error": exc}})
        return None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        domains = tuple(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        domains = ()
    renewed_at = None
    version = _VERSION.fullmatch(cert_path.resolve().name)
    if version and int(version.group(1)) > 1:
        mtime = cert_path.resolve().stat().st_mtime
        renewed_at = datetime.fromtimestamp(mtime, UTC)
    return Lineage(
        name=name,
        domains=domains,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        fingerprint=cert.fingerprint(hashes.SHA256()),
        fullchain=fullchain,
        privkey=privkey,
        renewed_at=renewed_at,
    )


def lineages(config_dir: Path) -> dict[str, Lineage]:
    """Every usable lineage, by name, in name order."""
    live = config_dir / "live"
    try:
        names = sorted(p.name for p in live.iterdir() if p.is_dir())
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        lineage = load(config_dir, name)
        if lineage is not None:
            found[name] = lineage
    return found


def served_serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


# A lineage's files, as replicas share them ----------------------------------------------------

_FILES = ("cert", "chain", "fullchain", "privkey")
_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")  # certificate_name() of valid domains
_ACCOUNT_PART = re.compile(r"[A-Za-z0-9._:-]{1,200}")  # accounts/<server host:port>/<path>/<id>


@dataclass(frozen=True)
class LineageFiles:
    """The current version of a lineage as certbot keeps it: `archive/<name>/<file><version>.pem`
    behind `live/<name>/<file>.pem`, and `renewal/<name>.conf`, whose paths name `config_dir`."""

    name: str
    version: int
    pems: dict[str, bytes]  # cert, chain, fullchain, privkey
    renewal: str
    config_dir: str

    @property
    def fingerprint(self) -> bytes:
        cert = x509.load_pem_x509_certificate(self.pems["cert"])
        return cert.fingerprint(hashes.SHA256())


def read_files(config_dir: Path, name: str) -> LineageFiles | None:
    """The lineage `name`'s current files, None if it is not a whole, usable lineage."""
    if load(config_dir, name) is None:
        return None
    live = config_dir / "live" / name
    version = _VERSION.fullmatch((live / "cert.pem").resolve().name)
    try:
        pems = {f: (live / f"{f}.pem").read_bytes() for f in _FILES}
        renewal = (config_dir / "renewal" / f"{name}.conf").read_text()
    except OSError as exc:
        log.warning("certificate not shared", extra={"fields": {"name": name, "error": exc}})
        return None
    return LineageFiles(
        name, int(version.group(1)) if version else 1, pems, renewal, str(config_dir)
    )


def write_files(config_dir: Path, files: LineageFiles) -> None:
    """Make `files` the lineage's current version in `config_dir`, as certbot would have: each
    file written whole (the key 0600), then each `live/` link swapped in one rename. Raises
    ValueError for a name or version that is not a lineage's."""
    if not _NAME.fullmatch(files.name) or ".." in files.name or files.version < 1:
        raise ValueError(f"not a lineage: {files.name!r} version {files.version}")
    if set(files.pems) != set(_FILES):
        raise ValueError(f"lineage {files.name!r}: expected the files {', '.join(_FILES)}")
    archive, live = config_dir / "archive" / files.name, config_dir / "live" / files.name
    for folder in (archive, live, config_dir / "renewal"):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for kind in _FILES:
        target = archive / f"{kind}{files.version}.pem"
        write_atomic(target, files.pems[kind], mode=0o600 if kind == "privkey" else 0o644)
    for kind in _FILES:
        link, temporary = live / f"{kind}.pem", live / f".{kind}.pem.new"
        temporary.unlink(missing_ok=True)
        os.symlink(f"../../archive/{files.name}/{kind}{files.version}.pem", temporary)
        os.replace(temporary, link)
    renewal = files.renewal.replace(files.config_dir, str(config_dir))
    write_atomic(config_dir / "renewal" / f"{files.name}.conf", renewal.encode(), mode=0o644)


def read_account(config_dir: Path) -> dict[str, bytes]:
    """certbot's ACME accounts (`accounts/`), by path inside it."""
    folder = config_dir / "accounts"
    if not folder.is_dir():
        return {}
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def write_account(config_dir: Path, account: dict[str, bytes]) -> None:
    """Write certbot's accounts (0600, in 0700 folders). Raises ValueError for a path that is
    not a plain relative one of names certbot uses."""
    folder = config_dir / "accounts"
    for relative, data in account.items():
        parts = relative.split("/")
        if not all(_ACCOUNT_PART.fullmatch(p) and p not in (".", "..") for p in parts):
            raise ValueError(f"not an account file: {relative!r}")
        path = folder.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists() or path.read_bytes() != data:
            write_atomic(path, data, mode=0o600)
