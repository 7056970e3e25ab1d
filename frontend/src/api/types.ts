// What the admin API answers and takes, by the names the app uses. Every answer's type is the
// api's own, from `schema.ts`, which scripts/api-types generates from the api's OpenAPI document
// (services/api/schemas.py): a change there that the app does not follow fails the type check.
// Only the app's own shapes (a time range, the request log's form) are written here. Times are
// epoch milliseconds unless a field says otherwise.

import type { components, paths } from './schema'

type Schemas = components['schemas']

type Json<T> = T extends { content: { 'application/json': infer Body } } ? Body : never

/** The JSON a route answers with on success: `Answer<'/api/keys', 'get'>`. */
export type Answer<P extends keyof paths, M extends keyof paths[P]> = paths[P][M] extends {
  responses: { 200: infer Success }
}
  ? Json<Success>
  : never

/** The JSON body a route takes: `BodyOf<'/api/keys/{key_id}', 'patch'>`. */
export type BodyOf<P extends keyof paths, M extends keyof paths[P]> = paths[P][M] extends {
  requestBody?: infer Body
}
  ? Json<NonNullable<Body>>
  : never

/** A key's limits; a limit left out is no limit. */
export type Limits = Schemas['Limits']
export type LimitName = keyof Limits

/** A key's budget: `tokens`, `cost` (in the prices' currency) or both, per UTC period. */
export type Budget = Schemas['Budget']
export type BudgetPeriod = Budget['period']
/** A key's budget in its current period, what it used and what is left (`GET /api/keys`). */
export type BudgetUse = Schemas['BudgetUse']
export type KeyActivity = Schemas['KeyActivity']

/** A key; the policy fields are left out when they hold their default. `usage` is what the key
 * has used (`usage` of `GET /api/keys`, put on the key by the client). */
export type ApiKey = Schemas['ApiKey'] & { usage?: KeyActivity }
/** A secret replaced by a rotation, accepted until its time (ISO 8601). */
export type PreviousKey = Schemas['PreviousKey']

/** The body of `PATCH /api/keys/{id}`: only what changes. null clears (no expiry, every
 * model, no such limit, no budget, no name, owner or note); a limit left out of `limits` stays
 * as it is. */
export type KeyUpdate = BodyOf<'/api/keys/{key_id}', 'patch'>
/** A key's name, owner and note: given at creation, changed by `PATCH /api/keys/{id}`. */
export type KeyDetails = Pick<KeyUpdate, 'name' | 'owner' | 'note'>

export type RequestRecord = Schemas['RequestRecord']
export type Summary = Schemas['Summary']
export type Bucket = Summary['bucket']
export type Totals = Schemas['Totals']
export type SeriesPoint = Schemas['SeriesPoint']
export type KeyUsage = Schemas['KeyTotals']

export type Upstream = Schemas['Upstream']
export type Certificate = Schemas['Certificate']
export type Site = Schemas['Site']
export type HttpMode = Site['httpMode']
export type NginxStatus = Schemas['NginxStatus']

/** One request of the request log (`GET /api/analytics/requests`). */
export type LoggedRequest = Schemas['LoggedRequest']
/** How a request ended (docs/analytics.md); everything but `ok` is a failure. */
export type Outcome = LoggedRequest['outcome']
/** A page of the request log; `nextCursor` is null on the last page. */
export type RequestPage = Pick<Schemas['RequestPage'], 'requests' | 'nextCursor'>

/** One row of `GET /api/analytics/breakdown`: a key, model or upstream URL (`value`). */
export type BreakdownRow = Schemas['BreakdownRow']
export type BreakdownBy = Schemas['Breakdown']['by']

/** How llmp sends an upstream's credentials: `Authorization: Bearer`, Azure's `api-key`
 * header, or HTTP Basic (`key` is then `user:password`). */
export type UpstreamAuth = UpstreamConfig['auth']
/** An upstream as configured (`GET /api/fleet`); its key only as a hint. */
export type UpstreamConfig = Schemas['UpstreamPublic']
export type Deployment = Schemas['Deployment']
export type ModelAlias = Schemas['AliasPublic']
export type Fleet = Schemas['FleetPublic']
/** `POST /api/fleet/upstreams/{id}/test`: its models, then a one-token completion, timed. */
export type UpstreamTest = Schemas['ProbeAnswer']

/** The body of `POST /api/fleet/upstreams` and `PATCH .../{id}` (only what changes; a key
 * left out stays as it is, null resets a setting to its default). Written here: the api reads
 * these bodies itself and its document does not describe them yet. */
export interface UpstreamChange {
  name?: string
  url?: string
  auth?: UpstreamAuth
  key?: string
  concurrency?: number | null
  requestsPerMinute?: number | null
  tokensPerMinute?: number | null
  verify?: boolean | null
  caPem?: string | null
  models?: string[] | null
}

export interface Range {
  start: number
  end: number
}

/** The request log's server-side filters, as its form holds them; empty ones are left out. */
export interface RequestFilters {
  keyId?: string
  model?: string
  upstream?: string
  status?: string
  outcome?: Outcome | ''
  stream?: 'true' | 'false' | ''
  path?: string
  requestId?: string
  sort?: RequestSort
  order?: 'desc' | 'asc'
}

/** What the request log is sorted by (ties by start time, then id). */
export type RequestSort = 'time' | 'latency' | 'ttfb' | 'tokens' | 'status'

/** The key list's server-side search, state filter and order (`GET /api/keys`). */
export interface KeyQuery {
  search?: string
  state?: 'all' | 'active' | 'disabled' | 'expired'
  sort?: 'createdAt' | 'username' | 'lastUsed' | 'tokensToday'
  order?: 'asc' | 'desc'
}

/** Tokens and cost per key or model and per period (`GET /api/analytics/spend`). */
export type Spend = Schemas['Spend']
export type SpendBy = Spend['by']
export type SpendPeriod = Schemas['SpendPoint']
export type SpendRow = Schemas['SpendRow']
/** Per million tokens. */
export type Price = Schemas['ModelPrice']
/** `data/prices.json`: prices per model (`GET`/`PUT /api/analytics/prices`). */
export type Prices = Pick<Schemas['PriceList'], 'currency' | 'models'>
