import { flushPromises } from '@vue/test-utils'
import { afterEach, describe, expect, it } from 'vitest'
import type { BreakdownRow } from '../src/api/types'
import BreakdownTable from '../src/components/BreakdownTable.vue'
import { fakeApi, mountWithApi } from './fakes'

const range = { start: 1_000, end: 2_000 }

function row(over: Partial<BreakdownRow>): BreakdownRow {
  return {
    value: 'llama3:8b', requests: 900, failures: 12, errorRate: 12 / 900, promptTokens: 100_000, completionTokens: 250_000,
    streams: 700, latencyP50: 1500, latencyP95: 6100, latencyP99: 9000, ttfbP50: 120, ttfbP95: 480, tokensPerSecond: 41.7,
    cost: null, lastUsed: 1_500, ...over,
  }
}

afterEach(() => document.body.replaceChildren())

describe('BreakdownTable', () => {
  it('shows each model with its error rate, percentiles and generation speed', async () => {
    const api = fakeApi({ breakdown: async () => [row({}), row({ value: '', requests: 3, failures: 3, errorRate: 1, tokensPerSecond: null })] })
    const view = await mountWithApi(BreakdownTable, api, { props: { keyId: '', range, reload: 0 } })
    expect(api.breakdown).toHaveBeenCalledWith('model', null, range)
    const [first, none] = view.findAll('tbody tr')
    expect(first!.text()).toContain('llama3:8b')
    expect(first!.text()).toContain('1.3 %')
    expect(first!.text()).toContain('100,000 / 250,000')
    expect(first!.text()).toContain('1.50 s')
    expect(first!.text()).toContain('42 tok/s')
    expect(none!.find('th').text()).toBe('(none)')
    expect(none!.findAll('td')[2]!.classes()).toContain('error-text')
  })

  it('breaks down by upstream and by key, for one key or all', async () => {
    const api = fakeApi({
      breakdown: async (by: string) =>
        by === 'key' ? [row({ value: 'a'.repeat(32), username: 'alice', cost: 0.3125 })] : [row({ value: 'http://gpu1:8000/v1' })],
    })
    const view = await mountWithApi(BreakdownTable, api, { props: { keyId: 'b'.repeat(32), range, reload: 0 } })
    await view.findAll('button').find((b) => b.text() === 'By upstream')!.trigger('click')
    await flushPromises()
    expect(api.breakdown).toHaveBeenLastCalledWith('upstream', 'b'.repeat(32), range)
    expect(view.find('tbody th').text()).toBe('gpu1:8000')
    await view.findAll('button').find((b) => b.text() === 'By key')!.trigger('click')
    await flushPromises()
    expect(view.find('tbody th').text()).toBe('alice')
    expect(view.find('tbody tr').text()).toContain('0.3125')
  })
})
