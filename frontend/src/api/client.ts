// The typed client of the admin API. Every call goes through `request`, the one place where
// the API's two error shapes (`{error}` from auth, `{success: false, message}` elsewhere), HTTP
// failures and network failures become an `ApiError` with a message fit to show a person.
// A 401 from anything but the login itself means the session is gone: `onUnauthorized` runs.

import type {
  Answer,
  ApiKey,
  KeyDetails,
  BreakdownBy,
  BreakdownRow,
  Bucket,
  Fleet,
  BudgetPeriod,
  HttpMode,
  KeyQuery,
  KeyUpdate,
  LoggedRequest,
  ModelAlias,
  NginxStatus,
  Prices,
  Range,
  RequestFilters,
  RequestPage,
  RequestRecord,
  Spend,
  SpendBy,
  Summary,
  Upstream,
  UpstreamChange,
  UpstreamConfig,
  UpstreamTest,
} from './types'

export class ApiError extends Error {
  readonly status: number
  /** seconds, from a 429's Retry-After */
  readonly retryAfter: number | null

  constructor(status: number, message: string, retryAfter: number | null = null) {
    super(message)
    this.name = 'ApiError'
    this.status = status
    this.retryAfter = retryAfter
  }
}

export interface ClientOptions {
  fetch?: typeof fetch
  /** called on a 401 from any route but /auth/login */
  onUnauthorized?: () => void
}

type Body = Record<string, unknown>

const NETWORK_ERROR = 'Cannot reach the server. Check your connection and try again.'

function retryAfter(response: Response): number | null {
  const value = Number(response.headers.get('Retry-After'))
  return Number.isFinite(value) && value > 0 ? value : null
}

function messageOf(data: unknown): string | null {
  if (data && typeof data === 'object') {
    const { message, error } = data as { message?: unknown; error?: unknown }
    if (typeof message === 'string' && message) return message
    if (typeof error === 'string' && error) return error
  }
  return null
}

function fallbackMessage(response: Response): string {
  if (response.status === 504) {
    return 'The server took too long to answer. The operation may still finish: refresh in a moment.'
  }
  if (response.status === 502 || response.status === 503) {
    return `The server is not available (HTTP ${response.status}). Is llmp running?`
  }
  if (response.status === 403) return 'Access refused (HTTP 403).'
  return `The server answered HTTP ${response.status}${response.statusText ? ' ' + response.statusText : ''}.`
}

export function query(params: Record<string, string | number | null | undefined>): string {
  const search = new URLSearchParams()
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') search.set(name, String(value))
  }
  const text = search.toString()
  return text ? `?${text}` : ''
}

export function createApi(options: ClientOptions = {}) {
  const doFetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init))

  async function send(method: string, path: string, body?: Body): Promise<Response> {
    const init: RequestInit = { method, credentials: 'same-origin', headers: {} }
    if (body !== undefined) {
      init.headers = { 'Content-Type': 'application/json' }
      init.body = JSON.stringify(body)
    }
    let response: Response
    try {
      response = await doFetch(path, init)
    } catch {
      throw new ApiError(0, NETWORK_ERROR)
    }
    if (response.status === 401 && path !== '/auth/login') options.onUnauthorized?.()
    return response
  }

  async function request<T>(method: string, path: string, body?: Body): Promise<T> {
    const response = await send(method, path, body)
    const isJson = (response.headers.get('Content-Type') ?? '').includes('json')
    let data: unknown = null
    if (isJson) {
      try {
        data = await response.json()
      } catch {
        data = null
      }
    }
    const failed = !response.ok || (data as { success?: unknown } | null)?.success === false
    if (failed) {
      const message =
        messageOf(data) ??
        (response.status === 401 ? 'Your session has ended. Please log in again.' : fallbackMessage(response))
      throw new ApiError(response.status, message, retryAfter(response))
    }
    if (!isJson) throw new ApiError(response.status, 'The server sent an answer this page cannot read.')
    return data as T
  }

  async function download(path: string): Promise<Blob> {
    const response = await send('GET', path)
    if (!response.ok) {
      let message: string | null = null
      try {
        message = messageOf(await response.json())
      } catch {
        message = null
      }
      throw new ApiError(response.status, message ?? fallbackMessage(response))
    }
    return response.blob()
  }

  const range = (r: Range) => ({ startDate: Math.round(r.start), endDate: Math.round(r.end) })

  return {
    async login(username: string, password: string): Promise<string> {
      const data = await request<Answer<'/auth/login', 'post'>>('POST', '/auth/login', { username, password })
      return data.username
    },
    async logout(): Promise<void> {
      await request<Answer<'/auth/logout', 'post'>>('POST', '/auth/logout')
    },
    /** The logged-in admin's name, or null when there is no valid session. */
    async me(): Promise<string | null> {
      const response = await send('GET', '/api/me')
      if (response.status === 401) return null
      if (!response.ok) throw new ApiError(response.status, fallbackMessage(response))
      const data = (await response.json()) as Answer<'/api/me', 'get'>
      return data.username
    },

    /** The keys (every one, or those `q` asks for: searched, filtered and sorted by the api),
     * each with what it has used (`usage`) when the api says. */
    async listKeys(q: KeyQuery = {}): Promise<ApiKey[]> {
      const data = await request<Answer<'/api/keys', 'get'>>('GET', `/api/keys${query({ ...q })}`)
      return data.keys.map((key) => {
        const usage = data.usage[key.id]
        return usage ? { ...key, usage } : key
      })
    },
    async createKey(username: string, details: KeyDetails = {}): Promise<ApiKey> {
      return (await request<Answer<'/api/keys', 'post'>>('POST', '/api/keys', { username, ...details })).key
    },
    /** A new secret for the key; the current one is accepted until `until` (ISO 8601), or
     * refused at once when it is null. Answers with the key as saved. */
    async rotateKey(id: string, until: string | null): Promise<ApiKey> {
      const path = `/api/keys/${encodeURIComponent(id)}/rotate`
      return (await request<Answer<'/api/keys/{key_id}/rotate', 'post'>>('POST', path, until === null ? {} : { until })).key
    },
    /** Changes a key's policy; answers with the key as saved. */
    async updateKey(id: string, change: KeyUpdate): Promise<ApiKey> {
      return (await request<Answer<'/api/keys/{key_id}', 'patch'>>('PATCH', `/api/keys/${encodeURIComponent(id)}`, { ...change })).key
    },
    async deleteKey(id: string): Promise<void> {
      await request<Answer<'/api/keys/{key_id}', 'delete'>>('DELETE', `/api/keys/${encodeURIComponent(id)}`)
    },

    async records(keyId: string, r: Range, limit = 5_000): Promise<RequestRecord[]> {
      const path = `/api/analytics/${encodeURIComponent(keyId)}${query({ ...range(r), limit })}`
      return (await request<Answer<'/api/analytics/{key}', 'get'>>('GET', path)).records
    },
    async summary(keyId: string | null, r: Range, bucket: Bucket): Promise<Summary> {
      return request<Answer<'/api/analytics/summary', 'get'>>('GET', `/api/analytics/summary${query({ keyId, ...range(r), bucket })}`)
    },
    /** One page of the request log, filtered and sorted by the api; `cursor` continues one. */
    async requestLog(filters: RequestFilters, r: Range, cursor: string | null = null, limit = 50): Promise<RequestPage> {
      const params = { ...filters, ...range(r), cursor, limit }
      const page = await request<Answer<'/api/analytics/requests', 'get'>>('GET', `/api/analytics/requests${query(params)}`)
      return { requests: page.requests, nextCursor: page.nextCursor }
    },
    /** Requests, failures, tokens, latency and speed per key, model or upstream, busiest first. */
    async breakdown(by: BreakdownBy, keyId: string | null, r: Range): Promise<BreakdownRow[]> {
      return (await request<Answer<'/api/analytics/breakdown', 'get'>>('GET', `/api/analytics/breakdown${query({ by, keyId, ...range(r) })}`)).rows
    },
    /** One request by the id its client saw. */
    async requestById(requestId: string): Promise<LoggedRequest> {
      return (await request<Answer<'/api/analytics/requests/{request_id}', 'get'>>('GET', `/api/analytics/requests/${encodeURIComponent(requestId)}`)).request
    },
    async recordsCsv(keyId: string, r: Range): Promise<Blob> {
      return download(`/api/analytics/${encodeURIComponent(keyId)}/csv${query(range(r))}`)
    },
    /** Tokens and cost per key or model and per UTC day, week or month, at the prices set. */
    async spend(by: SpendBy, period: BudgetPeriod, keyId: string | null, r: Range): Promise<Spend> {
      return request<Answer<'/api/analytics/spend', 'get'>>('GET', `/api/analytics/spend${query({ by, period, keyId, ...range(r) })}`)
    },
    async prices(): Promise<Prices> {
      const data = await request<Answer<'/api/analytics/prices', 'get'>>('GET', '/api/analytics/prices')
      return { currency: data.currency, models: data.models }
    },
    /** Replaces every price; answers with the prices as saved. */
    async setPrices(prices: Prices): Promise<Prices> {
      const data = await request<Answer<'/api/analytics/prices', 'put'>>('PUT', '/api/analytics/prices', { currency: prices.currency, models: prices.models })
      return { currency: data.currency, models: data.models }
    },

    async upstreams(): Promise<Upstream[]> {
      return (await request<Answer<'/api/upstreams', 'get'>>('GET', '/api/upstreams')).upstreams
    },

    async fleet(): Promise<Fleet> {
      return request<Answer<'/api/fleet', 'get'>>('GET', '/api/fleet')
    },
    async addUpstream(change: UpstreamChange): Promise<UpstreamConfig> {
      return (await request<Answer<'/api/fleet/upstreams', 'post'>>('POST', '/api/fleet/upstreams', { ...change })).upstream
    },
    async changeUpstream(id: string, change: UpstreamChange): Promise<UpstreamConfig> {
      const path = `/api/fleet/upstreams/${encodeURIComponent(id)}`
      return (await request<Answer<'/api/fleet/upstreams/{upstream_id}', 'patch'>>('PATCH', path, { ...change })).upstream
    },
    async removeUpstream(id: string): Promise<void> {
      await request<Answer<'/api/fleet/upstreams/{upstream_id}', 'delete'>>('DELETE', `/api/fleet/upstreams/${encodeURIComponent(id)}`)
    },
    async testUpstream(id: string): Promise<UpstreamTest> {
      return request<Answer<'/api/fleet/upstreams/{upstream_id}/test', 'post'>>('POST', `/api/fleet/upstreams/${encodeURIComponent(id)}/test`)
    },
    async saveAlias(alias: ModelAlias): Promise<ModelAlias> {
      const path = `/api/fleet/aliases/${encodeURIComponent(alias.name)}`
      return (await request<Answer<'/api/fleet/aliases/{name}', 'put'>>('PUT', path, { deployments: alias.deployments, strategy: alias.strategy, fallback: alias.fallback })).alias
    },
    async removeAlias(name: string): Promise<void> {
      await request<Answer<'/api/fleet/aliases/{name}', 'delete'>>('DELETE', `/api/fleet/aliases/${encodeURIComponent(name)}`)
    },
    async nginxStatus(): Promise<NginxStatus> {
      return request<Answer<'/nginx/status', 'get'>>('GET', '/nginx/status')
    },
    /** `email`, if given, becomes the ACME account's address. */
    async obtainCertificates(domains: string[], email?: string): Promise<string> {
      const body = email ? { domains, email } : { domains }
      return (await request<Answer<'/nginx/certificates/obtain', 'post'>>('POST', '/nginx/certificates/obtain', body)).message
    },
    /** Forgets a certificate that was asked for and never issued. */
    async removeCertificate(name: string): Promise<string> {
      return (await request<Answer<'/nginx/certificates/{name}', 'delete'>>('DELETE', `/nginx/certificates/${encodeURIComponent(name)}`)).message
    },
    async renewCertificates(): Promise<string> {
      return (await request<Answer<'/nginx/certificates/renew', 'get'>>('GET', '/nginx/certificates/renew')).message
    },
    /** nginx's generated config for `domain`, admin paths open to `cidrGroups`. */
    async writeDefaultConfig(domain: string, cidrGroups: string[], httpMode?: HttpMode): Promise<string> {
      const body = httpMode ? { domain, cidrGroups, httpMode } : { domain, cidrGroups }
      return (await request<Answer<'/nginx/config/write-default', 'post'>>('POST', '/nginx/config/write-default', body)).message
    },
    async getConfig(): Promise<string> {
      return (await request<Answer<'/nginx/config/get', 'get'>>('GET', '/nginx/config/get')).config
    },
    async updateConfig(config: string): Promise<string> {
      return (await request<Answer<'/nginx/config/update', 'post'>>('POST', '/nginx/config/update', { config })).message
    },
    async reloadNginx(): Promise<string> {
      return (await request<Answer<'/nginx/reload', 'get'>>('GET', '/nginx/reload')).message
    },
  }
}

export type Api = ReturnType<typeof createApi>
