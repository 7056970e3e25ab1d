"""Where llmp keeps what its programs share, chosen by one setting: DATABASE_URL.

Unset, everything is embedded in data/ (the key file, SQLite), as on one box; nothing of
PostgreSQL is even imported. Set, keys, usage, the site and certd's reports live in PostgreSQL
(`shared.pg`), shared by every replica. Each program asks here for the side of the store it uses.
"""

from __future__ import annotations

from shared.keyfile import KeyFile
from shared.keystore import KeyAdmin, KeyFeed
from shared.leader import AlwaysLeader, Leader
from shared.settings import Settings
from shared.sitestore import SiteStore
from shared.usagelog import UsageLog


def key_admin(settings: Settings) -> KeyAdmin:
    """The keys as the api and the `llmp` command change them."""
    if settings.database_url:
        from shared.pg.keys import PgKeyAdmin

        return PgKeyAdmin(settings.database_url)
    return KeyFile(settings.apikeys_file)


def key_feed(settings: Settings) -> KeyFeed:
    """The keys as a proxy worker serves them."""
    if settings.database_url:
        from shared.pg.keys import PgKeyFeed

        return PgKeyFeed(settings.database_url, settings.data_dir / "apikeys.pg-snapshot.json")
    from shared.keyfile_feed import FileKeyFeed

    return FileKeyFeed(settings.apikeys_file)


def usage_log(settings: Settings) -> UsageLog | None:
    """The usage log in the database; None when it is embedded (the proxy's own `Recorder`,
    which keeps `data/analytics.db` and its rollups)."""
    if not settings.database_url:
        return None
    from shared.pg.usage import PgUsageLog

    return PgUsageLog(
        settings.database_url,
        settings.data_dir / "outbox",
        settings.analytics_retention_days,
        rollup_retention_days=settings.analytics_rollup_retention_days,
        original_csv=settings.data_dir / "analytics",
    )


def site_store(settings: Settings) -> SiteStore:
    """The site and certd's reports (the api writes the one, certd the other)."""
    if settings.database_url:
        from shared.pg.site import PgSite

        return PgSite(settings.database_url, settings.replica)
    from shared.sitefile import SiteFile

    return SiteFile(settings.site_file, settings.certd_status_file)


def leader(settings: Settings, job: str, application_name: str | None = None) -> Leader:
    """The leadership of `job` (one of `shared.leader.JOBS`) for this process: shared by every
    replica through the database, or the one box's own."""
    if settings.database_url:
        from shared.pg.leader import PgLeader

        return PgLeader(settings.database_url, job, application_name)
    return AlwaysLeader(job)
