// The request log for the page: how an outcome reads, and what a filter form sends. Pure.

import type { LoggedRequest, Outcome, RequestFilters, RequestSort } from '../api/types'

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

/** The api's orders of the log (`sort`), each read in an index of its own. */
export const SORTS: { value: RequestSort; label: string; most: string; least: string }[] = [
  { value: 'time', label: 'Time', most: 'Newest first', least: 'Oldest first' },
  { value: 'latency', label: 'Elapsed time', most: 'Slowest first', least: 'Fastest first' },
  { value: 'ttfb', label: 'Time to first byte', most: 'Slowest first', least: 'Fastest first' },
  { value: 'tokens', label: 'Tokens', most: 'Most tokens first', least: 'Fewest tokens first' },
  { value: 'status', label: 'Status', most: 'Highest status first', least: 'Lowest status first' },
]

/** `Slowest first` for latency descending, `Oldest first` for time ascending. */
export function orderLabel(sort: RequestSort | undefined, order: 'asc' | 'desc' | undefined): string {
  const s = SORTS.find((x) => x.value === (sort ?? 'time')) ?? SORTS[0]!
  return order === 'asc' ? s.least : s.most
}
