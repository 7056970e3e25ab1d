// What the admin API answers (services/api/routes/*). Times are epoch milliseconds unless a
// field says otherwise.

/** A key's limits (shared/apikeys.py `Limits`); a limit left out is no limit. */
export interface Limits {
  requestsPerMinute?: number
  tokensPerMinute?: number
  tokensPerDay?: number
  maxConcurrent?: number
}

export type LimitName = keyof Limits

/** A key; the policy fields are left out when they hold their default. */
export interface ApiKey {
  id: string
  username: string
  key: string
  createdAt: string
  /** default true */
  enabled?: boolean
  /** ISO 8601; default never */
  expiresAt?: string
  /** glob patterns; default every model */
  models?: string[]
  limits?: Limits
  /** tells a user's keys apart (unique per username) */
  name?: string
  /** who answers for the key */
  owner?: string
  note?: string
  /** secrets replaced by a rotation, each accepted until its time (ISO 8601) */
  previousKeys?: PreviousKey[]
  /** what the key has used (`usage` of `GET /api/keys`, put on the key by the client) */
  usage?: KeyActivity
}

export interface PreviousKey {
  key: string
  until: string
}

/** A key's name, owner and note: given at creation, changed by `PATCH /api/keys/{id}` (null
 * clears one). */
export interface KeyDetails {
  name?: string | null
  owner?: string | null
  note?: string | null
}

/** A key's budget in its current period, what it used and what is left (`GET /api/keys`). */
export interface BudgetUse {
  period: 'day' | 'week' | 'month'
  resetsAt: number
  tokens?: number | null
  usedTokens?: number | null
  remainingTokens?: number | null
  cost?: number | null
  usedCost?: number | null
  remainingCost?: number | null
}

export interface KeyActivity {
  lastUsed: number | null
  requestsToday: number
  tokensToday: number
  budget: BudgetUse | null
}

/** The body of `PATCH /api/keys/{id}`: only what changes. null clears (no expiry, every
 * model, no such limit); a limit left out of `limits` stays as it is. */
export interface KeyUpdate extends KeyDetails {
  enabled?: boolean
  expiresAt?: string | null
  models?: string[] | null
  limits?: { [name in LimitName]?: number | null }
}

export interface RequestRecord {
  startTime: number
  /** null when the request failed (the original's CSV convention) */
  endTime: number | null
  status: number | null
  model: string | null
  upstream: string | null
  path: string | null
  stream: boolean
  ttfbMs: number | null
  promptTokens: number | null
  completionTokens: number | null
  bytesIn: number | null
  bytesOut: number | null
  error: string | null
  /** time spent waiting in the fair queue before going upstream */
  queueMs: number | null
  /** the token counts are the proxy's estimate: the upstream did not report usage */
  usageEstimated: boolean
}

export type Bucket = 'hour' | 'day'

export interface Counts {
  requests: number
  failures: number
  promptTokens: number
  completionTokens: number
}

export interface Totals extends Counts {
  latencyP50: number | null
  latencyP95: number | null
}

export interface SeriesPoint extends Counts {
  time: number
  latencyP50: number | null
  latencyP95: number | null
  ttfbP50: number | null
}

export interface KeyUsage extends Counts {
  keyId: string
  username: string
}

export interface Summary {
  bucket: Bucket
  startDate: number
  endDate: number
  totals: Totals
  series: SeriesPoint[]
  keys: KeyUsage[]
}

export interface Upstream {
  /** its id in the fleet (`GET /api/fleet`) */
  id?: string
  url: string
  healthy: boolean
  models: string[]
  in_flight: number
  /** requests waiting in its fair queue (all workers) */
  queued?: number
  /** most requests in flight at once (`|concurrency=N`), null: no cap */
  concurrency?: number | null
  /** epoch seconds of the last good model refresh */
  last_ok: number | null
  last_error: string | null
}

export interface Certificate {
  name: string
  domains: string[]
  /** null until certbot has issued it */
  notAfter: string | null
  lastRenewal: string | null
  lastError: string | null
}

export type HttpMode = 'redirect' | 'serve'

export interface Site {
  domains: string[]
  cidrGroups: string[]
  acmeEmail: string
  httpMode: HttpMode
}

export interface NginxStatus {
  generation: number
  appliedGeneration: number
  nginx: { ok: boolean; error: string | null; at: number | string | null }
  certificates: Certificate[]
  site: Site
}

export interface Range {
  start: number
  end: number
}

/** How a request ended (docs/analytics.md); everything but `ok` is a failure. */
export type Outcome = 'ok' | 'rate_limited' | 'client_error' | 'server_error' | 'incomplete'

/** One request of the request log (`GET /api/analytics/requests`). */
export interface LoggedRequest {
  id: number
  /** the `x-request-id` its client saw */
  requestId: string
  keyId: string
  username: string | null
  startTime: number
  endTime: number | null
  durationMs: number | null
  status: number | null
  outcome: Outcome
  method: string | null
  path: string | null
  model: string | null
  upstream: string | null
  stream: boolean
  ttfbMs: number | null
  queueMs: number | null
  promptTokens: number | null
  completionTokens: number | null
  usageEstimated: boolean
  bytesIn: number | null
  bytesOut: number | null
  error: string | null
  /** the OpenAI `user` field the request named */
  endUser?: string | null
}

/** The request log's server-side filters; empty ones are left out. */
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

export interface RequestPage {
  requests: LoggedRequest[]
  /** null on the last page */
  nextCursor: string | null
}

export type BreakdownBy = 'key' | 'model' | 'upstream'

/** One row of `GET /api/analytics/breakdown`: a key, model or upstream URL (`value`). */
export interface BreakdownRow {
  value: string
  /** with `by=key` */
  username?: string | null
  requests: number
  failures: number
  errorRate: number
  promptTokens: number
  completionTokens: number
  streams: number
  latencyP50: number | null
  latencyP95: number | null
  latencyP99: number | null
  ttfbP50: number | null
  ttfbP95: number | null
  /** completion tokens a second of completed streamed answers */
  tokensPerSecond: number | null
  /** null when no prices are set */
  cost: number | null
  lastUsed: number | null
}

/** How llmp sends an upstream's credentials: `Authorization: Bearer`, Azure's `api-key`
 * header, or HTTP Basic (`key` is then `user:password`). */
export type UpstreamAuth = 'bearer' | 'api-key' | 'basic'

/** An upstream as configured (`GET /api/fleet`); its key only as a hint. */
export interface UpstreamConfig {
  id: string
  name: string
  url: string
  auth: UpstreamAuth
  /** the key's last characters, or the user of a basic pair; null: no credentials */
  keyHint: string | null
  concurrency: number | null
  /** TLS verification; null: the global setting */
  verify: boolean | null
  caPem: string | null
  /** "none", an http:// proxy (password masked), null: the environment's */
  proxy: string | null
  keepalive: number | null
  /** glob patterns of the models it serves; null: all */
  models: string[] | null
  caFile: string | null
  certFile: string | null
  certKeyFile: string | null
}

/** The body of `POST /api/fleet/upstreams` and `PATCH .../{id}` (only what changes; a key
 * left out stays as it is, null resets a setting to its default). */
export interface UpstreamChange {
  name?: string
  url?: string
  auth?: UpstreamAuth
  key?: string
  concurrency?: number | null
  verify?: boolean | null
  caPem?: string | null
  models?: string[] | null
}

export interface Deployment {
  upstream: string
  model: string
  weight: number
  /** the lowest is tried first */
  priority: number
}

export interface ModelAlias {
  name: string
  deployments: Deployment[]
}

export interface Fleet {
  /** where the list comes from: data/upstreams.json, or TARGET_URLS until the first change */
  source: 'file' | 'TARGET_URLS'
  upstreams: UpstreamConfig[]
  aliases: ModelAlias[]
}

/** `POST /api/fleet/upstreams/{id}/test`: its models, then a one-token completion, timed. */
export interface UpstreamTest {
  ok: boolean
  models: { ok: boolean; ms: number | null; status: number | null; models: string[]; error: string | null }
  request: { ok: boolean; model: string; ms: number | null; status: number | null; error: string | null } | null
}
