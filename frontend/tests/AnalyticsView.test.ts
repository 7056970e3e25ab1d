import { flushPromises } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError } from '../src/api/client'
import type { ApiKey, RequestRecord, Summary } from '../src/api/types'
import RequestTable from '../src/components/RequestTable.vue'
import { clearNotices, useNotices } from '../src/composables/notices'
import { DAY, HOUR } from '../src/lib/analytics'
import { cleanQuery } from '../src/composables/route'
import AnalyticsView from '../src/views/AnalyticsView.vue'
import { fakeApi, mountWithApi } from './fakes'

const NOW = Date.UTC(2026, 10, 29, 12)
const alice: ApiKey = { id: 'a'.repeat(32), username: 'alice', key: 'sk-x', createdAt: '2026-11-01T00:00:00Z' }

function summary(over: Partial<Summary> = {}): Summary {
  return {
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

function record(i: number, over: Partial<RequestRecord> = {}): RequestRecord {
  return {
    startTime: NOW - i * HOUR, endTime: NOW - i * HOUR + 300, status: 200, model: `model-${i}`, upstream: 'http://10.0.0.2:8000/v1',
    path: '/v1/chat/completions', stream: false, ttfbMs: 40, promptTokens: 5, completionTokens: 2, bytesIn: 1, bytesOut: 2, error: null,
    queueMs: null, usageEstimated: false,
    ...over,
  }
}

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
    const api = fakeApi({ listKeys: async () => [alice], summary: async () => summary() })
    const view = await mountAnalytics(api)
    expect(api.summary).toHaveBeenCalledWith(null, { start: NOW - 7 * DAY, end: NOW }, 'hour')
    expect(api.records).not.toHaveBeenCalled()
    expect(view.find('[data-testid="total-requests"]').text()).toBe('3')
    expect(view.find('[data-testid="total-failures"]').text()).toBe('1 33.3 %')
    expect(view.findAll('option').map((o) => o.text())).toEqual(['All keys', 'alice', 'dave (deleted)'])
    expect(view.findAll('tbody tr').map((r) => r.find('td').text())).toEqual(['alice', 'dave (deleted)'])
    expect(view.find('.charts-stub').exists()).toBe(true)
  })

  it("loads a key's requests, and follows the key in the address", async () => {
    const api = fakeApi({
      listKeys: async () => [alice],
      summary: async () => summary(),
      records: async () => [record(2), record(1, { endTime: null, status: 502, error: 'upstream unreachable' })],
    })
    const view = await mountAnalytics(api)
    await view.find('#analytics-key').setValue(alice.id)
    await flushPromises()
    expect(view.asked).toEqual([{ key: alice.id }])
    expect(api.summary).toHaveBeenLastCalledWith(alice.id, { start: NOW - 7 * DAY, end: NOW }, 'hour')
    expect(api.records).toHaveBeenCalledWith(alice.id, { start: NOW - 7 * DAY, end: NOW }, 10_000)
    const rows = view.findAll('tbody tr')
    expect(rows[0]!.text()).toContain('Failed')
    expect(rows[0]!.text()).toContain('upstream unreachable')
    expect(rows[1]!.text()).toContain('Success')
    expect(rows[1]!.text()).toContain('300 ms')
  })

  it('asks for days over a month, and checks a custom range before asking', async () => {
    const api = fakeApi({ listKeys: async () => [], summary: async () => summary({ bucket: 'day' }) })
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
    const api = fakeApi({ listKeys: async () => [alice], summary: async () => summary({ bucket: 'day' }), records: async () => [] })
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
    const api = fakeApi({ listKeys: async () => [alice], summary: async () => summary(), records: async () => [record(1)] })
    const view = await mountAnalytics(api, { key: alice.id })
    const table = view.find('[aria-label="Requests"] table')
    const headers = table.findAll('thead th').map((th) => th.text())
    const labels = table.findAll('tbody tr')[0]!.findAll('td').map((td) => td.attributes('data-label'))
    expect(labels).toEqual(headers)
  })

  it('shows errors in the page', async () => {
    const api = fakeApi({ listKeys: async () => [], summary: async () => Promise.reject(new ApiError(400, 'Invalid start date: Timestamp must be positive')) })
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
    const api = fakeApi({ listKeys: async () => [], summary: async () => summary({ series: [] }) })
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

describe('RequestTable', () => {
  it('pages newest first and filters failures', async () => {
    const records = Array.from({ length: 120 }, (_, i) => record(i, i % 10 === 0 ? { endTime: null, status: 504 } : {}))
    const table = await mountWithApi(RequestTable, fakeApi(), { props: { records: [...records].reverse(), truncated: false } })
    expect(table.findAll('tbody tr')).toHaveLength(50)
    expect(table.find('tbody tr').text()).toContain('model-0')
    expect(table.find('[role="status"]').text()).toContain('50 of 120 requests')
    await table.find('input[type="checkbox"]').setValue(true)
    expect(table.findAll('tbody tr')).toHaveLength(12)
    await table.find('input[type="checkbox"]').setValue(false)
    await table.findAll('button').find((b) => b.text().startsWith('Show more'))!.trigger('click')
    expect(table.findAll('tbody tr')).toHaveLength(120)
  })

  it('shows the time queued, and estimated tokens with a ~ and why', async () => {
    const records = [
      record(0, { queueMs: 1500, usageEstimated: true, promptTokens: 1200, completionTokens: 30 }),
      record(1, { queueMs: null }),
    ]
    const table = await mountWithApi(RequestTable, fakeApi(), { props: { records, truncated: false } })
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
