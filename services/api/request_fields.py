"""The columns of `data/analytics.db` as the api answers them: one table of fields (the name in
JSON answers and CSV headers, the SQL that reads it, whether it is a boolean), and the choices of
fields that the routes answer: the request log's entries (services/api/request_log.py) and a
key's records with their CSV export (services/api/reports.py).

A field is read, named and typed here and nowhere else, so every route shows a column the same
way. The names and their order are the wire format: the records start with the original's
`startTime` and `endTime`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.rollups import OUTCOME_SQL


@dataclass(frozen=True)
class Field:
    name: str
    sql: str  # a column of `requests`, or an expression of its columns
    boolean: bool = False  # stored as 0/1, answered as false/true


FIELDS = {
    field.name: field
    for field in (
        Field("id", "id"),
        Field("requestId", "request_id"),
        Field("keyId", "key_id"),
        Field("username", "username"),
        Field("startTime", "start_ms"),
        Field("endTime", "end_ms"),
        Field("durationMs", "end_ms - start_ms"),
        Field("status", "status"),
        Field("outcome", OUTCOME_SQL),
        Field("method", "method"),
        Field("path", "path"),
        Field("model", "model"),
        Field("upstream", "upstream"),
        Field("stream", "stream", boolean=True),
        Field("ttfbMs", "ttfb_ms"),
        Field("queueMs", "queue_ms"),
        Field("promptTokens", "prompt_tokens"),
        Field("completionTokens", "completion_tokens"),
        Field("usageEstimated", "usage_estimated", boolean=True),
        Field("bytesIn", "bytes_in"),
        Field("bytesOut", "bytes_out"),
        Field("error", "error"),
        Field("endUser", "end_user"),
        # The model the upstream was asked for: an alias's deployment (shared/fleet.py).
        Field("upstreamModel", "upstream_model"),
    )
}


class Fields:
    """Some of FIELDS in the order of an answer."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.fields = tuple(FIELDS[name] for name in names)
        self.select = ", ".join(f.sql for f in self.fields)
        self._booleans = tuple(f.name for f in self.fields if f.boolean)
        # Each row as its JSON object, made by SQLite: for answers of thousands of rows, ten
        # times cheaper than dictionaries encoded by Python.
        self.select_json = "json_object({})".format(
            ", ".join(
                f"'{f.name}', "
                + (f"json(CASE WHEN {f.sql} THEN 'true' ELSE 'false' END)" if f.boolean else f.sql)
                for f in self.fields
            )
        )

    def entry(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """A row read with `select` as the answer's object."""
        entry = dict(zip(self.names, row, strict=True))
        for name in self._booleans:
            entry[name] = bool(entry[name])
        return entry


# The request log's entry: every field.
LOG = Fields(tuple(FIELDS))

# A key's records (the original's route) and its CSV export: the original's two, then ours.
RECORD = Fields(
    (
        "startTime",
        "endTime",
        "status",
        "model",
        "upstream",
        "path",
        "stream",
        "ttfbMs",
        "promptTokens",
        "completionTokens",
        "bytesIn",
        "bytesOut",
        "error",
        "queueMs",
        "usageEstimated",
        "endUser",
    )
)
