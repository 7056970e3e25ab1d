import { afterEach, describe, expect, it } from 'vitest'
import type { Spend } from '../src/api/types'
import SpendTable from '../src/components/SpendTable.vue'
import { money, periodLabel, pricesErrors, pricesForm, pricesOf } from '../src/lib/spend'
import { fakeApi, mountWithApi } from './fakes'
import { flushPromises } from '@vue/test-utils'

describe('spend', () => {
  afterEach(() => document.body.replaceChildren())

  it('reads periods in UTC and amounts in the currency', () => {
    const t = Date.UTC(2026, 10, 30) // a Monday
    expect(periodLabel(t, 'day')).toBe('2026-11-30')
    expect(periodLabel(t, 'week')).toBe('week of 2026-11-30')
    expect(periodLabel(Date.UTC(2026, 11, 1), 'month')).toBe('Dec 2026')
    expect(money(12.5, 'USD')).toBe('12.50 USD')
    expect(money(0.00042, 'EUR')).toBe('0.0004 EUR')
    expect(money(0, 'USD')).toBe('0.00 USD')
  })

  it('checks the prices by the api rules and sends what the lines say', () => {
    const form = pricesForm({ currency: 'USD', models: { 'llama3:70b': { prompt: 0.6, completion: 0.8 } } })
    expect(form.lines).toEqual([{ model: 'llama3:70b', prompt: '0.6', completion: '0.8' }])
    expect(pricesErrors(form)).toEqual([])
    form.lines.push({ model: '', prompt: '', completion: '' }) // an empty line is ignored
    form.lines.push({ model: ' qwen ', prompt: '0.1', completion: '2' })
    expect(pricesOf(form)).toEqual({ currency: 'USD', models: { 'llama3:70b': { prompt: 0.6, completion: 0.8 }, qwen: { prompt: 0.1, completion: 2 } } })
    expect(
      pricesErrors({
        currency: 'usd',
        lines: [
          { model: 'a', prompt: '-1', completion: '2000000' },
          { model: 'a', prompt: '1', completion: '1' },
          { model: '', prompt: '1', completion: '' },
        ],
      }),
    ).toEqual([
      'The currency is a three-letter code such as USD or EUR.',
      '“a”: the prompt price must be a number such as 0.6.',
      '“a”: the completion price must be at most 1,000,000.',
      '“a” is listed twice.',
      'Line 3: the model name is missing.',
      'Line 3: the completion price must be a number such as 0.6.',
    ])
  })

  it('shows cost per period and key, asks again for another period, and names unpriced models', async () => {
    const answer = (period: 'day' | 'month'): Spend => ({
      success: true, by: 'key', period, startDate: 0, endDate: 1, currency: 'USD', total: 3.5, unpricedModels: ['mystery'],
      series: [{ time: Date.UTC(2026, 11, 1), cost: 3.5, rows: [
        { value: 'a'.repeat(32), username: 'alice', requests: 3, promptTokens: 1000, completionTokens: 2000, cost: 3 },
        { value: 'b'.repeat(32), requests: 1, promptTokens: 10, completionTokens: 20, cost: 0.5 },
      ] }],
    })
    const api = fakeApi({ spend: async (_by: string, period: 'day' | 'month') => answer(period) })
    const view = await mountWithApi(SpendTable, api, { props: { keyId: '', range: { start: 0, end: 1 }, reload: 0 } })
    expect(api.spend).toHaveBeenLastCalledWith('key', 'day', null, { start: 0, end: 1 })
    expect(view.find('[data-testid="spend-total"]').text()).toBe('3.50 USD')
    expect(view.find('.period-row').findAll('th, td').map((c) => c.text())).toEqual(['2026-12-01', '3.50 USD'])
    expect(view.findAll('tbody tr:not(.period-row)').map((r) => r.findAll('td').map((c) => c.text()))).toEqual([
      ['alice', '3', '1,000', '2,000', '3.00 USD'],
      ['bbbbbbbb… (deleted)', '1', '10', '20', '0.5000 USD'],
    ])
    expect(view.find('[data-testid="unpriced"]').text()).toContain('No price for mystery')
    await view.findAll('button').find((b) => b.text() === 'Per month')!.trigger('click')
    await flushPromises()
    expect(api.spend).toHaveBeenLastCalledWith('key', 'month', null, { start: 0, end: 1 })
    expect(view.find('.period-row th').text()).toBe('Dec 2026')
  })
})
