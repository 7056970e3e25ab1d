import { flushPromises } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError } from '../src/api/client'
import type { ApiKey, LoggedRequest, RequestPage, Summary } from '../src/api/types'
import RequestLog from '../src/components/RequestLog.vue'
import { clearNotices, useNotices } from '../src/composables/notices'
import { DAY, HOUR } from '../src/lib/analytics'
import { cleanQuery } from '../src/composables/route'
import AnalyticsView from '../src/views/AnalyticsView.vue'
import { fakeApi, mountWithApi } from './fakes'

const NOW = Date.UTC(2026, 10, 29, 12)
const alice: ApiKey = { id: 'a'.repeat(32), username: 'alice', key: 'sk-x', createdAt: '2026-11-01T00:00:00Z' }

function summary(over: Partial<Summary> = {}): Summary {
  return {
    success: true,
    bucket: 'hour',
    startDate: NOW - 7 * DAY,
    endDate: NOW,
    totals: { requests: 3, failures: 1, promptTokens: 30, completionTokens: 12, latencyP50: 250, latencyP95: 1200 },
    series: [],
    keys: [
      { keyId: alice.id, username: 'alice', requests: 2, failures: 1, promptTokens: 20, completionTokens: 8 },
      { keyId: 'd'.repeat(32), username: 'dave', requests: 1, failures: 0, promptTokens: 10, completionTokens: 4 },
    ],
    ...over,
  }
}

function logged(i: number, over: Partial<LoggedRequest> = {}): LoggedRequest {
  return {
    id: 1000 - i, requestId: `req${String(i).padStart(13, '0')}`, keyId: alice.id, username: 'alice',
    startTime: NOW - i * HOUR, endTime: NOW - i * HOUR + 300, durationMs: 300, status: 200, outcome: 'ok', method: 'POST',
    path: '/v1/chat/completions', model: `model-${i}`, upstream: 'http://10.0.0.2:8000/v1', stream: false, ttfbMs: 40,
    queueMs: null, promptTokens: 5, completionTokens: 2, usageEstimated: false, bytesIn: 1, bytesOut: 2, error: null,
    endUser: null, upstreamModel: null,
    ...over,
  }
}

const page = (requests: LoggedRequest[], nextCursor: string | null = null): RequestPage => ({ requests, nextCursor })

const stubs = { AnalyticsCharts: { props: ['summary'], template: '<div class="charts-stub" />' } }

/** The view with its query in an address of its own: what it asks for becomes its query. */
async function mountAnalytics(api: ReturnType<typeof fakeApi>, query: Record<string, string> = {}) {
  const asked: Record<string, string | undefined>[] = []
  const view = await mountWithApi(AnalyticsView, api, {
    props: {
      query,
      onNavigate: async (next: Record<string, string | undefined>) => {
        asked.push(next)
        await view.setProps({ query: cleanQuery('analytics', next) })
      },
    },
    global: { stubs },
  })
  return Object.assign(view, { asked })
}

beforeEach(() => {
  clearNotices()
  vi.useFakeTimers({ toFake: ['Date'] })
  vi.setSystemTime(NOW)
})
afterEach(() => {
  vi.useRealTimers()
  document.body.replaceChildren()
})

describe('AnalyticsView', () => {
  it('shows all keys for the last 7 days by default, deleted keys included', async () => {
    const api = fakeApi({ breakdown: async () => [], listKeys: async () => [alice], summary: async () => summary(), requestLog: async () => page([]) })
    const view = await mountAnalytics(api)
    expect(api.summary).toHaveBeenCalledWith(null, { start: NOW - 7 * DAY, end: NOW }, 'hour')
    expect(api.records).not.toHaveBeenCalled() // the log is paged by the api, not loaded whole
    expect(api.requestLog).toHaveBeenCalledWith({ sort: 'time', order: 'desc' }, { start: NOW - 7 * DAY, end: NOW }, null, 50)
    expect(view.find('[data-testid="total-requests"]').text()).toBe('3')
    expect(view.find('[data-testid="total-failures"]').text()).toBe('1 33.3 %')
    expect(view.findAll('#analytics-key option').map((o) => o.text())).toEqual(['All keys', 'alice', 'dave (deleted)'])
    expect(view.find('[aria-label="Usage per key"]').findAll('tbody tr').map((r) => r.find('td').text())).toEqual(['alice', 'dave (deleted)'])
    expect(view.find('.charts-stub').exists()).toBe(true)
  })

  it("loads a key's requests, and follows the key in the address", async () => {
    const api = fakeApi({
      breakdown: async () => [],
      listKeys: async () => [alice],
      summary: async () => summary(),
      requestLog: async () => page([logged(1, { endTime: null, status: 502, outcome: 'server_error', error: 'upstream unreachable' }), logged(2)]),
    })
    const view = await mountAnalytics(api)
    await view.find('#analytics-key').setValue(alice.id)
    await flushPromises()
    expect(view.asked).toEqual([{ key: alice.id }])
    expect(api.summary).toHaveBeenLastCalledWith(alice.id, { start: NOW - 7 * DAY, end: NOW }, 'hour')
    expect(api.requestLog).toHaveBeenLastCalledWith({ sort: 'time', order: 'desc', keyId: alice.id }, { start: NOW - 7 * DAY, end: NOW }, null, 50)
    const rows = view.find('[aria-label="Requests"]').findAll('tbody tr')
    expect(rows[0]!.text()).toContain('Failed')
    expect(rows[0]!.text()).toContain('upstream unreachable')
    expect(rows[1]!.text()).toContain('Success')
    expect(rows[1]!.text()).toContain('300 ms')
  })

  it('asks for days over a month, and checks a custom range before asking', async () => {
    const api = fakeApi({ breakdown: async () => [], listKeys: async () => [], summary: async () => summary({ bucket: 'day' }), requestLog: async () => page([]) })
    const view = await mountAnalytics(api)
    await view.findAll('button').find((b) => b.text() === 'Last 30 days')!.trigger('click')
    await flushPromises()
    expect(api.summary).toHaveBeenLastCalledWith(null, { start: NOW - 30 * DAY, end: NOW }, 'day')

    await view.findAll('button').find((b) => b.text() === 'Custom range')!.trigger('click')
    const calls = api.summary.mock.calls.length
    await view.find('#range-start').setValue('2026-11-20T10:00')
    await view.find('#range-end').setValue('2026-11-10T10:00')
    await view.find('#range-end').element.closest('form')!.dispatchEvent(new Event('submit'))
    await flushPromises()
    expect(view.find('#range-error').text()).toBe('The start must be before the end.')
    expect(api.summary.mock.calls.length).toBe(calls)

    await view.find('#range-end').setValue('2026-11-21T10:00')
    await view.find('#range-end').element.closest('form')!.dispatchEvent(new Event('submit'))
    await flushPromises()
    expect(view.find('#range-error').exists()).toBe(false)
    const [, range, bucket] = api.summary.mock.calls.at(-1)!
    expect(range.end - range.start).toBe(DAY)
    expect(bucket).toBe('hour')
  })

  it('puts the period in the address and shows what the address says', async () => {
    const api = fakeApi({ breakdown: async () => [], listKeys: async () => [alice], summary: async () => summary({ bucket: 'day' }), requestLog: async () => page([]) })
    const view = await mountAnalytics(api, { key: alice.id, period: '30d' })
    expect(api.summary).toHaveBeenCalledWith(alice.id, { start: NOW - 30 * DAY, end: NOW }, 'day')
    expect(view.find('button[aria-pressed="true"]').text()).toBe('Last 30 days')
    expect((view.find('#analytics-key').element as HTMLSelectElement).value).toBe(alice.id)

    await view.findAll('button').find((b) => b.text() === 'Last 24 hours')!.trigger('click')
    await flushPromises()
    expect(view.asked.at(-1)).toEqual({ key: alice.id, period: '24h', from: undefined, to: undefined })
    expect(api.summary).toHaveBeenLastCalledWith(alice.id, { start: NOW - DAY, end: NOW }, 'hour')

    await view.findAll('button').find((b) => b.text() === 'Last 7 days')!.trigger('click')
    await flushPromises()
    expect(cleanQuery('analytics', view.asked.at(-1)!)).toEqual({ key: alice.id }) // the default is not written

    // Back to a custom range: the address alone brings it back.
    await view.setProps({ query: { period: 'custom', from: '2026-11-20T10:00', to: '2026-11-21T10:00' } })
    await flushPromises()
    const [keyId, range] = api.summary.mock.calls.at(-1)!
    expect(keyId).toBeNull()
    expect(range.end - range.start).toBe(DAY)
    expect((view.find('#range-start').element as HTMLInputElement).value).toBe('2026-11-20T10:00')
  })

  it('names each request cell by its column, for the phone layout that hides the header', async () => {
    const api = fakeApi({ breakdown: async () => [], listKeys: async () => [alice], summary: async () => summary(), requestLog: async () => page([logged(1)]) })
    const view = await mountAnalytics(api, { key: alice.id })
    const table = view.find('[aria-label="Requests"] table')
    const headers = table.findAll('thead th').map((th) => th.text())
    const labels = table.findAll('tbody tr')[0]!.findAll('td').map((td) => td.attributes('data-label'))
    expect(labels).toEqual(headers)
  })

  it('shows errors in the page', async () => {
    const api = fakeApi({ breakdown: async () => [], listKeys: async () => [], requestLog: async () => page([]), summary: async () => Promise.reject(new ApiError(400, 'Invalid start date: Timestamp must be positive')) })
    const view = await mountAnalytics(api)
    expect(view.find('[role="alert"]').text()).toBe('Invalid start date: Timestamp must be positive')
  })

  it('exports the summary of all keys as CSV, made in the page', async () => {
    const created: Blob[] = []
    vi.spyOn(URL, 'createObjectURL').mockImplementation((blob) => {
      created.push(blob as Blob)
      return 'blob:x'
    })
    vi.spyOn(URL, 'revokeObjectURL').mockImplementation(() => {})
    const api = fakeApi({ breakdown: async () => [], listKeys: async () => [], summary: async () => summary({ series: [] }), requestLog: async () => page([]) })
    const view = await mountAnalytics(api)
    await view.findAll('button').find((b) => b.text() === 'Export CSV')!.trigger('click')
    await flushPromises()
    expect(created).toHaveLength(1)
    const text = await created[0]!.text()
    expect(text.split('\n')[0]).toBe('bucketStart,requests,failures,promptTokens,completionTokens,latencyP50Ms,latencyP95Ms,ttfbP50Ms')
    expect(text.split('\n')).toHaveLength(7 * 24 + 1 + 2) // every hour of the week, the header, a last newline
    expect(useNotices().notices.at(-1)?.text).toBe('Exported llmp-all-keys-2026-11-22-to-2026-11-29.csv')
  })
})

describe('RequestLog', () => {
  const range = { start: NOW - DAY, end: NOW }
  const mountLog = (api: ReturnType<typeof fakeApi>, keyId = alice.id) =>
    mountWithApi(RequestLog, api, { props: { keyId, range, reload: 0 } })

  it('pages with the api cursor, never loading more than a page', async () => {
    const first = Array.from({ length: 50 }, (_, i) => logged(i))
    const second = Array.from({ length: 20 }, (_, i) => logged(50 + i))
    const api = fakeApi({ requestLog: vi.fn().mockResolvedValueOnce(page(first, 'c1')).mockResolvedValueOnce(page(second)) })
    const log = await mountLog(api)
    expect(log.findAll('tbody tr')).toHaveLength(50)
    expect(log.find('[role="status"]').text()).toBe('50 requests shown, more to load, newest first')
    await log.findAll('button').find((b) => b.text() === 'Show 50 more')!.trigger('click')
    await flushPromises()
    expect(api.requestLog).toHaveBeenLastCalledWith({ sort: 'time', order: 'desc', keyId: alice.id }, range, 'c1', 50)
    expect(log.findAll('tbody tr')).toHaveLength(70)
    expect(log.findAll('button').some((b) => b.text() === 'Show 50 more')).toBe(false)
  })

  it('filters and sorts on the server, and checks the status first', async () => {
    const api = fakeApi({ requestLog: async () => page([logged(1, { outcome: 'server_error', status: 504, endTime: null })]) })
    const log = await mountLog(api, '')
    await log.find('#log-status').setValue('five')
    await log.find('form').trigger('submit')
    expect(log.find('#log-status-error').text()).toContain('A status is a number')
    expect(api.requestLog).toHaveBeenCalledTimes(1)
    await log.find('#log-status').setValue('504')
    await log.find('#log-outcome').setValue('server_error')
    await log.find('#log-stream').setValue('false')
    await log.find('#log-model').setValue(' llama3:8b ')
    await log.find('#log-sort').setValue('latency')
    expect(log.find('#log-order').findAll('option').map((o) => o.text())).toEqual(['Slowest first', 'Fastest first'])
    await log.find('#log-order').setValue('asc')
    await log.find('form').trigger('submit')
    await flushPromises()
    expect(api.requestLog).toHaveBeenLastCalledWith(
      { outcome: 'server_error', status: '504', stream: 'false', model: 'llama3:8b', sort: 'latency', order: 'asc' },
      range,
      null,
      50,
    )
    const row = log.find('tbody tr')
    expect(row.text()).toContain('Failed')
    expect(row.text()).toContain('server error (5xx)')
    expect(row.find('[data-label="Key"]').text()).toBe('alice') // every key: the key is a column
    expect(log.find('[role="status"]').text()).toBe('1 request shown, fastest first, filtered')
  })

  it("shows one request's details with the id its client saw", async () => {
    const api = fakeApi({ requestLog: async () => page([logged(3, { stream: true, error: null, endUser: 'u-42' })]) })
    const log = await mountLog(api)
    const button = log.find('tbody button')
    expect(button.text()).toBe('Details of request req0000000000003')
    await button.trigger('click')
    expect(button.attributes('aria-expanded')).toBe('true')
    const facts = log.find('dl[aria-label="Request req0000000000003"]')
    expect(facts.text()).toContain('Request idreq0000000000003')
    expect(facts.text()).toContain('RequestPOST /v1/chat/completions')
    expect(facts.text()).toContain('Streamedyes')
    expect(facts.text()).toContain('End useru-42') // the OpenAI `user` field
  })

  it('shows the time queued, and estimated tokens with a ~ and why', async () => {
    const api = fakeApi({
      breakdown: async () => [],
      requestLog: async () =>
        page([logged(0, { queueMs: 1500, usageEstimated: true, promptTokens: 1200, completionTokens: 30 }), logged(1, { queueMs: null })]),
    })
    const table = await mountLog(api)
    const headers = table.findAll('th').map((h) => h.text())
    const cell = (row: number, header: string) => table.findAll('tbody tr')[row]!.findAll('td')[headers.indexOf(header)]!
    expect(cell(0, 'Queued').text()).toBe('1.50 s')
    expect(cell(1, 'Queued').text()).toBe('—')
    const estimated = cell(0, 'Tokens in / out')
    expect(estimated.text()).toMatch(/^~1,200 \/ 30/)
    expect(estimated.attributes('title')).toBe('Estimated by llmp: the upstream did not report token usage')
    expect(estimated.find('.visually-hidden').text()).toContain('estimated')
    expect(cell(1, 'Tokens in / out').text()).toBe('5 / 2')
    expect(cell(1, 'Tokens in / out').attributes('title')).toBeUndefined()
  })
})
