"""Certificates and certbot's account in PostgreSQL (`services.certd.share.CertificateShare`).

`llmp_certificates` holds each lineage's current version: certificate, chain and full chain as
they are (public), the private key sealed, certbot's renewal configuration, and the certificate's
SHA-256 fingerprint (what tells a new version from the one a replica has). `llmp_certbot_account`
holds certbot's `accounts/` folder, sealed whole (its private key signs every ACME request).
Each change NOTIFYs `llmp_site`, which every certd listens on (`shared.pg.site`).

Sealing: AES-256-GCM with a key derived (HKDF-SHA256) from JWT_SECRET, which every replica
shares already (an admin's session is good on each) and the database never holds; the lineage's
name is authenticated with its key, so a sealed key cannot be moved to another lineage. Whoever
reads the database without JWT_SECRET reads no private key; nothing here logs one.
"""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.certd.certs import LineageFiles
from services.certd.share import ShareError
from shared.pg.transactions import Transactions

_ACCOUNT = b"certbot account"


def sealing_key(secret: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"llmp certificate keys"
    ).derive(secret.encode())


def seal(key: bytes, data: bytes, bound_to: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, data, bound_to)


def unseal(key: bytes, sealed: bytes, bound_to: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], bound_to)
    except (InvalidTag, ValueError) as exc:
        raise ShareError(
            "a shared private key does not unseal: is JWT_SECRET the same on every replica?"
        ) from exc


class PgShare:
    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self._key = sealing_key(secret)
        self._transaction = Transactions(
            url, "llmp-certd-share", ShareError, "certificate database"
        )

    def publish(self, lineages: list[LineageFiles], account: dict[str, bytes]) -> list[str]:
        written = []
        with self._transaction() as conn:
            shared = dict(
                conn.execute("SELECT name, fingerprint FROM llmp_certificates").fetchall()
            )
            for files in lineages:
                fingerprint = files.fingerprint
                if shared.get(files.name) == fingerprint:
                    continue
                conn.execute(
                    "INSERT INTO llmp_certificates (name, fingerprint, version, cert, chain,"
                    " fullchain, privkey_sealed, renewal, config_dir)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint,"
                    " version = excluded.version, cert = excluded.cert, chain = excluded.chain,"
                    " fullchain = excluded.fullchain, privkey_sealed = excluded.privkey_sealed,"
                    " renewal = excluded.renewal, config_dir = excluded.config_dir,"
                    " updated_at = now()",
                    (
                        files.name,
                        fingerprint,
                        files.version,
                        files.pems["cert"],
                        files.pems["chain"],
                        files.pems["fullchain"],
                        seal(self._key, files.pems["privkey"], files.name.encode()),
                        files.renewal,
                        files.config_dir,
                    ),
                )
                written.append(files.name)
            if account:
                row = conn.execute("SELECT sealed FROM llmp_certbot_account").fetchone()
                if row is None or _account(unseal(self._key, row[0], _ACCOUNT)) != account:
                    sealed = seal(self._key, _account_bytes(account), _ACCOUNT)
                    conn.execute(
                        "INSERT INTO llmp_certbot_account VALUES (true, %s)"
                        " ON CONFLICT (one) DO UPDATE SET sealed = excluded.sealed",
                        (sealed,),
                    )
        return written

    def fetch(self) -> tuple[list[LineageFiles], dict[str, bytes]]:
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT name, version, cert, chain, fullchain, privkey_sealed, renewal,"
                " config_dir FROM llmp_certificates ORDER BY name"
            ).fetchall()
            account_row = conn.execute("SELECT sealed FROM llmp_certbot_account").fetchone()
        lineages = [
            LineageFiles(
                name=name,
                version=version,
                pems={
                    "cert": bytes(cert),
                    "chain": bytes(chain),
                    "fullchain": bytes(fullchain),
                    "privkey": unseal(self._key, bytes(sealed), name.encode()),
                },
                renewal=renewal,
                config_dir=config_dir,
            )
            for name, version, cert, chain, fullchain, sealed, renewal, config_dir in rows
        ]
        account = (
            _account(unseal(self._key, bytes(account_row[0]), _ACCOUNT)) if account_row else {}
        )
        return lineages, account


def _account_bytes(account: dict[str, bytes]) -> bytes:
    return json.dumps({path: data.decode() for path, data in sorted(account.items())}).encode()


def _account(data: bytes) -> dict[str, bytes]:
    raw = json.loads(data)
    return {path: text.encode() for path, text in raw.items()}
