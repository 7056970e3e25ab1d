// A key's policy (services/api/validation.py): its state, how to show it, and the edit form,
// checked here by the api's rules before it is sent. Pure functions.

import type { ApiKey, BudgetUse, KeyUpdate, LimitName } from '../api/types'
import { count, fromLocalInput, toLocalInput } from './format'
import { splitList } from './validation'

export const LIMITS: readonly { name: LimitName; label: string; unit: string }[] = [
  { name: 'requestsPerMinute', label: 'Requests per minute', unit: 'requests/min' },
  { name: 'tokensPerMinute', label: 'Tokens per minute', unit: 'tokens/min' },
  { name: 'tokensPerDay', label: 'Tokens per day', unit: 'tokens/day' },
  { name: 'maxConcurrent', label: 'Concurrent requests', unit: 'at once' },
]

// The api's bounds (MAX_PATTERNS, MAX_PATTERN_LENGTH, Joi's safe numbers).
export const MAX_PATTERNS = 100
export const MAX_PATTERN_LENGTH = 200

export type KeyState = 'enabled' | 'disabled' | 'expired'

/** Disabled wins over expired: enabling it again would not make it work. */
export function keyState(key: ApiKey, now: number = Date.now()): KeyState {
  if (key.enabled === false) return 'disabled'
  if (key.expiresAt && Date.parse(key.expiresAt) <= now) return 'expired'
  return 'enabled'
}

/** `['60 requests/min', '4 at once']`, in the order of LIMITS. */
export function limitsText(key: ApiKey): string[] {
  return LIMITS.filter(({ name }) => key.limits?.[name] != null).map(
    ({ name, unit }) => `${count(key.limits?.[name])} ${unit}`,
  )
}

/** The edit form's text fields; empty means no expiry, every model, no limit. */
export interface PolicyForm {
  /** an `<input type="datetime-local">` value, local time */
  expires: string
  /** patterns separated by commas, spaces or lines */
  models: string
  limits: Record<LimitName, string>
}

export type PolicyErrors = Partial<Record<'expires' | 'models' | LimitName, string>>

export function policyForm(key: ApiKey): PolicyForm {
  const limits = {} as Record<LimitName, string>
  for (const { name } of LIMITS) limits[name] = key.limits?.[name]?.toString() ?? ''
  return {
    expires: key.expiresAt ? toLocalInput(Date.parse(key.expiresAt)) : '',
    models: (key.models ?? []).join(', '),
    limits,
  }
}

function limitError(text: string): string | undefined {
  const value = text.trim()
  if (!value) return undefined
  if (!/^\d+$/.test(value) || Number(value) < 1) return 'A whole number of 1 or more (empty: no limit).'
  if (!Number.isSafeInteger(Number(value))) return 'Too large.'
  return undefined
}

/** What the api would refuse in the form, by field; an empty object when it is fine. An
 * expiry must be in the future, unless it is the one `key` has (then it is not sent). */
export function policyErrors(form: PolicyForm, key?: ApiKey, now: number = Date.now()): PolicyErrors {
  const errors: PolicyErrors = {}
  const expires = form.expires.trim()
  const moment = expires ? fromLocalInput(expires) : null
  if (expires && moment === null) {
    errors.expires = 'A date and time (empty: never expires).'
  } else if (moment !== null && moment <= now && (!key || expires !== policyForm(key).expires)) {
    errors.expires = 'That time has passed: pick one in the future (empty: never expires).'
  }
  const patterns = splitList(form.models)
  const long = patterns.find((p) => p.length > MAX_PATTERN_LENGTH)
  const twice = patterns.find((p, i) => patterns.indexOf(p) !== i)
  if (patterns.length > MAX_PATTERNS) errors.models = `At most ${MAX_PATTERNS} patterns.`
  else if (long) errors.models = `A pattern is at most ${MAX_PATTERN_LENGTH} characters long.`
  else if (twice) errors.models = `“${twice}” is listed twice.`
  for (const { name } of LIMITS) {
    const error = limitError(form.limits[name])
    if (error) errors[name] = error
  }
  return errors
}

/** The PATCH body for what the form changes in `key`; empty when it changes nothing. */
export function policyChange(form: PolicyForm, key: ApiKey): KeyUpdate {
  const before = policyForm(key)
  const change: KeyUpdate = {}
  if (form.expires.trim() !== before.expires) {
    const ms = fromLocalInput(form.expires.trim())
    change.expiresAt = ms === null ? null : new Date(ms).toISOString()
  }
  const patterns = splitList(form.models)
  if (patterns.join(', ') !== before.models) change.models = patterns.length ? patterns : null
  for (const { name } of LIMITS) {
    const value = form.limits[name].trim()
    if (value !== before.limits[name]) (change.limits ??= {})[name] = value ? Number(value) : null
  }
  return change
}

export type KeySort = 'newest' | 'username' | 'lastUsed' | 'tokensToday'

export const KEY_SORTS: { value: KeySort; label: string }[] = [
  { value: 'newest', label: 'Newest first' },
  { value: 'username', label: 'Username' },
  { value: 'lastUsed', label: 'Last used' },
  { value: 'tokensToday', label: 'Most tokens today' },
]

/** The keys in the order asked for; ties (and keys never used) newest first. */
export function sortKeys(keys: readonly ApiKey[], by: KeySort): ApiKey[] {
  const newest = (a: ApiKey, b: ApiKey) => b.createdAt.localeCompare(a.createdAt)
  const compare: Record<KeySort, (a: ApiKey, b: ApiKey) => number> = {
    newest,
    username: (a, b) => a.username.localeCompare(b.username),
    lastUsed: (a, b) => (b.usage?.lastUsed ?? -1) - (a.usage?.lastUsed ?? -1),
    tokensToday: (a, b) => (b.usage?.tokensToday ?? 0) - (a.usage?.tokensToday ?? 0),
  }
  return [...keys].sort((a, b) => compare[by](a, b) || newest(a, b))
}

/** `Budget this month: 250,000 of 1,000,000 tokens used (750,000 left); 4.20 of 20.00 spent`. */
export function budgetText(budget: BudgetUse): string {
  const parts: string[] = []
  if (budget.tokens != null) {
    parts.push(`${count(budget.usedTokens ?? 0)} of ${count(budget.tokens)} tokens used (${count(budget.remainingTokens ?? 0)} left)`)
  }
  if (budget.cost != null) {
    parts.push(`${(budget.usedCost ?? 0).toFixed(2)} of ${budget.cost.toFixed(2)} spent (${(budget.remainingCost ?? 0).toFixed(2)} left)`)
  }
  return `Budget this ${budget.period}: ${parts.join('; ')}`
}
