"""`/api/analytics`: a key's records (the original's route), summaries for charts, CSV export.

Dates are epoch milliseconds, read like the original (`parseInt`, so `123abc` is 123) and held
within a year of *now* (the original used its start time). Either bound alone works: a start
alone runs to now, an end alone covers the 7 days before it; no bounds is the last 7 days.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from services.api import reports
from services.api.deps import Admin, KeyFileDep, SettingsDep
from services.api.errors import Failure
from shared.apikeys import KeyFileError
from shared.keyfile import KeyFile

router = APIRouter(prefix="/api/analytics")

DAY = 86400_000
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


def key_id_of(value: str, keyfile: KeyFile) -> str:
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


@router.get("/summary")
def summary(
    admin: Admin,
    settings: SettingsDep,
    keyfile: KeyFileDep,
    key: Annotated[str | None, Query(alias="keyId")] = None,
    start_date: StartDate = None,
    end_date: EndDate = None,
    bucket: str = "hour",
) -> dict[str, Any]:
    if bucket not in reports.BUCKETS:
        raise Failure(400, "bucket must be hour or day")
    key_id = key_id_of(key, keyfile) if key else None
    span = window(start_date, end_date)
    return {"success": True, **reports.summary(settings.analytics_db, key_id, span, bucket)}


@router.get("/{key}/csv")
def export(
    key: str,
    admin: Admin,
    settings: SettingsDep,
    keyfile: KeyFileDep,
    start_date: StartDate = None,
    end_date: EndDate = None,
) -> Response:
    rows = reports.records(
        settings.analytics_db,
        key_id_of(key, keyfile),
        window(start_date, end_date),
        limit=1_000_000,
    )
    return Response(
        reports.csv_text(rows),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="analytics.csv"'},
    )


@router.get("/{key}")
def records(
    key: str,
    admin: Admin,
    settings: SettingsDep,
    keyfile: KeyFileDep,
    start_date: StartDate = None,
    end_date: EndDate = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict[str, Any]:
    rows = reports.records(
        settings.analytics_db, key_id_of(key, keyfile), window(start_date, end_date), limit
    )
    return {"success": True, "records": rows}
