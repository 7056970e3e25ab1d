"""The admin's analytics in PostgreSQL: the rollups of `llmp_requests` (`shared.rollups`, the
same columns, levels, grains and queries as the embedded database's), and how they are kept.

Nothing is updated per request, and writers never wait on each other's rows: each statement
that adds rows to `llmp_requests` (a batch of the usage log, an import, whichever version of
llmp wrote it) also appends the columns the rollups read of the rows it added to
`llmp_rollup_queue`, by a trigger, in its transaction. One process, the
leader of the "usage" job (`shared.leader`, `shared.pg.usage`), folds the queue into
`llmp_rollups` after each of its flushes (every half second): one transaction takes up to
FOLD_BATCH rows out of the queue and adds them to every grain and level
(`shared.rollups.add_rows_sql`), reading nothing else: a fold costs the same with ten million
rows in the table as with none. A fold is all or nothing, and two folds
at once would each take other rows (SKIP LOCKED), so a row is in the rollups exactly once. The
leader also drops the rollups' periods older than their retention.

Reading: `run` answers a `shared.rollups.Query` as the embedded database does; PostgreSQL's
sums of bigint are numeric, read back as int (float if fractional) like SQLite's.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.types.numeric import NumericLoader

from shared import rollups
from shared.analytics import SORT_KEYS
from shared.rollups import DIMENSIONS, KEY_MODELS, SUMS, TOKENS_INDEXED, Query, Tables

TABLES = Tables("llmp_requests", "llmp_rollups")
FOLD_BATCH = 50_000


# The columns of a row that the rollups read, kept in the queue until folded.
QUEUED = (
    "key_id, username, start_ms, end_ms, status, model, upstream, stream, ttfb_ms, "
    "prompt_tokens, completion_tokens"
)


def _type(name: str) -> str:
    return "double precision" if name.endswith("_ms") else "bigint"


ROLLUPS_SCHEMA = f"""
CREATE TABLE llmp_rollups (
    grain bigint NOT NULL,
    level integer NOT NULL,
    period_ms bigint NOT NULL,
    key_id text NOT NULL,
    model text NOT NULL,
    upstream text NOT NULL,
    outcome text NOT NULL,
    username text NOT NULL,
    {", ".join(f"{name} {_type(name)} NOT NULL" for name in SUMS)},
    last_ms bigint NOT NULL,
    PRIMARY KEY (grain, level, period_ms, {", ".join(DIMENSIONS)})
);
CREATE INDEX llmp_rollups_key ON llmp_rollups (grain, level, key_id, period_ms);
CREATE INDEX llmp_rollups_tokens ON llmp_rollups ({", ".join(TOKENS_INDEXED)})
    WHERE level = {KEY_MODELS};
CREATE TABLE llmp_rollup_queue (
    seq bigserial PRIMARY KEY,
    key_id text NOT NULL,
    username text NOT NULL,
    start_ms bigint NOT NULL,
    end_ms bigint,
    status integer NOT NULL,
    model text,
    upstream text,
    stream boolean NOT NULL,
    ttfb_ms double precision,
    prompt_tokens integer,
    completion_tokens integer
);
INSERT INTO llmp_rollup_queue ({QUEUED})
    SELECT {QUEUED} FROM llmp_requests ORDER BY start_ms;
CREATE FUNCTION llmp_requests_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO llmp_rollup_queue ({QUEUED}) SELECT {QUEUED} FROM added;
    RETURN NULL;
END $$;
CREATE TRIGGER llmp_requests_added AFTER INSERT ON llmp_requests
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION llmp_requests_added();
"""

# The request log's indexes (as shared/analytics.py's for the embedded database): by the id a
# client saw, by model, the failures alone, and one per order but time.
LOG_INDEXES = """
CREATE INDEX llmp_requests_request_id ON llmp_requests (request_id);
CREATE INDEX llmp_requests_model_start ON llmp_requests (model, start_ms);
CREATE INDEX llmp_requests_failed_start ON llmp_requests (start_ms) WHERE end_ms IS NULL;
""" + "".join(
    f"CREATE INDEX llmp_requests_{name}_start ON llmp_requests (({sql}), start_ms);\n"
    for name, sql in SORT_KEYS.items()
    if name != "time"
)

_FOLD = rollups.add_rows_sql(
    rows=(
        "queued AS MATERIALIZED (DELETE FROM llmp_rollup_queue WHERE seq IN ("
        "SELECT seq FROM llmp_rollup_queue ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED) "
        f"RETURNING {QUEUED}), "
        f"bucketed AS MATERIALIZED ({rollups.bucketed('queued', 'queued')})"
    ),
    table=TABLES.rollups,
    weeks_pending=False,
)

_PLACEHOLDER = re.compile(r"\?")


def dialect(statement: str) -> str:
    """A statement of `shared.rollups`' dialect (`?`, a bare `%`) as psycopg's (`%s`, `%%`).
    The statements are llmp's own: no `?` or `%` in a quoted literal."""
    return _PLACEHOLDER.sub("%s", statement.replace("%", "%%"))


FOLD = dialect(_FOLD)


def fold(conn: psycopg.Connection[Any], batch: int = FOLD_BATCH) -> int:
    """Fold up to `batch` queued rows into the rollups, in one transaction; how many were
    waiting, up to `batch`."""
    with conn.transaction():
        taken = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM llmp_rollup_queue LIMIT %s) AS q", (batch,)
        ).fetchone()
        if not taken or not taken[0]:
            return 0
        conn.execute(FOLD, (batch,))
        return int(taken[0])


def queued(conn: psycopg.Connection[Any]) -> int:
    """How many rows wait to be folded."""
    row = conn.execute("SELECT count(*) FROM llmp_rollup_queue").fetchone()
    return int(row[0]) if row else 0


def prune(conn: psycopg.Connection[Any], before_ms: int) -> int:
    """Delete the periods that started before `before_ms`; how many rows."""
    with conn.transaction():
        return conn.execute("DELETE FROM llmp_rollups WHERE period_ms < %s", (before_ms,)).rowcount


class _Number(Loader):
    """numeric as SQLite answers a sum: int when whole, else float."""

    def load(self, data: Any) -> int | float:
        value = _NUMERIC.load(data)
        assert isinstance(value, Decimal)
        return int(value) if value == value.to_integral_value() else float(value)


_NUMERIC = NumericLoader(0)


def numbers_as_sqlite(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("numeric", _Number)


def run(conn: psycopg.Connection[Any], query: Query) -> list[dict[str, Any]]:
    """The groups of `query`, as `shared.rollups.Query.run` gives them."""
    statement, args = query.sql(True, TABLES)
    cursor = conn.execute(dialect(statement).encode(), args)
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor]
