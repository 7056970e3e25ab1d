import { describe, expect, it } from 'vitest'
import type { ApiKey } from '../src/api/types'
import { toLocalInput } from '../src/lib/format'
import { budgetText, keyQuery, keyState, limitsText, policyChange, policyErrors, policyForm, type PolicyForm } from '../src/lib/keyPolicy'

const NOW = Date.UTC(2026, 10, 29, 12, 30)
const plain: ApiKey = { id: 'a'.repeat(32), username: 'alice', key: 'sk-x', createdAt: '2026-11-01T10:00:00.000Z' }
const limited: ApiKey = {
  ...plain,
  expiresAt: '2027-01-31T11:00:00.000Z',
  models: ['llama3*', 'qwen2.5:*'],
  limits: { requestsPerMinute: 60, tokensPerDay: 2_000_000 },
}

function form(over: Partial<Omit<PolicyForm, 'limits'>> = {}, limits: Partial<PolicyForm['limits']> = {}): PolicyForm {
  const base = policyForm(plain)
  return { ...base, ...over, limits: { ...base.limits, ...limits } }
}

describe('key state and summary', () => {
  it('is disabled before expired, and expired only once the time has come', () => {
    expect(keyState(plain, NOW)).toBe('enabled')
    expect(keyState({ ...plain, enabled: true, expiresAt: new Date(NOW + 1).toISOString() }, NOW)).toBe('enabled')
    expect(keyState({ ...plain, expiresAt: new Date(NOW).toISOString() }, NOW)).toBe('expired')
    expect(keyState({ ...plain, enabled: false, expiresAt: new Date(NOW - 1).toISOString() }, NOW)).toBe('disabled')
  })

  it('lists the limits that are set, in a fixed order', () => {
    expect(limitsText(plain)).toEqual([])
    expect(limitsText({ ...plain, limits: { maxConcurrent: 4, tokensPerMinute: 100_000 } })).toEqual([
      '100,000 tokens/min',
      '4 at once',
    ])
  })
})

describe('the policy form', () => {
  it('starts from the key, empty meaning no expiry, all models, no limit', () => {
    expect(policyForm(plain)).toEqual({
      expires: '',
      models: '',
      limits: { requestsPerMinute: '', tokensPerMinute: '', tokensPerDay: '', maxConcurrent: '' },
      budgetPeriod: '',
      budgetTokens: '',
      budgetCost: '',
    })
    const filled = policyForm(limited)
    expect(filled.expires).toBe(toLocalInput(Date.parse('2027-01-31T11:00:00.000Z')))
    expect(filled.models).toBe('llama3*, qwen2.5:*')
    expect(filled.limits).toMatchObject({ requestsPerMinute: '60', tokensPerDay: '2000000', maxConcurrent: '' })
  })

  it.each([
    [{ requestsPerMinute: '0' }, 'requestsPerMinute', 'A whole number of 1 or more (empty: no limit).'],
    [{ tokensPerMinute: '-5' }, 'tokensPerMinute', 'A whole number of 1 or more (empty: no limit).'],
    [{ tokensPerDay: '1.5' }, 'tokensPerDay', 'A whole number of 1 or more (empty: no limit).'],
    [{ maxConcurrent: 'four' }, 'maxConcurrent', 'A whole number of 1 or more (empty: no limit).'],
    [{ tokensPerDay: '9007199254740992' }, 'tokensPerDay', 'Too large.'],
  ] as const)('refuses the limit %o', (limits, field, message) => {
    expect(policyErrors(form({}, limits))).toEqual({ [field]: message })
  })

  it('refuses what the api refuses in expiry and models', () => {
    expect(policyErrors(form({ expires: '2027-13-45' }))).toEqual({ expires: 'A date and time (empty: never expires).' })
    expect(policyErrors(form({ models: 'a*, b, a*' }))).toEqual({ models: '“a*” is listed twice.' })
    expect(policyErrors(form({ models: 'x'.repeat(201) }))).toEqual({ models: 'A pattern is at most 200 characters long.' })
    const many = Array.from({ length: 101 }, (_, i) => `m${i}`).join(',')
    expect(policyErrors(form({ models: many }))).toEqual({ models: 'At most 100 patterns.' })
  })

  it('refuses an expiry that has passed, unless it is the one the key has', () => {
    const now = Date.parse('2030-06-01T12:00:00')
    const past = { expires: toLocalInput(now - 60_000) }
    const error = 'That time has passed: pick one in the future (empty: never expires).'
    expect(policyErrors(form(past), undefined, now)).toEqual({ expires: error })
    expect(policyErrors(form({ expires: toLocalInput(now) }), undefined, now)).toEqual({ expires: error })
    expect(policyErrors(form({ expires: toLocalInput(now + 60_000) }), undefined, now)).toEqual({})
    const expired = { ...limited, expiresAt: new Date(now - 60_000).toISOString() }
    expect(policyErrors(policyForm(expired), expired, now)).toEqual({})
  })

  it('accepts a full form, and an empty one', () => {
    expect(policyErrors(form())).toEqual({})
    const full = form({ expires: '2099-01-01T12:00', models: 'llama3*\nqwen*' }, { requestsPerMinute: ' 60 ', maxConcurrent: '9007199254740991' })
    expect(policyErrors(full)).toEqual({})
  })

  it('sends only what changed, null to clear', () => {
    expect(policyChange(policyForm(limited), limited)).toEqual({})
    const cleared = policyForm(limited)
    cleared.expires = ''
    cleared.models = ' '
    cleared.limits.requestsPerMinute = ''
    cleared.limits.maxConcurrent = '3'
    expect(policyChange(cleared, limited)).toEqual({
      expiresAt: null,
      models: null,
      limits: { requestsPerMinute: null, maxConcurrent: 3 },
    })
    const set = form({ expires: '2027-01-01T12:00', models: 'llama3*, qwen*' }, { tokensPerMinute: '1000' })
    expect(policyChange(set, plain)).toEqual({
      expiresAt: new Date(2027, 0, 1, 12, 0).toISOString(),
      models: ['llama3*', 'qwen*'],
      limits: { tokensPerMinute: 1000 },
    })
  })
})

describe('the key list', () => {
  const key = (username: string, createdAt: string, usage?: ApiKey['usage']): ApiKey => ({
    id: username.padEnd(32, '0'), username, key: 'sk-x', createdAt, usage,
  })

  it('asks the api to search, filter and sort, in its words', () => {
    expect(keyQuery('', '', 'newest')).toEqual({ sort: 'createdAt', order: 'desc' })
    expect(keyQuery('  ali ', 'enabled', 'username')).toEqual({ search: 'ali', state: 'active', sort: 'username', order: 'asc' })
    expect(keyQuery('', 'expired', 'lastUsed')).toEqual({ state: 'expired', sort: 'lastUsed', order: 'desc' })
    expect(keyQuery('', 'disabled', 'tokensToday')).toEqual({ state: 'disabled', sort: 'tokensToday', order: 'desc' })
  })

  it('edits a budget: set, changed, checked, removed', () => {
    const plain = key('alice', '2026-11-01T00:00:00Z')
    const form = policyForm(plain)
    expect([form.budgetPeriod, form.budgetTokens, form.budgetCost]).toEqual(['', '', ''])
    expect(policyChange({ ...form, budgetPeriod: 'month', budgetCost: '12.50' }, plain)).toEqual({ budget: { period: 'month', cost: 12.5 } })
    expect(policyErrors({ ...form, budgetPeriod: 'day' })).toEqual({ budgetTokens: 'A budget needs tokens, an amount or both (or no period: no budget).' })
    expect(policyErrors({ ...form, budgetPeriod: 'day', budgetTokens: '1.5', budgetCost: '-3' })).toEqual({
      budgetTokens: 'A whole number of 1 or more (empty: none).',
      budgetCost: 'An amount above 0, such as 20 or 12.50 (empty: none).',
    })
    expect(policyErrors({ ...form, budgetTokens: 'junk' })).toEqual({}) // no period: nothing is sent
    const budgeted = { ...plain, budget: { period: 'week' as const, tokens: 1000 } }
    const again = policyForm(budgeted)
    expect([again.budgetPeriod, again.budgetTokens]).toEqual(['week', '1000'])
    expect(policyChange(again, budgeted)).toEqual({})
    expect(policyChange({ ...again, budgetTokens: '2000' }, budgeted)).toEqual({ budget: { period: 'week', tokens: 2000 } })
    expect(policyChange({ ...again, budgetPeriod: '' }, budgeted)).toEqual({ budget: null })
  })

  it('says what a budget has used and has left', () => {
    const budget = { period: 'month' as const, resetsAt: 0, tokens: 1_000_000, usedTokens: 250_000, remainingTokens: 750_000 }
    expect(budgetText(budget)).toBe('Budget this month: 250,000 of 1,000,000 tokens used (750,000 left)')
    expect(budgetText({ period: 'day', resetsAt: 0, cost: 20, usedCost: 4.2, remainingCost: 15.8 })).toBe(
      'Budget this day: 4.20 of 20.00 spent (15.80 left)',
    )
  })
})
