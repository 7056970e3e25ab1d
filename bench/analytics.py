"""`python -m bench.analytics`: every analytics route of the real api against a large database.

It builds `var/bench-analytics/<rows>/data/analytics.db` once (kept between runs): `--rows`
requests over 90 days from 50 keys, four models on two upstreams, about 4% failures, made by
SQL in SQLite itself (a million rows in seconds), then indexed and given its rollups the way an
older database is upgraded (`shared/rollups.backfill_step`, timed). Then it starts the api
(`python -m services.api`, one process) on that folder, logs in, and times each route several
times through HTTP, printing the median and the slowest, the answer's size, and the api's
resident memory before and after (its peak, VmHWM).

With `--database-url`, the api reads PostgreSQL instead (DATABASE_URL, an empty database or one
this bench filled before with as many rows): the same rows are copied into `llmp_requests` (COPY,
its day partitions made first, each row queued for the rollups by the table's trigger), the keys
into `llmp_keys`, and the rows are folded into the rollups by the leader's job
(`shared.pg.rollups.fold`, timed), as a database moved in from one box is. The database is kept
between runs (table `llmp_bench` says what it holds).

    python -m bench.analytics [--rows 10000000] [--repeat 5] [--json out.json]
        [--database-url postgresql:///llmp?host=/run/postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

from bench.procs import Child, cpu_seconds, free_port
from shared import analytics, rollups
from shared.analytics import RequestRow
from shared.apikeys import ApiKey, write_keys
from shared.prices import Price, Prices, write_prices

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench-analytics"
KEYS = 50
DAYS = 90
ADMIN = ("admin", "bench-password-long-enough")
BUDGET_MS = 300.0

MODELS = (
    ("llama3:8b", "http://gpu1:8000", 50),
    ("qwen2.5:14b", "http://gpu2:8000", 30),
    ("llama3:70b", "http://gpu2:8000", 15),
    ("mistral:7b", "http://gpu1:8000", 5),
)


def key_id(index: int) -> str:
    return f"{(index * 2654435761) % 2**32:08x}{index:024d}"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _generate(db: sqlite3.Connection, rows: int, end_ms: int) -> None:
    """`rows` requests spread evenly over DAYS days before `end_ms`, in start order."""
    span = DAYS * 86400_000
    start = end_ms - span
    step = span / rows
    model_case = "CASE " + " ".join(
        f"WHEN m < {sum(w for _, _, w in MODELS[: i + 1])} THEN '{name}'"
        for i, (name, _, _) in enumerate(MODELS)
    )
    upstream_case = "CASE " + " ".join(
        f"WHEN m < {sum(w for _, _, w in MODELS[: i + 1])} THEN '{url}'"
        for i, (_, url, _) in enumerate(MODELS)
    )
    key_case = " || ".join(["printf('%08x', (k * 2654435761) % 4294967296)", "printf('%024d', k)"])
    chunk = 500_000
    for first in range(0, rows, chunk):
        last = min(rows, first + chunk) - 1
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                f"""
                WITH RECURSIVE n(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM n
                                        WHERE i < {last}),
                r AS MATERIALIZED (SELECT i, abs(random()) % {KEYS} AS k, abs(random()) % 100 AS m,
                             abs(random()) % 1000 AS s, abs(random()) % 100 AS p,
                             50 + abs(random()) % 600 AS ttfb, 20 + abs(random()) % 900 AS ct,
                             30 + abs(random()) % 60 AS speed, abs(random()) % 2000 AS pt
                      FROM n),
                v AS (SELECT i, k, m, p, ttfb, ct, speed, pt,
                             CAST({start} + i * {step} AS INTEGER) AS start_ms,
                             CASE WHEN s < 960 THEN 200 WHEN s < 975 THEN 429
                                  WHEN s < 985 THEN 500 WHEN s < 990 THEN 502
                                  WHEN s < 995 THEN 400 ELSE 0 END AS status
                      FROM r)
                INSERT INTO requests (request_id, key_id, username, start_ms, end_ms, status,
                    method, path, model, upstream, stream, ttfb_ms, prompt_tokens,
                    completion_tokens, bytes_in, bytes_out, error, queue_ms, usage_estimated)
                SELECT printf('%010x%06x', 48879, i), {key_case}, 'user' || k, start_ms,
                    CASE WHEN status = 200 THEN start_ms + ttfb + ct * 1000 / speed END,
                    status, 'POST',
                    CASE WHEN p < 90 THEN '/v1/chat/completions' WHEN p < 95 THEN '/v1/embeddings'
                         ELSE '/v1/completions' END,
                    {model_case} END, {upstream_case} END,
                    CASE WHEN p < 70 THEN 1 ELSE 0 END,
                    CASE WHEN status IN (200, 500, 502) THEN ttfb END,
                    CASE WHEN status = 200 THEN pt END, CASE WHEN status = 200 THEN ct END,
                    pt * 4, CASE WHEN status = 200 THEN ct * 6 ELSE 120 END,
                    CASE WHEN status = 200 THEN NULL WHEN status = 0 THEN 'client disconnected'
                         ELSE 'error' END,
                    NULL, 0
                FROM v
                """
            )
        _log(f"  {last + 1:,} rows")


def load_postgres(url: str, data: Path, rows: int, keys: list[ApiKey]) -> dict[str, Any]:
    """The rows of `data/analytics.db` and the keys into the (empty) database at `url`, then the
    rollups folded: what it took. Done once; the timing is kept in the database."""
    import psycopg

    from shared.analytics import COLUMNS
    from shared.pg import rollups as pg_rollups
    from shared.pg.keys import PgKeyAdmin
    from shared.pg.schema import migrate
    from shared.pg.usage import DAY_MS, write_rows

    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS llmp_bench (rows bigint, timing jsonb)")
        found = conn.execute("SELECT rows, timing FROM llmp_bench").fetchone()
        if found is not None:
            if found[0] != rows:
                raise SystemExit(f"{url} holds a bench of {found[0]:,} rows: use an empty one")
            return dict(found[1])
        PgKeyAdmin(url).replace_all(keys)
        source = sqlite3.connect(f"file:{data / 'analytics.db'}?mode=ro", uri=True)
        first, last = source.execute("SELECT MIN(start_ms), MAX(start_ms) FROM requests").fetchone()
        days: set[int] = set()
        # One row per day first: write_rows makes each day's partition as the proxy would.
        probe = RequestRow("bench-probe", key_id(0), "user0", 0)
        for day in range(first // DAY_MS, last // DAY_MS + 1):
            probe.start_ms = day * DAY_MS
            write_rows(conn, [probe], days)
        conn.execute("DELETE FROM llmp_requests WHERE request_id = 'bench-probe'")
        conn.execute("DELETE FROM llmp_rollup_queue")
        started = time.perf_counter()
        _log(f"copying {rows:,} rows into PostgreSQL")
        names = ", ".join(COLUMNS)
        with conn.cursor() as cur, cur.copy(f"COPY llmp_requests ({names}) FROM STDIN") as copy:
            for n, row in enumerate(
                source.execute(f"SELECT {names} FROM requests ORDER BY id"), start=1
            ):
                copy.write_row(row)
                if n % 500_000 == 0:
                    _log(f"  {n:,} rows")
        source.close()
        queued = time.perf_counter()  # by the trigger, as the rows were copied
        _log("rollups (the leader's folds)")
        while pg_rollups.fold(conn, 200_000):
            _log(f"  {pg_rollups.queued(conn):,} rows left")
        conn.execute("ANALYZE")
        folded = time.perf_counter()
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        timing = {
            "rows": rows,
            "copy_s": round(queued - started, 1),
            "fold_s": round(folded - queued, 1),
            "fold_rows_per_s": round(rows / (folded - queued)),
            "size_mb": round((size[0] if size else 0) / 2**20),
        }
        conn.execute("INSERT INTO llmp_bench VALUES (%s, %s)", (rows, json.dumps(timing)))
        _log(json.dumps(timing))
        return timing


def build(rows: int) -> Path:
    """The database with `rows` requests, built once: the generated rows (kept as soon as they
    are made), then the indexes and rollups that an upgrade gives them."""
    folder = VAR / str(rows) / "data"
    path = folder / "analytics.db"
    done, generated = folder / "built", folder / "generated"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if not generated.exists():
        path.unlink(missing_ok=True)
        end_ms = int(time.time() * 1000) // 3600_000 * 3600_000
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.executescript(analytics._SCHEMA.split("CREATE INDEX")[0])
        started = time.perf_counter()
        _log(f"generating {rows:,} rows")
        _generate(db, rows, end_ms)
        db.close()
        timing = {"end_ms": end_ms, "generate_s": round(time.perf_counter() - started, 1)}
        generated.write_text(json.dumps(timing))
    timing = json.loads(generated.read_text())
    started = time.perf_counter()
    _log("indexes (the upgrade opens the database)")
    db = analytics.connect(path)
    indexed = time.perf_counter()
    _log("rollups (the upgrade's backfill)")
    while left := rollups.backfill_step(db, batch=200_000):
        _log(f"  {left:,} rows left")
    db.execute("ANALYZE")
    db.close()
    built = time.perf_counter()
    timing |= {
        "rows": rows,
        "indexes_s": round(indexed - started, 1),
        "rollups_s": round(built - indexed, 1),
        "size_mb": round(path.stat().st_size / 2**20),
    }
    _log(json.dumps(timing))
    done.write_text(json.dumps(timing))
    return folder


class Admin:
    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def login(self) -> None:
        body = json.dumps({"username": ADMIN[0], "password": ADMIN[1]}).encode()
        request = urllib.request.Request(
            self.base + "/auth/login", body, {"Content-Type": "application/json"}
        )
        self.opener.open(request, timeout=30).read()

    def get(self, path: str, params: dict[str, Any] | None = None) -> tuple[float, bytes]:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        request = urllib.request.Request(self.base + path + query)
        started = time.perf_counter()
        with self.opener.open(request, timeout=120) as answer:
            body = answer.read()
        return (time.perf_counter() - started) * 1000, body

    def first_byte(self, path: str) -> tuple[float, bytes]:
        """The time to the answer's first byte (then the rest is read, not timed)."""
        request = urllib.request.Request(self.base + path)
        started = time.perf_counter()
        with self.opener.open(request, timeout=120) as answer:
            first = answer.read(1)
            ms = (time.perf_counter() - started) * 1000
            return ms, first + answer.read()


def _rss(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) // 1024
    return fields


def routes(admin: Admin, now: int) -> dict[str, Callable[[], tuple[float, bytes]]]:
    day = 86400_000
    one = key_id(7)
    window7 = {"startDate": now - 7 * day, "endDate": now}
    window30 = {"startDate": now - 30 * day, "endDate": now}
    window90 = {"startDate": now - 90 * day, "endDate": now}
    _, first = admin.get("/api/analytics/requests", {"limit": 50})
    cursor = json.loads(first)["nextCursor"]
    request_id = json.loads(first)["requests"][0]["requestId"]
    _, by_latency = admin.get("/api/analytics/requests", {**window90, "sort": "latency"})
    sorted_cursor = json.loads(by_latency)["nextCursor"]
    _, records = admin.get(f"/api/analytics/{one}")
    records_cursor = json.loads(records)["nextCursor"]

    def deep_page() -> tuple[float, bytes]:  # the 20th page of 50
        total, page = 0.0, {"nextCursor": None}
        params: dict[str, Any] = {"limit": 50}
        for _ in range(20):
            ms, body = admin.get("/api/analytics/requests", params)
            total += ms
            page = json.loads(body)
            params["cursor"] = page["nextCursor"]
        return total / 20, body

    a = "/api/analytics"
    table: dict[str, Callable[[], tuple[float, bytes]]] = {
        "summary, all keys, 7 days by hour": lambda: admin.get(a + "/summary", window7),
        "summary, all keys, 30 days by day": lambda: admin.get(
            a + "/summary", {**window30, "bucket": "day"}
        ),
        "summary, all keys, 90 days by day": lambda: admin.get(
            a + "/summary", {**window90, "bucket": "day"}
        ),
        "summary, all keys, 30 days by hour": lambda: admin.get(a + "/summary", window30),
        "summary, one key, 7 days by hour": lambda: admin.get(
            a + "/summary", {**window7, "keyId": one}
        ),
        "summary, one key, 90 days by day": lambda: admin.get(
            a + "/summary", {**window90, "keyId": one, "bucket": "day"}
        ),
        "breakdown by key, 30 days": lambda: admin.get(a + "/breakdown", window30),
        "breakdown by key, 90 days": lambda: admin.get(a + "/breakdown", window90),
        "breakdown by model, 90 days": lambda: admin.get(
            a + "/breakdown", {**window90, "by": "model"}
        ),
        "breakdown by upstream, 90 days": lambda: admin.get(
            a + "/breakdown", {**window90, "by": "upstream"}
        ),
        "breakdown by model, one key, 90 days": lambda: admin.get(
            a + "/breakdown", {**window90, "by": "model", "keyId": one}
        ),
        "spend by key per month, 90 days": lambda: admin.get(
            a + "/spend", {**window90, "period": "month"}
        ),
        "spend by model per day, 30 days": lambda: admin.get(
            a + "/spend", {**window30, "by": "model"}
        ),
        "request log, first page": lambda: admin.get(a + "/requests"),
        "request log, next page": lambda: admin.get(a + "/requests", {"cursor": cursor}),
        "request log, 20th page (mean of 20)": deep_page,
        "request log, one key": lambda: admin.get(a + "/requests", {"keyId": one}),
        "request log, one model": lambda: admin.get(a + "/requests", {"model": "mistral:7b"}),
        "request log, server errors": lambda: admin.get(
            a + "/requests", {"outcome": "server_error"}
        ),
        "request log, status 400, one key": lambda: admin.get(
            a + "/requests", {"status": 400, "keyId": one}
        ),
        "request log, not streamed, 90 days": lambda: admin.get(
            a + "/requests", {**window90, "stream": "false"}
        ),
        "request log, oldest first, 90 days": lambda: admin.get(
            a + "/requests", {**window90, "order": "asc"}
        ),
        "request log by latency, 90 days": lambda: admin.get(
            a + "/requests", {**window90, "sort": "latency"}
        ),
        "request log by latency, next page": lambda: admin.get(
            a + "/requests", {**window90, "sort": "latency", "cursor": sorted_cursor}
        ),
        "request log by TTFB, fastest first, 7 days": lambda: admin.get(
            a + "/requests", {**window7, "sort": "ttfb", "order": "asc"}
        ),
        "request log by tokens, one key, 90 days": lambda: admin.get(
            a + "/requests", {**window90, "sort": "tokens", "keyId": one}
        ),
        "request log by tokens, one model, 7 days": lambda: admin.get(
            a + "/requests", {**window7, "sort": "tokens", "model": "mistral:7b"}
        ),
        "request log by status, 90 days": lambda: admin.get(
            a + "/requests", {**window90, "sort": "status"}
        ),
        "request log by latency, server errors, 7 days": lambda: admin.get(
            a + "/requests", {**window7, "sort": "latency", "outcome": "server_error"}
        ),
        "request log by latency, status 400, one key, 90 d": lambda: admin.get(
            a + "/requests", {**window90, "sort": "latency", "status": 400, "keyId": one}
        ),
        "request log by TTFB, one key, 7 days": lambda: admin.get(
            a + "/requests", {**window7, "sort": "ttfb", "keyId": one}
        ),
        "request by id": lambda: admin.get(f"{a}/requests/{request_id}"),
        "records of a key (original route, 5,000)": lambda: admin.get(f"{a}/{one}"),
        "records of a key, next 5,000": lambda: admin.get(f"{a}/{one}", {"cursor": records_cursor}),
        "CSV of a key, 7 days: first byte": lambda: admin.first_byte(f"{a}/{one}/csv"),
        "CSV of a key, 7 days: whole": lambda: admin.get(f"{a}/{one}/csv"),
        "key list": lambda: admin.get("/api/keys"),
    }
    if records_cursor is None:  # fewer than 5,000 in 7 days (a database of fewer rows)
        del table["records of a key, next 5,000"]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--database-url", help="read PostgreSQL (filled once from the rows)")
    args = parser.parse_args(argv)
    data = build(args.rows)
    built = json.loads((data / "built").read_text())
    # Indexes and rollups added since it was built, as the proxy's upkeep adds them.
    db = analytics.connect(data / "analytics.db")
    while rollups.backfill_step(db):
        pass
    db.close()
    keys = [
        ApiKey(key_id(i), f"user{i}", "sk-" + f"{i:064x}", "2026-01-01T00:00:00.000Z")
        for i in range(KEYS)
    ]
    write_keys(data / "apikeys.json", keys)
    if args.database_url:
        built = {**built, "postgresql": load_postgres(args.database_url, data, args.rows, keys)}
    write_prices(
        data / "prices.json",
        Prices(
            "USD",
            {name: Price(0.2 * (i + 1), 0.6 * (i + 1)) for i, (name, _, _) in enumerate(MODELS)},
        ),
    )
    port = free_port()
    env = {
        **os.environ,
        "ENV_FILE": str(data.parent / "env"),
        "DATA_DIR": str(data),
        "STATE_DIR": str(data.parent / "state"),
        "API_PORT": str(port),
        "AUTH_USERNAME": ADMIN[0],
        "AUTH_PASSWORD": ADMIN[1],
        "JWT_SECRET": "bench-secret-" + "x" * 40,
        "LOG_LEVEL": "WARNING",
        **({"DATABASE_URL": args.database_url} if args.database_url else {}),
    }
    (data.parent / "env").write_text("")
    api = Child(
        "api", [sys.executable, "-m", "services.api"], data.parent / "api.log", cwd=ROOT, env=env
    )
    results: dict[str, Any] = {"database": built, "routes": {}}
    try:
        api.wait_http(f"http://127.0.0.1:{port}/", timeout=60)
        admin = Admin(f"http://127.0.0.1:{port}")
        admin.login()
        results["rss_start_mb"] = _rss(api.pid)
        table = routes(admin, built["end_ms"])
        # Wall time is what a user waits; on a machine shared with other work it includes the
        # waits for a core, so the api's own CPU time per call is shown beside it.
        print(f"{'route':48} {'median ms':>10} {'max ms':>8} {'cpu ms':>8} {'KB':>8}")
        for name, call in table.items():
            call()  # warm: the first read of a page of the database
            times, cpu, size = [], [], 0
            for _ in range(args.repeat):
                before = cpu_seconds([api.pid])[api.pid]
                ms, body = call()
                cpu.append((cpu_seconds([api.pid])[api.pid] - before) * 1000)
                times.append(ms)
                size = len(body)
            median, cpu_ms = statistics.median(times), statistics.median(cpu)
            flag = "" if median < BUDGET_MS else "  over budget"
            print(
                f"{name:48} {median:10.1f} {max(times):8.1f} {cpu_ms:8.0f} {size / 1024:8.1f}{flag}"
            )
            results["routes"][name] = {
                "median_ms": median,
                "max_ms": max(times),
                "cpu_ms": cpu_ms,
                "bytes": size,
            }
        results["rss_end_mb"] = _rss(api.pid)
    finally:
        api.stop()
    print(f"api memory: {results['rss_start_mb']} at start, {results['rss_end_mb']} at the end")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
