// A key's policy (services/api/validation.py): its state, how to show it, and the edit form,
// checked here by the api's rules before it is sent. Pure functions.

import type { ApiKey, Budget, BudgetPeriod, BudgetUse, KeyQuery, KeyUpdate, LimitName } from '../api/types'
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

// The api's bound on a budget in money (shared/apikeys.py MAX_BUDGET_COST).
export const MAX_BUDGET_COST = 1e12

export const BUDGET_PERIODS: { value: BudgetPeriod; label: string }[] = [
  { value: 'day', label: 'Per day' },
  { value: 'week', label: 'Per week (from Monday)' },
  { value: 'month', label: 'Per month' },
]

/** The edit form's text fields; empty means no expiry, every model, no limit, no budget. */
export interface PolicyForm {
  /** an `<input type="datetime-local">` value, local time */
  expires: string
  /** patterns separated by commas, spaces or lines */
  models: string
  limits: Record<LimitName, string>
  /** '' : no budget */
  budgetPeriod: BudgetPeriod | ''
  budgetTokens: string
  budgetCost: string
}

export type PolicyErrors = Partial<Record<'expires' | 'models' | LimitName | 'budgetTokens' | 'budgetCost', string>>

export function policyForm(key: ApiKey): PolicyForm {
  const limits = {} as Record<LimitName, string>
  for (const { name } of LIMITS) limits[name] = key.limits?.[name]?.toString() ?? ''
  return {
    expires: key.expiresAt ? toLocalInput(Date.parse(key.expiresAt)) : '',
    models: (key.models ?? []).join(', '),
    limits,
    budgetPeriod: key.budget?.period ?? '',
    budgetTokens: key.budget?.tokens?.toString() ?? '',
    budgetCost: key.budget?.cost?.toString() ?? '',
  }
}

function budgetCostError(text: string): string | undefined {
  const value = text.trim()
  if (!value) return undefined
  if (!/^\d+(\.\d+)?$/.test(value) || Number(value) <= 0) return 'An amount above 0, such as 20 or 12.50 (empty: none).'
  if (Number(value) >= MAX_BUDGET_COST) return 'Too large.'
  return undefined
}

/** The budget the form describes, or null for none. */
function formBudget(form: PolicyForm): Budget | null {
  if (!form.budgetPeriod) return null
  const budget: Budget = { period: form.budgetPeriod }
  if (form.budgetTokens.trim()) budget.tokens = Number(form.budgetTokens.trim())
  if (form.budgetCost.trim()) budget.cost = Number(form.budgetCost.trim())
  return budget
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
  if (form.budgetPeriod) {
    const tokens = limitError(form.budgetTokens)
    const cost = budgetCostError(form.budgetCost)
    if (tokens) errors.budgetTokens = tokens.replace('no limit', 'none')
    if (cost) errors.budgetCost = cost
    if (!tokens && !cost && !form.budgetTokens.trim() && !form.budgetCost.trim()) {
      errors.budgetTokens = 'A budget needs tokens, an amount or both (or no period: no budget).'
    }
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
  const budget = formBudget(form)
  if (JSON.stringify(budget) !== JSON.stringify(formBudget(before))) change.budget = budget
  return change
}

export type KeySort = 'newest' | 'username' | 'lastUsed' | 'tokensToday'

/** Each order of the key list, as the api sorts it (`GET /api/keys?sort=&order=`). */
export const KEY_SORTS: { value: KeySort; label: string; query: Pick<KeyQuery, 'sort' | 'order'> }[] = [
  { value: 'newest', label: 'Newest first', query: { sort: 'createdAt', order: 'desc' } },
  { value: 'username', label: 'Username', query: { sort: 'username', order: 'asc' } },
  { value: 'lastUsed', label: 'Last used', query: { sort: 'lastUsed', order: 'desc' } },
  { value: 'tokensToday', label: 'Most tokens today', query: { sort: 'tokensToday', order: 'desc' } },
]

/** What the key list asks the api for: a search, a state (the api's `active` is `enabled`
 * here), an order. */
export function keyQuery(search: string, state: KeyState | '', sort: KeySort): KeyQuery {
  const q: KeyQuery = { ...KEY_SORTS.find((s) => s.value === sort)!.query }
  const needle = search.trim()
  if (needle) q.search = needle
  if (state) q.state = state === 'enabled' ? 'active' : state
  return q
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
