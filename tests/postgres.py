"""Throwaway PostgreSQL clusters for tests: Debian's own server (`postgresql`, installed by
`scripts/system-deps test`), started with initdb and pg_ctl on a unix socket in a temp folder,
with no TCP port at all. PostgreSQL refuses to run as root: as root (CI runs the tests so, in a
fresh container) the cluster runs as `nobody`, with the folders it needs given to it."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg


def server_bin() -> Path:
    """The newest installed server's bin folder."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL's server is missing: run scripts/system-deps test")
    return found[-1].parent


class Cluster:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="llmp-pg-"))
        self.base.chmod(0o755)
        self.data, self.socket_dir = self.base / "data", self.base / "run"
        self.log = self.base / "server.log"
        self.bin = server_bin()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        for folder in (self.data, self.socket_dir):
            folder.mkdir(mode=0o700)
            if self._as:
                os.chown(folder, self._as["user"], self._as["group"])
        if self._as:
            self.log.touch()
            os.chown(self.log, self._as["user"], self._as["group"])
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "llmp",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / program), *args],
            check=True,
            cwd=self.base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **self._as,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://llmp@/{database}?host={self.socket_dir}"

    def start(self) -> None:
        options = f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def new_database(self) -> str:
        """A new empty database's URL."""
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)

    def terminate(self, application_name: str) -> int:
        """Kill the backends of every connection named so; how many are gone. Each is gone
        when this returns, its locks released: without a timeout pg_terminate_backend only
        sends the signal, and a test that went on at once found the lock still held."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (application_name,),
            ).fetchall()
        return sum(1 for (gone,) in rows if gone)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
