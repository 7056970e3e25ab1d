"""`/api/analytics`: a key's records (the original's route), summaries for charts, CSV export,
breakdowns by key, model and upstream, spend and prices, and the request log (docs/analytics.md).

Dates are epoch milliseconds, read like the original (`parseInt`, so `123abc` is 123) and held
within a year of *now* (the original used its start time). Either bound alone works: a start
alone runs to now, an end alone covers the 7 days before it; no bounds is the last 7 days.
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.api import reports, request_log, schemas
from services.api.deps import Admin, AnalyticsDep, KeyFileDep, SettingsDep
from services.api.errors import Failure
from services.api.validation import read_fields
from shared.apikeys import KeyFileError
from shared.key_validation import BodyError
from shared.keystore import KeyAdmin
from shared.prices import Prices, PricesError, read_prices, write_prices
from shared.rollups import DAY, OUTCOMES

router = APIRouter(prefix="/api/analytics", responses=schemas.FAILURES)

YEAR = 365 * DAY
WEEK = 7 * DAY
_INTEGER = re.compile(r"\s*([+-]?\d+)")
_KEY_ID = re.compile(r"[a-f0-9]{32}")
_SECRET = re.compile(r"(sk-)?[a-f0-9]{64}")

StartDate = Annotated[str | None, Query(alias="startDate", description="epoch milliseconds")]
EndDate = Annotated[str | None, Query(alias="endDate", description="epoch milliseconds")]


def _timestamp_errors(raw: str, now: int) -> tuple[int | None, list[str]]:
    match = _INTEGER.match(raw)
    if match is None:
        return None, ["Timestamp must be a number"]
    value = int(match.group(1))
    errors = []
    if value <= 0:
        errors.append("Timestamp must be positive")
    if value < now - YEAR:
        errors.append("Timestamp is too old (more than 1 year ago)")
    if value > now + YEAR:
        errors.append("Timestamp is too far in the future (more than 1 year from now)")
    return value, errors


def window(start_date: str | None, end_date: str | None) -> reports.Window:
    now = int(time.time() * 1000)
    start = end = None
    if start_date is not None:
        start, errors = _timestamp_errors(start_date, now)
        if errors:
            raise Failure(400, "Invalid start date: " + ", ".join(errors))
    if end_date is not None:
        end, errors = _timestamp_errors(end_date, now)
        if errors:
            raise Failure(400, "Invalid end date: " + ", ".join(errors))
    if start is not None and end is not None:
        if start >= end:
            raise Failure(400, "Start date must be before end date")
        return reports.Window(start, end)
    if start is not None:
        return reports.Window(start, now)
    if end is not None:
        return reports.Window(end - WEEK, end)
    return reports.Window(now - WEEK, now)


def key_id_of(value: str, keyfile: KeyAdmin) -> str:
    """The key id for a key id or a key (`sk-` + 64 hex, or the 64 hex alone)."""
    if _KEY_ID.fullmatch(value):
        return value  # also the ids of deleted keys, whose history stays
    if not _SECRET.fullmatch(value):
        raise Failure(400, "Invalid API key format")
    try:
        key = keyfile.find(value if value.startswith("sk-") else "sk-" + value)
    except KeyFileError as exc:
        raise Failure(500, "Failed to retrieve analytics") from exc
    return key.id if key else ""


@router.get("/summary", response_model=schemas.Summary)
def summary(
    admin: Admin,
    store: AnalyticsDep,
    settings: SettingsDep,
    keyfile: KeyFileDep,
    key: Annotated[str | None, Query(alias="keyId")] = None,
    start_date: StartDate = None,
    end_date: EndDate = None,
    bucket: str = "hour",
) -> JSONResponse:
    if bucket not in reports.BUCKETS:
        raise Failure(400, "bucket must be hour or day")
    key_id = key_id_of(key, keyfile) if key else None
    span = window(start_date, end_date)
    return JSONResponse({"success": True, **reports.summary(store, key_id, span, bucket)})


def _prices(settings: SettingsDep) -> Prices:
    try:
        return read_prices(settings.prices_file)
    except PricesError as exc:
        raise Failure(500, "The prices file is unreadable") from exc


def _text(name: str, value: str | None, most: int = 512) -> str | None:
    """A filter's exact value: printable, at most `most` characters."""
    if value is None:
        return None
    if not value or len(value) > most or not value.isprintable():
        raise Failure(400, f'"{name}" must be 1 to {most} printable characters')
    return value


def _choice(name: str, value: str, allowed: tuple[str, ...] | dict[str, Any]) -> str:
    if value not in allowed:
        raise Failure(400, f'"{name}" must be one of [{", ".join(allowed)}]')
    return value


KeyFilter = Annotated[str | None, Query(alias="keyId", description="a key id, or the key")]
Model = Annotated[str | None, Query(description="exact model name")]
Upstream = Annotated[str | None, Query(description="exact upstream URL")]


@router.get("/breakdown", response_model=schemas.Breakdown)
def breakdown(
    admin: Admin,
    store: AnalyticsDep,
    settings: SettingsDep,
    keyfile: KeyFileDep,
    by: str = "key",
    key: KeyFilter = None,
    model: Model = None,
    upstream: Upstream = None,
    start_date: StartDate = None,
    end_date: EndDate = None,
) -> JSONResponse:
    _choice("by", by, reports.BREAKDOWNS)
    filters = {
        name: value
        for name, value in (
            ("key_id", key_id_of(key, keyfile) if key else None),
            ("model", _text("model", model)),
            ("upstream", _text("upstream", upstream)),
        )
        if value is not None
    }
    span = window(start_date, end_date)
    rows = reports.breakdown(store, by, span, filters, _prices(settings))
    return JSONResponse(
        {"success": True, "by": by, "startDate": span.start, "endDate": span.end, "rows": rows}
    )


@router.get("/spend", response_model=schemas.Spend)
def spend(
    admin: Admin,
    store: AnalyticsDep,
    settings: SettingsDep,
    keyfile: KeyFileDep,
    by: str = "key",
    period: str = "day",
    key: KeyFilter = None,
    start_date: StartDate = None,
    end_date: EndDate = None,
) -> JSONResponse:
    _choice("by", by, reports.SPEND_BY)
    _choice("period", period, reports.PERIODS)
    key_id = key_id_of(key, keyfile) if key else None
    span = window(start_date, end_date)
    answer = reports.spend(store, by, period, span, key_id, _prices(settings))
    return JSONResponse({"success": True, **answer})


@router.get("/prices", response_model=schemas.PriceList)
def prices(admin: Admin, settings: SettingsDep) -> dict[str, Any]:
    return {"success": True, **_prices(settings).to_json()}


@router.put("/prices", response_model=schemas.PricesSaved)
async def set_prices(request: Request, admin: Admin, settings: SettingsDep) -> dict[str, Any]:
    try:
        fields = await read_fields(request)
        new = Prices.from_json(fields)
    except (BodyError, ValueError) as exc:
        raise Failure(400, str(exc)) from exc
    try:
        await run_in_threadpool(write_prices, settings.prices_file, new)
    except OSError as exc:
        raise Failure(500, "Failed to save prices") from exc
    return {"success": True, "message": "Prices saved", **new.to_json()}


@router.get("/requests", response_model=schemas.RequestPage)
def request_page(
    admin: Admin,
    store: AnalyticsDep,
    settings: SettingsDep,
    keyfile: KeyFileDep,
    key: KeyFilter = None,
    model: Model = None,
    upstream: Upstream = None,
    status: Annotated[int | None, Query(ge=0, le=599)] = None,
    outcome: Annotated[str | None, Query(description=" | ".join(OUTCOMES))] = None,
    stream: bool | None = None,
    path: Annotated[str | None, Query(description="exact path, like /v1/chat/completions")] = None,
    request_id: Annotated[str | None, Query(alias="requestId")] = None,
    start_date: StartDate = None,
    end_date: EndDate = None,
    sort: Annotated[str, Query(description=" | ".join(request_log.SORTS))] = "time",
    order: str = "desc",
    limit: Annotated[int, Query(ge=1, le=request_log.MAX_LIMIT)] = 50,
    cursor: str | None = None,
) -> JSONResponse:
    _choice("sort", sort, request_log.SORTS)
    _choice("order", order, request_log.ORDERS)
    if outcome is not None:
        _choice("outcome", outcome, OUTCOMES)
    filters = request_log.Filters(
        key_id=key_id_of(key, keyfile) if key else None,
        model=_text("model", model),
        upstream=_text("upstream", upstream),
        status=status,
        outcome=outcome,
        stream=stream,
        path=_text("path", path),
        request_id=_text("requestId", request_id, 64),
    )
    span = window(start_date, end_date)
    try:
        found = request_log.page(store, span, filters, order, limit, cursor, sort)
    except request_log.CursorError as exc:
        raise Failure(400, str(exc)) from exc
    return JSONResponse(
        {
            "success": True,
            "startDate": span.start,
            "endDate": span.end,
            "requests": found.entries,
            "nextCursor": found.next_cursor,
        }
    )


@router.get("/requests/{request_id}", response_model=schemas.RequestFound)
def request_detail(request_id: str, admin: Admin, store: AnalyticsDep) -> dict[str, Any]:
    found = request_log.find(store, _text("requestId", request_id, 64) or "")
    if found is None:
        raise Failure(404, "Request not found")
    return {"success": True, "request": found}


@router.get(
    "/{key}/csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def export(
    key: str,
    admin: Admin,
    store: AnalyticsDep,
    settings: SettingsDep,
    keyfile: KeyFileDep,
    start_date: StartDate = None,
    end_date: EndDate = None,
) -> StreamingResponse:
    chunks = reports.export_csv(store, key_id_of(key, keyfile), window(start_date, end_date))
    return StreamingResponse(
        chunks,
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="analytics.csv"'},
    )


@router.get("/{key}", response_model=schemas.Records)
def records(
    key: str,
    admin: Admin,
    store: AnalyticsDep,
    settings: SettingsDep,
    keyfile: KeyFileDep,
    start_date: StartDate = None,
    end_date: EndDate = None,
    limit: Annotated[int, Query(ge=1, le=reports.MAX_RECORDS)] = reports.MAX_RECORDS,
    cursor: Annotated[str | None, Query(description="nextCursor: the older records")] = None,
) -> Response:
    try:
        found = reports.records(
            store,
            key_id_of(key, keyfile),
            window(start_date, end_date),
            limit,
            cursor,
        )
    except reports.CursorError as exc:
        raise Failure(400, str(exc)) from exc
    # The records are JSON made by SQLite: the answer is put together, not encoded again.
    records = ",".join(found.json)
    body = f'{{"success":true,"records":[{records}],"nextCursor":{json.dumps(found.next_cursor)}}}'
    return Response(body, media_type="application/json")
