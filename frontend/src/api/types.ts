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

/** A key's budget in its current period, what it used and what is left (`GET /api/keys`). */
export type BudgetUse = Schemas['BudgetUse']
export type KeyActivity = Schemas['KeyActivity']

/** A key; the policy fields are left out when they hold their default. `usage` is what the key
 * has used (`usage` of `GET /api/keys`, put on the key by the client). */
export type ApiKey = Schemas['ApiKey'] & { usage?: KeyActivity }

/** The body of `PATCH /api/keys/{id}`: only what changes. null clears (no expiry, every
 * model, no such limit, no budget); a limit left out of `limits` stays as it is. */
export type KeyUpdate = BodyOf<'/api/keys/{key_id}', 'patch'>

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
  order?: 'desc' | 'asc'
}
