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
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from services.api import schemas
from services.api.deps import Admin, FleetDep, SettingsDep
from services.api.errors import Failure
from services.api.probe import ModelsStep, RequestStep, probe
from services.api.validation import read_fields
from shared.fleet import (
    Alias,
    Auth,
    Deployment,
    Fleet,
    FleetError,
    ModelName,
    Strategy,
    UpstreamEntry,
    UpstreamSettings,
    describe,
    new_id,
)
from shared.key_validation import BodyError

log = logging.getLogger("api.fleet")

M = TypeVar("M", bound=BaseModel)

router = APIRouter(prefix="/api/fleet", responses=schemas.FAILURES)


# Answers (each names all its fields, as services/api/schemas.py's do) ---------------------


class Public(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UpstreamPublic(Public):
    id: str
    name: str
    url: str
    auth: Auth
    keyHint: str | None  # None: no credentials
    concurrency: int | None
    requestsPerMinute: int | None
    tokensPerMinute: int | None
    verify: bool | None
    caPem: str | None
    proxy: str | None
    keepalive: float | None
    models: list[str] | None
    caFile: str | None
    certFile: str | None
    certKeyFile: str | None

    @classmethod
    def of(cls, entry: UpstreamEntry) -> UpstreamPublic:
        fields = entry.model_dump(exclude={"key"})
        fields["proxy"] = _masked_proxy(entry.proxy)
        return cls(keyHint=key_hint(entry.auth, entry.key), **fields)


class AliasPublic(Public):
    name: str
    deployments: list[Deployment]
    strategy: Strategy
    fallback: str | None  # the alias tried when this one's deployments refused


class FleetPublic(Public):
    success: bool = True
    source: Literal["file", "TARGET_URLS"]  # data/upstreams.json, or TARGET_URLS until a change
    upstreams: list[UpstreamPublic]
    aliases: list[AliasPublic]

    @classmethod
    def of(cls, fleet: Fleet, from_file: bool) -> FleetPublic:
        return cls(
            source="file" if from_file else "TARGET_URLS",
            upstreams=[UpstreamPublic.of(u) for u in fleet.upstreams],
            aliases=[AliasPublic(**a.model_dump()) for a in fleet.aliases],
        )


class UpstreamAnswer(Public):
    success: bool = True
    message: str
    upstream: UpstreamPublic


class AliasAnswer(Public):
    success: bool = True
    message: str
    alias: AliasPublic


class Done(Public):
    success: bool = True
    message: str


class ProbeAnswer(Public):
    success: bool = True
    ok: bool  # both steps went well
    models: ModelsStep
    request: RequestStep | None  # None: no model to ask


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
def get_fleet(admin: Admin, fleet_file: FleetDep) -> FleetPublic:
    """The upstreams and aliases in force: data/upstreams.json's, or TARGET_URLS's until the
    first change writes that file."""
    return FleetPublic.of(*_read(fleet_file))


@router.post("/upstreams")
async def add_upstream(request: Request, admin: Admin, fleet_file: FleetDep) -> UpstreamAnswer:
    settings = _checked(UpstreamSettings, await _fields(request))
    entry = UpstreamEntry(id=new_id(), **settings.model_dump())

    def add(fleet: Fleet) -> Fleet:
        fleet.upstreams.append(entry)
        return fleet

    await _change(fleet_file, add)
    log.info("upstream added", extra={"fields": {"id": entry.id, "url": entry.url}})
    return UpstreamAnswer(message="Upstream added", upstream=UpstreamPublic.of(entry))


@router.patch("/upstreams/{upstream_id}")
async def change_upstream(
    upstream_id: str, request: Request, admin: Admin, fleet_file: FleetDep
) -> UpstreamAnswer:
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
    return UpstreamAnswer(message="Upstream updated", upstream=UpstreamPublic.of(changed[0]))


@router.delete("/upstreams/{upstream_id}")
async def remove_upstream(upstream_id: str, admin: Admin, fleet_file: FleetDep) -> Done:
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
    return Done(message="Upstream removed")


@router.post("/upstreams/{upstream_id}/test")
async def test_upstream(
    upstream_id: str,
    admin: Admin,
    fleet_file: FleetDep,
    settings: SettingsDep,
    model: Annotated[str | None, Query(max_length=256)] = None,
) -> ProbeAnswer:
    """Ask the upstream for its models, then time a one-token chat completion (to `model`, or
    the first model it lists)."""
    fleet, _ = await run_in_threadpool(_read, fleet_file)
    targets = fleet.targets()
    found = next((t for t in targets if t.id == upstream_id), None)
    if found is None:
        raise Failure(404, "Upstream not found")
    models, asked = await probe(found, settings, model)
    ok = models.ok and asked is not None and asked.ok
    return ProbeAnswer(ok=ok, models=models, request=asked)


class AliasBody(BaseModel):
    model_config = Alias.model_config

    deployments: list[Deployment]
    strategy: Strategy = "weighted"
    fallback: ModelName | None = None


@router.put("/aliases/{name}")
async def put_alias(name: str, request: Request, admin: Admin, fleet_file: FleetDep) -> AliasAnswer:
    """Create or replace the alias `name` (a public model name) with its deployments, how to
    choose among those of one priority (`strategy`) and the alias to fall back to when they
    refuse or the context is too long (`fallback`)."""
    body = _checked(AliasBody, await _fields(request))
    alias = _checked(Alias, {"name": name, **body.model_dump()})

    def edit(fleet: Fleet) -> Fleet:
        fleet.aliases = [a for a in fleet.aliases if a.name != name] + [alias]
        return fleet

    await _change(fleet_file, edit)
    log.info("alias saved", extra={"fields": {"alias": name}})
    return AliasAnswer(message="Alias saved", alias=AliasPublic(**alias.model_dump()))


@router.delete("/aliases/{name}")
async def remove_alias(name: ModelName, admin: Admin, fleet_file: FleetDep) -> Done:
    def edit(fleet: Fleet) -> Fleet:
        kept = [a for a in fleet.aliases if a.name != name]
        if len(kept) == len(fleet.aliases):
            raise LookupError("Alias not found")
        users = [a.name for a in kept if a.fallback == name]
        if users:
            raise ValueError(f"Alias {users[0]!r} falls back to this alias: change it first")
        fleet.aliases = kept
        return fleet

    await _change(fleet_file, edit)
    log.info("alias removed", extra={"fields": {"alias": name}})
    return Done(message="Alias removed")
