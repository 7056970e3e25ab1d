// The request log for the page: how an outcome reads, and what a filter form sends. Pure.

import type { LoggedRequest, Outcome, RequestFilters } from '../api/types'

export const OUTCOMES: { value: Outcome; label: string }[] = [
  { value: 'ok', label: 'Success' },
  { value: 'client_error', label: 'Client error (4xx)' },
  { value: 'rate_limited', label: 'Rate limited (429)' },
  { value: 'server_error', label: 'Server error (5xx)' },
  { value: 'incomplete', label: 'Incomplete (cut or no answer)' },
]

export function outcomeLabel(outcome: Outcome): string {
  return OUTCOMES.find((o) => o.value === outcome)?.label ?? outcome
}

/** The filters as the api takes them: trimmed, empty ones left out; `status` a number or nothing. */
export function cleanFilters(filters: RequestFilters): RequestFilters {
  const clean: RequestFilters = {}
  for (const [name, value] of Object.entries(filters) as [keyof RequestFilters, string | undefined][]) {
    const text = value?.trim()
    if (text) (clean as Record<string, string>)[name] = text
  }
  return clean
}

/** What is wrong with the filters before they are sent, or null. */
export function filtersError(filters: RequestFilters): string | null {
  const status = filters.status?.trim()
  if (status && !/^\d{1,3}$/.test(status)) return 'A status is a number such as 200, 429 or 502 (0: no answer).'
  return null
}

export function tokens(r: Pick<LoggedRequest, 'promptTokens' | 'completionTokens'>): string {
  if (r.promptTokens === null && r.completionTokens === null) return '—'
  const n = new Intl.NumberFormat('en-US')
  return `${n.format(r.promptTokens ?? 0)} / ${n.format(r.completionTokens ?? 0)}`
}
