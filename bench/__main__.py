"""`python -m bench`: the mock upstream direct, behind plain nginx and behind llmp, measured in
one interleaved run; prints a table and writes `bench/results/<timestamp>.json`.

Everything runs on 127.0.0.1 under a temporary folder. Every child process is stopped on the way
out, also on Ctrl-C, SIGTERM or an error. A target that fails to start is reported with the end
of its output, the others are still measured, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from bench import report
from bench.load import LoadFailed
from bench.procs import ChildFailed
from bench.suite import Options, TargetRound, log, run_round, warm_up
from bench.targets import LlmpStack, PlainNginx, Target, start_database, start_upstream

TARGETS = ("direct", "nginx", "llmp")
# Also measured when asked for: llmp as a replica on PostgreSQL (DATABASE_URL), to be compared
# with `llmp`, the embedded mode, in the same run.
OPTIONAL_TARGETS = ("llmp-pg",)
ROUNDS = 2  # the second shows whether the workers' memory grows
# The database's statistics count a backend's transactions at most a second late, and the usage
# log's last batch is written within half a second: wait that long before the last count.
STATS_LAG = 2.0
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--duration", type=int, help="seconds of each load (default 5, or 1 with --quick)"
    )
    parser.add_argument("--workers", type=int, default=2, help="llmp's PROXY_WORKERS (default 2)")
    parser.add_argument(
        "--only",
        default=",".join(TARGETS),
        help=f"targets to measure, comma-separated, of {','.join(TARGETS + OPTIONAL_TARGETS)}"
        f" (default {','.join(TARGETS)})",
    )
    parser.add_argument(
        "--upstream-procs", type=int, default=1, help="processes of the mock upstream (default 1)"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="llmp's LOG_LEVEL (default INFO, as deployed: one line per request)",
    )
    parser.add_argument(
        "--crowd", type=int, default=1000, help="slow streams open at once (default 1000)"
    )
    parser.add_argument("--quick", action="store_true", help="short loads, for a smoke check")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    if not args.only or not set(args.only) <= set(TARGETS + OPTIONAL_TARGETS):
        parser.error(f"--only takes some of {', '.join(TARGETS + OPTIONAL_TARGETS)}")
    if args.duration is None:
        args.duration = 1 if args.quick else 5
    if min(args.duration, args.workers, args.upstream_procs, args.crowd) < 1:
        parser.error("--duration, --workers, --upstream-procs and --crowd must be at least 1")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the ExitStack, which stops every child


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        log(f"{' and '.join(missing)} not found; run `scripts/system-deps bench`")
        return 2
    options = Options(seconds=args.duration, paced_rounds=1 if args.quick else 2, crowd=args.crowd)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        rounds, failed = run(args, options)
    except KeyboardInterrupt:
        log("interrupted; every child process is stopped")
        return 130
    except (ChildFailed, LoadFailed) as exc:
        log(str(exc))
        return 1
    if rounds:
        print_results(rounds, options, args)
    return 1 if failed or not rounds else 0


def run(
    args: argparse.Namespace, options: Options
) -> tuple[list[dict[str, TargetRound]], list[str]]:
    """Start the targets, measure them, stop them; also return the targets that failed to start."""
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="llmp-bench-") as temporary, ExitStack() as stack:
        workdir = Path(temporary)
        upstream, direct = start_upstream(workdir, args.upstream_procs)
        stack.callback(upstream.stop)
        targets: list[Target] = [direct] if "direct" in args.only else []
        starters: list[tuple[str, Callable[[], Target]]] = [
            ("nginx", lambda: PlainNginx(workdir, direct.port)),
            ("llmp", lambda: LlmpStack(workdir, direct.port, args.workers, args.log_level)),
            ("llmp-pg", lambda: replica(stack, workdir, direct.port, args)),
        ]
        for name, start in starters:
            if name not in args.only:
                continue
            log(f"starting {name}")
            try:
                target = start()
            except ChildFailed as exc:
                log(str(exc))
                failed.append(name)
                continue
            stack.callback(target.stop)
            targets.append(target)
        rounds = measure(targets, upstream.pid, options) if targets else []
        log("stopping")
    return rounds, failed


def replica(
    stack: ExitStack, workdir: Path, upstream_port: int, args: argparse.Namespace
) -> Target:
    """llmp with DATABASE_URL to a throwaway PostgreSQL cluster, removed on the way out."""
    log("starting a PostgreSQL cluster")
    cluster, url, pid = start_database()
    stack.callback(cluster.remove)
    return LlmpStack(
        workdir, upstream_port, args.workers, args.log_level, database_url=url, database_pid=pid
    )


def measure(
    targets: list[Target], upstream_pid: int, options: Options
) -> list[dict[str, TargetRound]]:
    log("warming up")
    warm_up(targets, options)
    before = {t.name: t.database_activity() for t in targets}
    rounds = []
    for number in range(1, ROUNDS + 1):
        log(f"run {number} of {ROUNDS}")
        rounds.append(run_round(targets, upstream_pid, options))
    time.sleep(STATS_LAG)
    for target in targets:
        first, last = before[target.name], target.database_activity()
        if first is None or last is None:
            continue
        rows, transactions = last[0] - first[0], last[1] - first[1]
        log(
            f"{target.name}: {rows:,} requests recorded in the database, {transactions:,}"
            f" transactions on it meanwhile ({transactions / max(rows, 1):.4f} a request)"
        )
    return rounds


def print_results(
    rounds: list[dict[str, TargetRound]], options: Options, args: argparse.Namespace
) -> None:
    table_lines, notes = report.lines(rounds, options)
    print()
    print(report.table(table_lines, list(rounds[0])))
    for note in notes:
        print(f"note: {note}")
    settings = {
        "proxy_workers": args.workers,
        "log_level": args.log_level,
        "upstream_procs": args.upstream_procs,
        "targets": list(rounds[0]),
    }
    path = report.write_json(RESULTS, options, settings, rounds, table_lines)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    sys.exit(main())
