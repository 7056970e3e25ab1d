"""What the benchmark measures: the mock upstream reached directly, through plain nginx, and
through the full llmp stack, embedded (`llmp`) or as a replica sharing its state through
PostgreSQL (`llmp-pg`: DATABASE_URL to a throwaway cluster, see `start_database`).

A target knows its base URL, the headers a client must send, and which of its processes count as
its cost (`cost_groups`, for CPU per request) and as its workers (for RSS). All of them listen on
127.0.0.1 on ports the kernel picked, and keep their files under the run's temporary folder.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

import psycopg

from bench.procs import Child, cmdline, free_port, tree
from shared.apikeys import load_keys
from shared.pg.keys import PgKeyAdmin
from tests.postgres import Cluster

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "upstream.py"
MODEL = "bench-model"
CHAT_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 50},
    separators=(",", ":"),
)


class Target:
    """The upstream reached directly: no process in between."""

    name = "direct"
    child: Child | None = None

    def __init__(self, port: int, api_key: str = "") -> None:
        self.port, self.api_key = port, api_key

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def cost_groups(self) -> dict[str, list[int]]:
        """Processes whose CPU time is this target's cost, by group: `proxy` is what the target
        adds in front of the upstream (without the nginx in front of it), `nginx` its nginx."""
        return {}

    def workers(self) -> list[int]:
        """The processes that serve requests (their RSS is reported)."""
        return []

    def database_activity(self) -> tuple[int, int] | None:
        """With a database: (usage rows in it, transactions it counted so far), to tell how many
        round trips a request costs; else None."""
        return None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


def start_upstream(workdir: Path, procs: int) -> tuple[Child, Target]:
    """Start the mock upstream (`bench/upstream.py`); return it and the `direct` target."""
    port = free_port()
    child = Child(
        "upstream",
        [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port), "--procs", str(procs)],
        workdir / "upstream.log",
    )
    child.wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    return child, Target(port)


class PlainNginx(Target):
    """nginx alone with `proxy_pass` to the upstream, configured like llmp's nginx for /v1/."""

    name = "nginx"
    child: Child

    def __init__(self, workdir: Path, upstream_port: int) -> None:
        super().__init__(free_port())
        prefix = workdir / "nginx"
        for sub in ("tmp", "logs"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(render_nginx_conf(prefix, self.port, upstream_port))
        self.child = Child(
            "nginx",
            ["nginx", "-e", "stderr", "-c", str(conf), "-p", f"{prefix}/"],
            workdir / "nginx.log",
        )
        self.child.wait_http(self.url("/v1/models"), timeout=10)

    def cost_groups(self) -> dict[str, list[int]]:
        return {"proxy": [p.pid for p in tree(self.child.pid)]}

    def workers(self) -> list[int]:
        return [p.pid for p in tree(self.child.pid) if p.pid != self.child.pid]


def render_nginx_conf(prefix: Path, port: int, upstream_port: int) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
{temp}

    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;

        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


class LlmpStack(Target):
    """`python -m llmp run` (supervisord: nginx, proxy, api, certd) with a fresh data folder."""

    name = "llmp"
    child: Child

    def __init__(
        self,
        workdir: Path,
        upstream_port: int,
        workers: int,
        log_level: str,
        database_url: str | None = None,
        database_pid: int | None = None,
    ) -> None:
        """Embedded (keys in data/apikeys.json, usage in SQLite), or with `database_url` a
        replica: its key put in the database, its usage going there by COPY. `database_pid`:
        the database server's main process, whose tree's CPU is counted as `database`."""
        super().__init__(free_port(), api_key="sk-" + secrets.token_hex(32))
        self.database_url, self.database_pid = database_url, database_pid
        if database_url is not None:
            self.name = "llmp-pg"
        home = workdir / self.name
        env_file = home / "env"
        home.mkdir()
        env_file.write_text("")
        (home / "data").mkdir()
        write_key_file(home / "data" / "apikeys.json", self.api_key)
        extra = {}
        if database_url is not None:
            put_keys_in_database(home / "data" / "apikeys.json", database_url)
            extra["DATABASE_URL"] = database_url
        # Not the caller's DATABASE_URL or REDIS_URL: they would turn `llmp` into a replica.
        inherited = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        environment = {
            **inherited,
            "ENV_FILE": str(env_file),
            "PORT": str(self.port),
            "API_PORT": str(free_port()),
            "PROXY_PORT": str(free_port()),
            "BIND_ADDRESS": "127.0.0.1",
            "DATA_DIR": str(home / "data"),
            "STATE_DIR": str(home / "var"),
            "NGINX_CONF_DIR": str(home / "nginx"),
            # Not used by the benchmark; kept in the temporary folder rather than the checkout.
            "LETSENCRYPT_DIR": str(home / "certs"),
            "CLOUDFLARE_CREDENTIALS": str(home / "cloudflare_credentials"),
            "TARGET_URLS": f"http://127.0.0.1:{upstream_port}",
            "PROXY_WORKERS": str(workers),
            "LOG_LEVEL": log_level,
            **extra,
        }
        self.child = Child(
            self.name,
            [sys.executable, "-m", "llmp", "run"],
            workdir / f"{self.name}.log",
            cwd=REPO,
            env=environment,
            # supervisord stops nginx and the programs, each within its stopwaitsecs (<= 35 s).
            grace=40,
        )
        # Generous: on a loaded machine, starting four Python programs takes half a minute.
        self.child.wait_http(self.url("/healthz"), timeout=120)
        # Healthy is not yet routable: wait until the catalog knows the model.
        self.child.wait_http(
            self.url("/v1/chat/completions"), timeout=60, headers=self.headers(), body=CHAT_BODY
        )

    def cost_groups(self) -> dict[str, list[int]]:
        procs = tree(self.child.pid)
        groups = {
            "proxy": [p.pid for p in procs if p.comm != "nginx"],
            "nginx": [p.pid for p in procs if p.comm == "nginx"],
        }
        if self.database_pid is not None:
            groups["database"] = [p.pid for p in tree(self.database_pid)]
        return groups

    def database_activity(self) -> tuple[int, int] | None:
        """Transactions: every one of every connection to this database, committed or not, as
        PostgreSQL's statistics count them (each backend adds its own at most every second, or
        when it goes idle, so the count lags by a second or two)."""
        if self.database_url is None:
            return None
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            found = conn.execute(
                "SELECT (SELECT count(*) FROM llmp_requests), xact_commit + xact_rollback"
                " FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        if found is None:
            raise RuntimeError("pg_stat_database has no row for the database")
        return int(found[0]), int(found[1])

    def workers(self) -> list[int]:
        """uvicorn's worker processes (the `services.proxy` process itself with one worker)."""
        procs = tree(self.child.pid)
        main = [p.pid for p in procs if "services.proxy" in cmdline(p.pid)]
        spawned = [p.pid for p in procs if p.ppid in main and "spawn_main" in cmdline(p.pid)]
        return spawned or main


def write_key_file(path: Path, key: str) -> None:
    entry = {
        "id": secrets.token_hex(16),
        "username": "bench",
        "key": key,
        "createdAt": "2026-01-01T00:00:00.000Z",
    }
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump({"keys": [entry]}, out)


def start_database() -> tuple[Cluster, str, int]:
    """A throwaway PostgreSQL cluster (the tests' own, `tests/postgres.py`: Debian's server on a
    unix socket in a temporary folder, no TCP port), a new database's URL in it, and the pid of
    its server's main process. The caller removes the cluster."""
    cluster = Cluster()
    try:
        cluster.start()
        url = cluster.new_database()
        # postmaster.pid's first line: the server's main process, parent of every backend.
        pid = int((cluster.data / "postmaster.pid").read_text().split("\n", 1)[0])
        return cluster, url, pid
    except BaseException:
        cluster.remove()
        raise


def put_keys_in_database(key_file: Path, database_url: str) -> None:
    """The key file's keys become the database's key set (what `llmp database import` does)."""
    keys, problem = load_keys(key_file)
    if problem is not None:
        raise RuntimeError(f"{key_file}: {problem}")
    PgKeyAdmin(database_url).replace_all(keys)
