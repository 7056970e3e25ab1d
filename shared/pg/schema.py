"""llmp's tables in PostgreSQL, and the migrations that make them.

`migrate()` brings the database up to date: any number of replicas may call it at once, as they
start. It runs in one transaction under an advisory lock, so the first applies what is missing
(all of it or none) and records the version reached; the others wait, then find nothing left to
do. Migrations are only ever added at the end, never edited.

Keys: one row per key, its whole form (`shared.apikeys.ApiKey.to_json`) in `doc`, its secret's
SHA-256 in `digest` (the secret itself is looked up by digest, never compared in the database).
Every statement that changes them bumps `llmp_keys_version` and NOTIFYs `llmp_keys` with the
new version: the proxies LISTEN, and compare versions as a backstop.

Usage: one row per request, partitioned by day of `start_ms` (UTC) so that retention drops
whole partitions instead of deleting rows; `(start_ms, request_id)` is unique, so a batch
written twice (an answer lost, a batch sent again from the outbox) adds nothing the second time.
Each row added is also queued for the rollups, by a trigger (`shared.pg.rollups`).

Site: one row, the whole site in `doc` and its generation; each change NOTIFYs `llmp_site` with
the new generation (every replica's certd LISTENs). certd's reports: one row per replica, with
when it last said it was alive (`seen_at`). Certificates: each lineage's current version and
certbot's account, written by the leader's certd (a change NOTIFYs `llmp_site` too).
The original's CSV files imported into the usage log: one row per file, by name.
"""

from __future__ import annotations

from typing import Any

import psycopg

from shared.pg.rollups import LOG_INDEXES, ROLLUPS_SCHEMA

# pg_advisory_lock keys: "llmp" in ASCII, then a number per purpose.
LOCK_MIGRATE = 0x6C6C6D70_0001
LOCK_KEYS = 0x6C6C6D70_0002
LOCK_PARTITIONS = 0x6C6C6D70_0003

KEYS_CHANNEL = "llmp_keys"
SITE_CHANNEL = "llmp_site"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE llmp_keys (
        id text PRIMARY KEY,
        position bigserial NOT NULL,
        username text NOT NULL,
        digest bytea NOT NULL UNIQUE,
        doc jsonb NOT NULL
    );
    CREATE INDEX llmp_keys_username ON llmp_keys (username);
    CREATE TABLE llmp_keys_version (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        version bigint NOT NULL
    );
    INSERT INTO llmp_keys_version VALUES (true, 0);
    CREATE FUNCTION llmp_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        new_version bigint;
    BEGIN
        UPDATE llmp_keys_version SET version = version + 1 RETURNING version INTO new_version;
        PERFORM pg_notify('llmp_keys', new_version::text);
        RETURN NULL;
    END $$;
    CREATE TRIGGER llmp_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON llmp_keys
        FOR EACH STATEMENT EXECUTE FUNCTION llmp_keys_changed();
    """,
    """
    CREATE TABLE llmp_requests (
        request_id text NOT NULL,
        key_id text NOT NULL,
        username text NOT NULL,
        start_ms bigint NOT NULL,
        end_ms bigint,
        status integer NOT NULL,
        method text NOT NULL,
        path text NOT NULL,
        model text,
        upstream text,
        stream boolean NOT NULL,
        ttfb_ms double precision,
        prompt_tokens integer,
        completion_tokens integer,
        bytes_in bigint NOT NULL,
        bytes_out bigint NOT NULL,
        error text,
        queue_ms double precision,
        usage_estimated boolean NOT NULL DEFAULT false,
        end_user text,
        UNIQUE (start_ms, request_id)
    ) PARTITION BY RANGE (start_ms);
    CREATE INDEX llmp_requests_key_start ON llmp_requests (key_id, start_ms);
    """,
    # The model name the upstream was asked for, when an alias chose it (shared.analytics).
    "ALTER TABLE llmp_requests ADD COLUMN upstream_model text",
    # The site (shared.site.Site, whole in `doc`) and each replica's certd's report.
    """
    CREATE TABLE llmp_site (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        generation bigint NOT NULL,
        doc jsonb NOT NULL
    );
    CREATE FUNCTION llmp_site_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('llmp_site', NEW.generation::text);
        RETURN NULL;
    END $$;
    CREATE TRIGGER llmp_site_changed AFTER INSERT OR UPDATE ON llmp_site
        FOR EACH ROW EXECUTE FUNCTION llmp_site_changed();
    CREATE TABLE llmp_certd_status (
        replica text PRIMARY KEY,
        doc jsonb NOT NULL,
        seen_at timestamptz NOT NULL DEFAULT now()
    );
    """,
    # Certificates and certbot's account, as the leader's certd obtained them (private keys
    # sealed: services/certd/pgshare.py).
    """
    CREATE TABLE llmp_certificates (
        name text PRIMARY KEY,
        fingerprint bytea NOT NULL,
        version integer NOT NULL,
        cert bytea NOT NULL,
        chain bytea NOT NULL,
        fullchain bytea NOT NULL,
        privkey_sealed bytea NOT NULL,
        renewal text NOT NULL,
        config_dir text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE llmp_certbot_account (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        sealed bytea NOT NULL
    );
    CREATE FUNCTION llmp_certificates_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('llmp_site', 'certificates');
        RETURN NULL;
    END $$;
    CREATE TRIGGER llmp_certificates_changed AFTER INSERT OR UPDATE OR DELETE
        ON llmp_certificates FOR EACH STATEMENT EXECUTE FUNCTION llmp_certificates_changed();
    """,
    # The admin's analytics (shared.pg.rollups): a row id for the request log's cursors, its
    # indexes, the rollups, and the queue of rows not in them yet (all rows so far, at first).
    "ALTER TABLE llmp_requests ADD COLUMN id bigserial;\n" + LOG_INDEXES + ROLLUPS_SCHEMA,
    # The original llm-proxy's CSV files imported (shared.pg.usage), one row per file.
    """
    CREATE TABLE llmp_csv_imports (
        name text PRIMARY KEY,
        rows integer NOT NULL,
        imported_at timestamptz NOT NULL DEFAULT now()
    );
    """,
)


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply the migrations `conn`'s database lacks; the number applied."""
    applied = 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_MIGRATE,))
        conn.execute("CREATE TABLE IF NOT EXISTS llmp_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM llmp_schema").fetchone()
        done = row[0] if row and row[0] is not None else 0
        for number, sql in enumerate(MIGRATIONS[done:], start=done + 1):
            with conn.transaction():  # a savepoint: a failed migration leaves none of itself
                conn.execute(sql.encode())
                conn.execute("INSERT INTO llmp_schema VALUES (%s)", (number,))
            applied += 1
    return applied
