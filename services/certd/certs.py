"""The certificates certbot keeps: `<config-dir>/live/<name>/`, read with `cryptography`.

A lineage counts only if nginx could load it: its certificate parses, and its chain and key are
there and readable. Anything else is left out of nginx's configuration (and reported), so one
broken folder cannot make nginx refuse every change.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

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
