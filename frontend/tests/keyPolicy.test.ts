import { describe, expect, it } from 'vitest'
import type { ApiKey } from '../src/api/types'
import { toLocalInput } from '../src/lib/format'
import { budgetText, keyState, limitsText, policyChange, policyErrors, policyForm, sortKeys, type PolicyForm } from '../src/lib/keyPolicy'

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
  const used = (lastUsed: number | null, tokensToday: number) => ({ lastUsed, requestsToday: 1, tokensToday, budget: null })

  it('sorts by name, last use and tokens today, ties newest first', () => {
    const a = key('carol', '2026-11-01T00:00:00Z', used(5, 10))
    const b = key('alice', '2026-11-03T00:00:00Z', used(9, 10))
    const c = key('bob', '2026-11-02T00:00:00Z')
    expect(sortKeys([a, b, c], 'newest').map((k) => k.username)).toEqual(['alice', 'bob', 'carol'])
    expect(sortKeys([a, b, c], 'username').map((k) => k.username)).toEqual(['alice', 'bob', 'carol'])
    expect(sortKeys([a, b, c], 'lastUsed').map((k) => k.username)).toEqual(['alice', 'carol', 'bob'])
    expect(sortKeys([a, b, c], 'tokensToday').map((k) => k.username)).toEqual(['alice', 'carol', 'bob'])
  })

  it('says what a budget has used and has left', () => {
    const budget = { period: 'month' as const, resetsAt: 0, tokens: 1_000_000, usedTokens: 250_000, remainingTokens: 750_000 }
    expect(budgetText(budget)).toBe('Budget this month: 250,000 of 1,000,000 tokens used (750,000 left)')
    expect(budgetText({ period: 'day', resetsAt: 0, cost: 20, usedCost: 4.2, remainingCost: 15.8 })).toBe(
      'Budget this day: 4.20 of 20.00 spent (15.80 left)',
    )
  })
})
