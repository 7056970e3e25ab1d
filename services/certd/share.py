"""Certificates shared by replicas: the leader's certd publishes what certbot made (every
lineage's current files, certbot's ACME account), and every other replica's certd fetches
them and writes them into its own `LETSENCRYPT_DIR` (`services.certd.certs.write_files`), then
tests, reloads and verifies nginx as after a certbot run of its own.

On one box there is nothing to share (certd runs certbot itself: no share at all); with
DATABASE_URL, PostgreSQL (`services.certd.pgshare.PgShare`). Private keys never leave a replica
in the clear: the implementation keeps them sealed.
"""

from __future__ import annotations

from typing import Protocol

from services.certd.certs import LineageFiles


class ShareError(Exception):
    """The share cannot be read or written (the database away, a key that does not unseal)."""


class CertificateShare(Protocol):
    def publish(self, lineages: list[LineageFiles], account: dict[str, bytes]) -> list[str]:
        """Make these the shared lineages (those that differ from what is shared) and account;
        the names of the lineages written. Raises ShareError."""

    def fetch(self) -> tuple[list[LineageFiles], dict[str, bytes]]:
        """Every shared lineage, and the account. Raises ShareError."""


def certificate_share(database_url: str, secret: str) -> CertificateShare | None:
    """The share of replicas using `database_url`; None on one box (no DATABASE_URL)."""
    if not database_url:
        return None
    from services.certd.pgshare import PgShare

    return PgShare(database_url, secret)
