"""What the api answers, route by route: the one description of its wire format.

Each route declares one of these as its answer. A route that returns the dict itself is checked
twice: by mypy, against the TypedDict, and by FastAPI, which validates the dict and writes it
out in the schema's field order; a route that must build its own response (a cookie, a status
of 503, an analytics answer sent as it is) declares its schema with `response_model`, and the
tests hold its real answer to it (tests/api/test_schemas.py). FastAPI writes the OpenAPI
document from these, and the admin UI's types are generated from that document
(frontend/src/api/schema.ts, scripts/api-types).

Field order is the wire's. A field that may be left out is `NotRequired`; one that may be null
says `| None`. Every schema is strict and forbids a field it does not name, so an answer that
drifts from its schema fails (a 500 in the tests), instead of sending what the document does
not say. `Number` is a JSON number that stays as it was given (strict pydantic would turn an
integer given for a `float` into `5.0`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, WithJsonSchema, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python 3.11

from shared.site import HttpMode

Number = Annotated[int | float, WithJsonSchema({"type": "number"})]
Period = Literal["day", "week", "month"]
Outcome = Literal["ok", "rate_limited", "client_error", "server_error", "incomplete"]

answer = with_config(ConfigDict(extra="forbid", strict=True))


# Errors (services/api/errors.py) ------------------------------------------------------------


@answer
class Failure(TypedDict):
    """The error of the keys, analytics and nginx routes."""

    success: Literal[False]
    message: str
    config: NotRequired[str]  # GET /nginx/config/get: the config it could not read, empty


@answer
class Refusal(TypedDict):
    """The error of the auth routes and of the admin check on every route."""

    error: str


# Common -------------------------------------------------------------------------------------


@answer
class Message(TypedDict):
    success: Literal[True]
    message: str


# Auth ---------------------------------------------------------------------------------------


@answer
class LoggedIn(TypedDict):
    success: Literal[True]
    username: str


@answer
class Token(TypedDict):
    token: str


@answer
class LoggedOut(TypedDict):
    success: Literal[True]


@answer
class Me(TypedDict):
    username: str


# Keys ---------------------------------------------------------------------------------------


@answer
class Limits(TypedDict):
    """A key's limits (shared/apikeys.py `Limits`); one left out is no limit."""

    requestsPerMinute: NotRequired[int]
    tokensPerMinute: NotRequired[int]
    tokensPerDay: NotRequired[int]
    maxConcurrent: NotRequired[int]


@answer
class Budget(TypedDict):
    """What a key may use per calendar period (UTC); cost in the currency of the prices."""

    period: Period
    tokens: NotRequired[int]
    cost: NotRequired[Number]


@answer
class PreviousKey(TypedDict):
    """A secret of the key before its rotation, still accepted until then."""

    key: str
    until: str


@answer
class ApiKey(TypedDict):
    """A key as the key file holds it: the original's four fields, then the policy fields that
    are not their default (enabled, never expires, every model, no limit, no budget, no name,
    owner or note, no previous secret)."""

    id: str
    username: str
    key: str
    createdAt: str
    enabled: NotRequired[bool]
    expiresAt: NotRequired[str]
    models: NotRequired[list[str]]
    limits: NotRequired[Limits]
    budget: NotRequired[Budget]
    name: NotRequired[str]  # tells a user's keys apart
    owner: NotRequired[str]
    note: NotRequired[str]
    previousKeys: NotRequired[list[PreviousKey]]


@answer
class BudgetUse(TypedDict):
    """A key's budget in its current period: what it allows, used and has left."""

    period: Period
    resetsAt: int
    tokens: NotRequired[int]
    usedTokens: NotRequired[int]
    remainingTokens: NotRequired[int]
    cost: NotRequired[Number]
    usedCost: NotRequired[Number]
    remainingCost: NotRequired[Number]


@answer
class KeyActivity(TypedDict):
    """What a key has used: its last request, today's (UTC) requests and tokens, its budget."""

    lastUsed: int | None
    requestsToday: int
    tokensToday: int
    budget: BudgetUse | None


@answer
class KeyList(TypedDict):
    success: Literal[True]
    keys: list[ApiKey]
    usage: dict[str, KeyActivity]  # by key id


@answer
class KeySaved(TypedDict):
    success: Literal[True]
    message: str
    key: ApiKey


@answer
class KeyValidity(TypedDict):
    success: Literal[True]
    valid: bool
    username: NotRequired[str]  # when valid


# Analytics ----------------------------------------------------------------------------------


@answer
class RequestRecord(TypedDict):
    """One request of a key (`GET /api/analytics/{key}`): the original's two times, then ours."""

    startTime: int
    endTime: int | None
    status: int | None
    model: str | None
    upstream: str | None
    path: str | None
    stream: bool
    ttfbMs: Number | None
    promptTokens: int | None
    completionTokens: int | None
    bytesIn: int | None
    bytesOut: int | None
    error: str | None
    queueMs: Number | None
    usageEstimated: bool
    endUser: str | None


@answer
class Records(TypedDict):
    success: Literal[True]
    records: list[RequestRecord]  # oldest first
    nextCursor: str | None  # the older records; null: none


@answer
class Totals(TypedDict):
    requests: int
    failures: int
    promptTokens: int
    completionTokens: int
    latencyP50: Number | None
    latencyP95: Number | None


@answer
class SeriesPoint(TypedDict):
    time: int
    requests: int
    failures: int
    promptTokens: int
    completionTokens: int
    latencyP50: Number | None
    latencyP95: Number | None
    ttfbP50: Number | None


@answer
class KeyTotals(TypedDict):
    keyId: str
    username: str
    requests: int
    failures: int
    promptTokens: int
    completionTokens: int


@answer
class Summary(TypedDict):
    success: Literal[True]
    bucket: Literal["hour", "day"]
    startDate: int
    endDate: int
    totals: Totals
    series: list[SeriesPoint]
    keys: list[KeyTotals]


@answer
class BreakdownRow(TypedDict):
    """A key, model or upstream URL (`value`) over the window."""

    value: str  # "" for requests without one
    username: NotRequired[str]  # by key
    requests: int
    failures: int
    promptTokens: int
    completionTokens: int
    errorRate: Number
    streams: int
    latencyP50: Number | None
    latencyP95: Number | None
    latencyP99: Number | None
    ttfbP50: Number | None
    ttfbP95: Number | None
    tokensPerSecond: Number | None  # completion tokens a second of completed streams
    cost: Number | None  # null when no prices are set
    lastUsed: int | None


@answer
class Breakdown(TypedDict):
    success: Literal[True]
    by: Literal["key", "model", "upstream"]
    startDate: int
    endDate: int
    rows: list[BreakdownRow]


@answer
class SpendRow(TypedDict):
    value: str
    username: NotRequired[str]  # by key
    requests: int
    promptTokens: int
    completionTokens: int
    cost: Number


@answer
class SpendPoint(TypedDict):
    time: int
    cost: Number
    rows: list[SpendRow]


@answer
class Spend(TypedDict):
    success: Literal[True]
    by: Literal["key", "model"]
    period: Period
    startDate: int
    endDate: int
    currency: str
    total: Number
    unpricedModels: list[str]
    series: list[SpendPoint]


@answer
class ModelPrice(TypedDict):
    """Per million tokens."""

    prompt: Number
    completion: Number


@answer
class PriceList(TypedDict):
    success: Literal[True]
    currency: str
    models: dict[str, ModelPrice]


@answer
class PricesSaved(TypedDict):
    success: Literal[True]
    message: str
    currency: str
    models: dict[str, ModelPrice]


@answer
class LoggedRequest(TypedDict):
    """One request of the request log."""

    id: int
    requestId: str
    keyId: str
    username: str | None
    startTime: int
    endTime: int | None
    durationMs: int | None
    status: int | None
    outcome: Outcome
    method: str | None
    path: str | None
    model: str | None
    upstream: str | None
    stream: bool
    ttfbMs: Number | None
    queueMs: Number | None
    promptTokens: int | None
    completionTokens: int | None
    usageEstimated: bool
    bytesIn: int | None
    bytesOut: int | None
    error: str | None
    endUser: str | None
    upstreamModel: str | None  # the model the upstream was asked for (an alias's deployment)


@answer
class RequestPage(TypedDict):
    success: Literal[True]
    startDate: int
    endDate: int
    requests: list[LoggedRequest]
    nextCursor: str | None  # null on the last page


@answer
class RequestFound(TypedDict):
    success: Literal[True]
    request: LoggedRequest


# nginx and certificates ---------------------------------------------------------------------


@answer
class Config(TypedDict):
    success: Literal[True]
    config: str


@answer
class NginxState(TypedDict):
    ok: bool
    error: str | None
    at: Number  # epoch seconds


@answer
class Certificate(TypedDict):
    name: str
    domains: list[str]
    notAfter: str | None  # null until certbot has issued it
    lastRenewal: str | None
    lastError: str | None


@answer
class Site(TypedDict):
    domains: list[str]
    cidrGroups: list[str]
    acmeEmail: str
    httpMode: HttpMode


@answer
class NginxStatus(TypedDict):
    success: Literal[True]
    generation: int
    appliedGeneration: int
    nginx: NginxState
    certificates: list[Certificate]
    site: Site


# Health and upstreams -----------------------------------------------------------------------


@answer
class Upstream(TypedDict):
    """An upstream as the proxy's workers report it (requests summed over them)."""

    id: str  # its id in the fleet (`GET /api/fleet`): `target-N` while TARGET_URLS is the list
    url: str
    healthy: bool
    models: list[str]
    in_flight: int
    queued: int  # waiting in its fair queue
    concurrency: int | None  # most requests in flight at once; null: no cap
    last_ok: Number | None  # epoch seconds of the last good model refresh
    last_error: str | None
    # After failures in a row, an upstream is cooled down, then probed with one request
    # (services/proxy/cooldown.py); the worker that trusts it least is shown.
    circuit: Literal["serving", "cooling", "probing"]
    failures: int  # failures in a row
    cooling_until: Number | None  # epoch seconds at which its cooldown ends; null: not cooling
    last_failure: str | None


@answer
class Upstreams(TypedDict):
    success: Literal[True]
    upstreams: list[Upstream]


@with_config(ConfigDict(extra="forbid", strict=True))
class CertdNginx(TypedDict, total=False):
    """nginx as certd last reported it; empty until certd has applied the site once."""

    ok: bool
    error: str | None
    at: Number


@answer
class ProgramHealth(TypedDict):
    ok: bool
    processes: NotRequired[int]  # heartbeats alive (the api has none of its own)
    last_error: NotRequired[str]
    nginx: NotRequired[CertdNginx]  # certd
    keys_error: NotRequired[str]  # proxy: its key file cannot be read
    limits_error: NotRequired[str]  # proxy: Redis does not answer (still serving; REDIS_FAILURE)
    upstreams: NotRequired[list[Upstream]]  # proxy


@answer
class Health(TypedDict):
    status: Literal["ok", "degraded"]
    programs: dict[str, ProgramHealth]


# What each family of routes may answer besides its success (in the document only).
FAILURES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": Failure | Refusal, "description": "refused (the admin check: `Refusal`)"},
    "5XX": {"model": Failure, "description": "failed; nothing half done"},
}
REFUSALS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": Refusal, "description": "refused"},
    "5XX": {"model": Refusal, "description": "failed"},
}
