import { describe, expect, it, vi } from 'vitest'
import { ApiError, createApi, query } from '../src/api/client'
import { jsonResponse } from './fakes'

function apiAnswering(...responses: (Response | Error)[]) {
  const fetch = vi.fn(async (_input: RequestInfo | URL, _init?: RequestInit) => {
    const next = responses.shift()
    if (!next) throw new Error('no more responses')
    if (next instanceof Error) throw next
    return next
  })
  const onUnauthorized = vi.fn()
  return { api: createApi({ fetch: fetch as typeof globalThis.fetch, onUnauthorized }), fetch, onUnauthorized }
}

describe('api client', () => {
  it('sends JSON with the cookie and returns the answer', async () => {
    const key = { id: 'a'.repeat(32), username: 'alice', key: 'sk-' + 'b'.repeat(64), createdAt: '2026-11-01T00:00:00Z' }
    const { api, fetch } = apiAnswering(jsonResponse(200, { success: true, message: 'ok', key }))
    await expect(api.createKey('alice')).resolves.toEqual(key)
    const [path, init] = fetch.mock.calls[0]!
    expect(path).toBe('/api/keys')
    expect(init).toMatchObject({ method: 'POST', credentials: 'same-origin', body: '{"username":"alice"}' })
    expect(init?.headers).toEqual({ 'Content-Type': 'application/json' })
  })

  it("puts each key's usage on the key, and asks the request log with only the filters given", async () => {
    const alice = { id: 'a'.repeat(32), username: 'alice', key: 'sk-x', createdAt: '2026-11-01T00:00:00Z' }
    const bob = { ...alice, id: 'b'.repeat(32), username: 'bob' }
    const usage = { lastUsed: 5, requestsToday: 2, tokensToday: 30, budget: null }
    const { api, fetch } = apiAnswering(
      jsonResponse(200, { success: true, keys: [alice, bob], usage: { [alice.id]: usage } }),
      jsonResponse(200, { success: true, requests: [], nextCursor: null, startDate: 1, endDate: 2 }),
    )
    await expect(api.listKeys()).resolves.toEqual([{ ...alice, usage }, bob])
    await expect(api.requestLog({ keyId: alice.id, outcome: 'server_error', order: 'asc' }, { start: 1, end: 2 }, 'c1')).resolves.toEqual({
      requests: [],
      nextCursor: null,
    })
    expect(fetch.mock.calls[1]![0]).toBe(`/api/analytics/requests?keyId=${alice.id}&outcome=server_error&order=asc&startDate=1&endDate=2&cursor=c1&limit=50`)
  })

  it('updates a key with PATCH and only the fields given', async () => {
    const key = { id: 'a'.repeat(32), username: 'alice', key: 'sk-' + 'b'.repeat(64), createdAt: '2026-11-01T00:00:00Z', enabled: false }
    const { api, fetch } = apiAnswering(
      jsonResponse(200, { success: true, message: 'API key updated successfully', key }),
      jsonResponse(404, { success: false, message: 'API key not found' }),
    )
    await expect(api.updateKey(key.id, { enabled: false, limits: { maxConcurrent: null } })).resolves.toEqual(key)
    const [path, init] = fetch.mock.calls[0]!
    expect(path).toBe(`/api/keys/${key.id}`)
    expect(init).toMatchObject({ method: 'PATCH', body: '{"enabled":false,"limits":{"maxConcurrent":null}}' })
    await expect(api.updateKey('x/y', { enabled: true })).rejects.toMatchObject({ status: 404, message: 'API key not found' })
    expect(fetch.mock.calls[1]![0]).toBe('/api/keys/x%2Fy')
  })

  it('reads both error shapes of the api', async () => {
    const { api } = apiAnswering(
      jsonResponse(400, { success: false, message: 'Username must contain only alphanumeric characters' }),
      jsonResponse(400, { error: '"username" is required, Password is required' }),
    )
    await expect(api.createKey('a!')).rejects.toMatchObject({
      status: 400,
      message: 'Username must contain only alphanumeric characters',
    })
    await expect(api.login('', '')).rejects.toMatchObject({ status: 400, message: '"username" is required, Password is required' })
  })

  it('treats success: false in a 200 as a failure', async () => {
    const { api } = apiAnswering(jsonResponse(200, { success: false, message: 'nope' }))
    await expect(api.listKeys()).rejects.toMatchObject({ message: 'nope' })
  })

  it('ends the session on a 401 from anything but the login', async () => {
    const { api, onUnauthorized } = apiAnswering(
      jsonResponse(401, { error: 'Invalid credentials' }),
      jsonResponse(401, { error: 'Authentication required' }),
    )
    await expect(api.login('admin', 'wrong-password')).rejects.toMatchObject({ status: 401, message: 'Invalid credentials' })
    expect(onUnauthorized).not.toHaveBeenCalled()
    await expect(api.listKeys()).rejects.toBeInstanceOf(ApiError)
    expect(onUnauthorized).toHaveBeenCalledOnce()
  })

  it('keeps Retry-After of a throttled login', async () => {
    const { api } = apiAnswering(jsonResponse(429, { error: 'Too many failed logins; try again later' }, { 'Retry-After': '42' }))
    await expect(api.login('admin', 'password1')).rejects.toMatchObject({ status: 429, retryAfter: 42 })
  })

  it('explains network failures and non-JSON gateway errors', async () => {
    const { api } = apiAnswering(
      new TypeError('Failed to fetch'),
      new Response('<html>502 Bad Gateway</html>', { status: 502, headers: { 'Content-Type': 'text/html' } }),
      new Response('<html>504</html>', { status: 504, headers: { 'Content-Type': 'text/html' } }),
    )
    await expect(api.upstreams()).rejects.toMatchObject({ status: 0, message: expect.stringContaining('Cannot reach the server') })
    await expect(api.upstreams()).rejects.toMatchObject({ status: 502, message: expect.stringContaining('Is llmp running?') })
    await expect(api.obtainCertificates(['a.example.com'])).rejects.toMatchObject({
      status: 504,
      message: expect.stringContaining('may still finish'),
    })
  })

  it('me() is null without a session, and not an error', async () => {
    const { api, onUnauthorized } = apiAnswering(jsonResponse(401, { error: 'Authentication required' }), jsonResponse(200, { username: 'admin' }))
    await expect(api.me()).resolves.toBeNull()
    await expect(api.me()).resolves.toBe('admin')
    expect(onUnauthorized).toHaveBeenCalledOnce() // harmless: nobody is logged in yet
  })

  it('builds analytics queries in epoch milliseconds', async () => {
    const { api, fetch } = apiAnswering(
      jsonResponse(200, { success: true, records: [] }),
      jsonResponse(200, { success: true, bucket: 'day', totals: {}, series: [], keys: [] }),
      jsonResponse(200, { success: true, bucket: 'hour', totals: {}, series: [], keys: [] }),
      new Response('startTime,endTime\n', { status: 200, headers: { 'Content-Type': 'text/csv' } }),
    )
    const range = { start: 1000.4, end: 2000 }
    await api.records('f'.repeat(32), range, 50)
    await api.summary(null, range, 'day')
    await api.summary('f'.repeat(32), range, 'hour')
    const blob = await api.recordsCsv('f'.repeat(32), range)
    expect(await blob.text()).toBe('startTime,endTime\n')
    expect(fetch.mock.calls.map((c) => c[0])).toEqual([
      `/api/analytics/${'f'.repeat(32)}?startDate=1000&endDate=2000&limit=50`,
      '/api/analytics/summary?startDate=1000&endDate=2000&bucket=day',
      `/api/analytics/summary?keyId=${'f'.repeat(32)}&startDate=1000&endDate=2000&bucket=hour`,
      `/api/analytics/${'f'.repeat(32)}/csv?startDate=1000&endDate=2000`,
    ])
  })

  it('sends the optional fields of the nginx routes only when given', async () => {
    const ok = () => jsonResponse(200, { success: true, message: 'done' })
    const { api, fetch } = apiAnswering(ok(), ok(), ok(), ok())
    await api.obtainCertificates(['a.example.com'])
    await api.obtainCertificates(['a.example.com'], 'me@example.com')
    await api.writeDefaultConfig('a.example.com', ['10.0.0.0/8'])
    await api.writeDefaultConfig('a.example.com', [], 'serve')
    expect(fetch.mock.calls.map((c) => JSON.parse(String(c[1]?.body)))).toEqual([
      { domains: ['a.example.com'] },
      { domains: ['a.example.com'], email: 'me@example.com' },
      { domain: 'a.example.com', cidrGroups: ['10.0.0.0/8'] },
      { domain: 'a.example.com', cidrGroups: [], httpMode: 'serve' },
    ])
  })

  it('query() leaves out empty values', () => {
    expect(query({ a: 1, b: null, c: undefined, d: '', e: 'x y' })).toBe('?a=1&e=x+y')
    expect(query({})).toBe('')
  })
})
