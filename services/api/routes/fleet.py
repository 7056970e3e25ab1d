"""`/api/fleet`: the upstreams and model aliases in data/upstreams.json (shared/fleet.py),
listed, added, changed, removed and tested by the admin. The proxy workers apply each change
within a second.

Credentials never leave in full: an upstream's `key` is answered as `keyHint` (its last four
characters, or the user name of a "basic" pair), and an egress proxy's password as `***`. A
change that leaves `key` out keeps the key. Errors are the original's shape
(`{"success": false, "message"}`), with the field at fault named.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from services.api import schemas
from services.api.deps import Admin, FleetDep, SettingsDep
from services.api.errors import Failure
from services.api.probe import probe
from services.api.validation import read_fields
from shared.fleet import (
    Alias,
    Deployment,
    Fleet,
    FleetError,
    ModelName,
    UpstreamEntry,
    UpstreamSettings,
    describe,
    new_id,
)
from shared.key_validation import BodyError

log = logging.getLogger("api.fleet")

M = TypeVar("M", bound=BaseModel)

router = APIRouter(prefix="/api/fleet", responses=schemas.FAILURES)


# Answers ----------------------------------------------------------------------------------


def public(entry: UpstreamEntry) -> schemas.FleetUpstream:
    fields = entry.model_dump(exclude={"key"})
    fields.update(keyHint=key_hint(entry.auth, entry.key), proxy=_masked_proxy(entry.proxy))
    return fields  # type: ignore[return-value]


def _alias(alias: Alias) -> schemas.AliasEntry:
    return alias.model_dump()  # type: ignore[return-value]


def key_hint(auth: str, key: str) -> str | None:
    if not key:
        return None
    if auth == "basic":
        return key.partition(":")[0] + ":…"
    return "…" + key[-4:] if len(key) >= 12 else "…"


def _masked_proxy(proxy: str | None) -> str | None:
    if proxy is None or proxy == "none":
        return proxy
    parts = urlsplit(proxy)
    if parts.password is None:
        return proxy
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# Bodies -----------------------------------------------------------------------------------


async def _fields(request: Request) -> dict[str, Any]:
    try:
        return await read_fields(request)
    except BodyError as exc:
        raise Failure(400, str(exc)) from exc


def _checked(model: type[M], fields: dict[str, Any]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise Failure(400, describe(exc)) from exc


async def _change(fleet_file: FleetDep, edit: Any) -> Fleet:
    """Apply `edit` to the file: a rule it breaks is a 400, an unreadable file a 500 (nothing is
    written over it), a file that cannot be written a 500."""
    try:
        return await run_in_threadpool(fleet_file.change, edit)
    except LookupError as exc:  # what it should change is not there: nothing written
        raise Failure(404, str(exc.args[0])) from exc
    except FleetError as exc:
        log.error("upstreams unreadable; nothing written", extra={"fields": {"error": exc}})
        raise Failure(500, f"The upstreams file is unreadable: {exc}") from exc
    except OSError as exc:
        log.error("upstreams not saved", extra={"fields": {"error": exc}})
        raise Failure(500, "Failed to save the upstreams") from exc
    except ValueError as exc:
        raise Failure(400, str(exc)) from exc


def _read(fleet_file: FleetDep) -> tuple[Fleet, bool]:
    try:
        return fleet_file.read()
    except FleetError as exc:
        raise Failure(500, f"The upstreams file is unreadable: {exc}") from exc
    except ValidationError as exc:  # TARGET_URLS holds what the file may not (a key with a space)
        raise Failure(500, f"TARGET_URLS cannot be listed here: {describe(exc)}") from exc


# Routes -----------------------------------------------------------------------------------


@router.get("")
def get_fleet(admin: Admin, fleet_file: FleetDep) -> schemas.FleetList:
    """The upstreams and aliases in force: data/upstreams.json's, or TARGET_URLS's until the
    first change writes that file."""
    fleet, from_file = _read(fleet_file)
    return {
        "success": True,
        "source": "file" if from_file else "TARGET_URLS",
        "upstreams": [public(u) for u in fleet.upstreams],
        "aliases": [_alias(a) for a in fleet.aliases],
    }


@router.post("/upstreams")
async def add_upstream(
    request: Request, admin: Admin, fleet_file: FleetDep
) -> schemas.UpstreamSaved:
    settings = _checked(UpstreamSettings, await _fields(request))
    entry = UpstreamEntry(id=new_id(), **settings.model_dump())

    def add(fleet: Fleet) -> Fleet:
        fleet.upstreams.append(entry)
        return fleet

    await _change(fleet_file, add)
    log.info("upstream added", extra={"fields": {"id": entry.id, "url": entry.url}})
    return {"success": True, "message": "Upstream added", "upstream": public(entry)}


@router.patch("/upstreams/{upstream_id}")
async def change_upstream(
    upstream_id: str, request: Request, admin: Admin, fleet_file: FleetDep
) -> schemas.UpstreamSaved:
    change = await _fields(request)
    if not change:
        raise Failure(400, "Nothing to change")
    unknown = sorted(set(change) - set(UpstreamSettings.model_fields))
    if unknown:
        raise Failure(400, f"{unknown[0]}: Extra inputs are not permitted")
    changed: list[UpstreamEntry] = []

    def edit(fleet: Fleet) -> Fleet:
        for position, entry in enumerate(fleet.upstreams):
            if entry.id == upstream_id:
                fields = {**entry.model_dump(exclude_none=True), **change}
                fields = {k: v for k, v in fields.items() if v is not None}  # null: the default
                try:
                    updated = UpstreamEntry.model_validate(fields)
                except ValidationError as exc:
                    raise ValueError(describe(exc)) from exc
                fleet.upstreams[position] = updated
                changed.append(updated)
                return fleet
        raise LookupError("Upstream not found")

    await _change(fleet_file, edit)
    log.info("upstream changed", extra={"fields": {"id": upstream_id, "changed": ",".join(change)}})
    return {"success": True, "message": "Upstream updated", "upstream": public(changed[0])}


@router.delete("/upstreams/{upstream_id}")
async def remove_upstream(upstream_id: str, admin: Admin, fleet_file: FleetDep) -> schemas.Message:
    def edit(fleet: Fleet) -> Fleet:
        users = [
            a.name for a in fleet.aliases if any(d.upstream == upstream_id for d in a.deployments)
        ]
        if users:
            raise ValueError(f"Alias {users[0]!r} uses this upstream: change or remove it first")
        kept = [u for u in fleet.upstreams if u.id != upstream_id]
        if len(kept) == len(fleet.upstreams):
            raise LookupError("Upstream not found")
        fleet.upstreams = kept
        return fleet

    await _change(fleet_file, edit)
    log.info("upstream removed", extra={"fields": {"id": upstream_id}})
    return {"success": True, "message": "Upstream removed"}


@router.post("/upstreams/{upstream_id}/test")
async def test_upstream(
    upstream_id: str,
    admin: Admin,
    fleet_file: FleetDep,
    settings: SettingsDep,
    model: Annotated[str | None, Query(max_length=256)] = None,
) -> schemas.Probe:
    """Ask the upstream for its models, then time a one-token chat completion (to `model`, or
    the first model it lists)."""
    fleet, _ = await run_in_threadpool(_read, fleet_file)
    targets = fleet.targets()
    found = next((t for t in targets if t.id == upstream_id), None)
    if found is None:
        raise Failure(404, "Upstream not found")
    models, asked = await probe(found, settings, model)
    ok = models.ok and asked is not None and asked.ok
    return {
        "success": True,
        "ok": ok,
        "models": models.model_dump(),  # type: ignore[typeddict-item]
        "request": None if asked is None else asked.model_dump(),  # type: ignore[typeddict-item]
    }


class AliasBody(BaseModel):
    model_config = Alias.model_config

    deployments: list[Deployment]


@router.put("/aliases/{name}")
async def put_alias(
    name: str, request: Request, admin: Admin, fleet_file: FleetDep
) -> schemas.AliasSaved:
    """Create or replace the alias `name` (a public model name) with its deployments."""
    body = _checked(AliasBody, await _fields(request))
    alias = _checked(
        Alias, {"name": name, "deployments": [d.model_dump() for d in body.deployments]}
    )

    def edit(fleet: Fleet) -> Fleet:
        fleet.aliases = [a for a in fleet.aliases if a.name != name] + [alias]
        return fleet

    await _change(fleet_file, edit)
    log.info("alias saved", extra={"fields": {"alias": name}})
    return {"success": True, "message": "Alias saved", "alias": _alias(alias)}


@router.delete("/aliases/{name}")
async def remove_alias(name: ModelName, admin: Admin, fleet_file: FleetDep) -> schemas.Message:
    def edit(fleet: Fleet) -> Fleet:
        kept = [a for a in fleet.aliases if a.name != name]
        if len(kept) == len(fleet.aliases):
            raise LookupError("Alias not found")
        fleet.aliases = kept
        return fleet

    await _change(fleet_file, edit)
    log.info("alias removed", extra={"fields": {"alias": name}})
    return {"success": True, "message": "Alias removed"}
