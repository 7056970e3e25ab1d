"""How llmp is doing, from the files its programs keep in `data/`: heartbeats in `run/` and
certd's `certd/status.json`. Read by the api (`/healthz`, `/api/upstreams`) and `llmp status`.
"""

from __future__ import annotations

import json
from typing import Any

from shared.heartbeat import read_heartbeats
from shared.settings import Settings

PROGRAMS = ("proxy", "certd")


def alive(settings: Settings, program: str) -> list[dict[str, Any]]:
    return [
        b for b in read_heartbeats(settings.run_dir) if b.get("program") == program and b["alive"]
    ]


# Each worker cools an upstream down on its own (services/proxy/cooldown.py): the report shows
# the worst of them.
_CIRCUITS = ("serving", "probing", "cooling")


def upstreams(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each upstream as the most recent worker sees it, with requests in flight and waiting in
    its queue summed over workers, and the circuit of the worker that trusts it least."""
    if not workers:
        return []
    latest = max(workers, key=lambda b: b["updated"])
    merged = [dict(u) for u in latest.get("upstreams", [])]
    for upstream in merged:
        views = [u for w in workers for u in w.get("upstreams", []) if u["url"] == upstream["url"]]
        for count in ("in_flight", "queued"):
            upstream[count] = sum(u.get(count, 0) for u in views)
        worst = max(
            views,
            key=lambda u: (_CIRCUITS.index(u.get("circuit", "serving")), u.get("failures", 0)),
        )
        upstream["circuit"] = worst.get("circuit", "serving")
        upstream["failures"] = worst.get("failures", 0)
        upstream["cooling_until"] = worst.get("cooling_until")
        upstream["last_failure"] = worst.get("last_failure")
    return merged


def health(settings: Settings) -> dict[str, Any]:
    """`ok` when every program is up (all proxy workers) and nginx took its configuration."""
    programs: dict[str, Any] = {"api": {"ok": bool(alive(settings, "api"))}}
    for program in PROGRAMS:
        mine = alive(settings, program)
        errors = [b["last_error"] for b in mine if b.get("last_error")]
        report: dict[str, Any] = {"ok": bool(mine), "processes": len(mine)}
        if errors:
            report["last_error"] = errors[0]
        if program == "certd" and mine:
            nginx = mine[0].get("nginx") or {}
            report["nginx"] = nginx
            report["ok"] = bool(nginx.get("ok"))
        if program == "proxy":
            # a broken key file: the workers serve its last good keys, but it must be fixed
            keys_errors = [b["keys_error"] for b in mine if b.get("keys_error")]
            report["ok"] = len(mine) >= settings.proxy_workers and not keys_errors
            if keys_errors:
                report["keys_error"] = keys_errors[0]
            # Redis not answering: the workers still serve, limits approximated (REDIS_FAILURE),
            # so a load balancer must not take the replica out for it: said, not failed.
            limits_errors = [b["limits_error"] for b in mine if b.get("limits_error")]
            if limits_errors:
                report["limits_error"] = limits_errors[0]
            report["upstreams"] = upstreams(mine)
        programs[program] = report
    ok = all(p["ok"] for p in programs.values())
    return {"ok": ok, "status": "ok" if ok else "degraded", "programs": programs}


def status_report(settings: Settings) -> dict[str, Any]:
    """Health plus what certd last reported about certificates, for `llmp status`: not ok
    either when every upstream is down (llmp is up, but serves nothing), or while the limits
    cannot be counted with the other replicas (Redis does not answer)."""
    report = health(settings)
    proxy = report["programs"].get("proxy", {})
    known = proxy.get("upstreams", [])
    if known and not any(u.get("healthy") for u in known):
        report.update(ok=False, status="degraded", problem="every upstream is down")
    elif proxy.get("limits_error"):
        problem = f"limits are not shared with the other replicas: {proxy['limits_error']}"
        report.update(ok=False, status="degraded", problem=problem)
    try:
        certd = json.loads((settings.data_dir / "certd" / "status.json").read_bytes())
    except (OSError, ValueError):
        certd = None
    report["certificates"] = certd.get("certificates", []) if isinstance(certd, dict) else []
    return report
