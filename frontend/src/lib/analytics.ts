// Analytics for the page: date ranges, bucket sizes, series with no gaps, CSV of a summary.
// Pure functions; the view fetches and shows.

import type { Bucket, Range, RequestRecord, SeriesPoint, Summary } from '../api/types'

export const HOUR = 3_600_000
export const DAY = 24 * HOUR

export type Preset = '24h' | '7d' | '30d' | 'custom'

export const PRESETS: { value: Preset; label: string }[] = [
  { value: '24h', label: 'Last 24 hours' },
  { value: '7d', label: 'Last 7 days' },
  { value: '30d', label: 'Last 30 days' },
  { value: 'custom', label: 'Custom range' },
]

export function presetRange(preset: Exclude<Preset, 'custom'>, now: number = Date.now()): Range {
  const span = { '24h': DAY, '7d': 7 * DAY, '30d': 30 * DAY }[preset]
  return { start: now - span, end: now }
}

/** What is wrong with a range the api would refuse, or null (analytics.py `window`). */
export function rangeError(range: Range, now: number = Date.now()): string | null {
  if (!Number.isFinite(range.start) || !Number.isFinite(range.end)) return 'Pick a start and an end.'
  if (range.start >= range.end) return 'The start must be before the end.'
  if (range.start < now - 365 * DAY) return 'The start must be within the last year.'
  if (range.end > now + 365 * DAY) return 'The end must be within a year from now.'
  return null
}

/** Hours up to about a week (168 bars at most), days beyond. */
export function bucketFor(range: Range): Bucket {
  return range.end - range.start <= 8 * DAY ? 'hour' : 'day'
}

export const BUCKET_MS: Record<Bucket, number> = { hour: HOUR, day: DAY }

/**
 * Every bucket of the range, in order, as the api would label them (`start - start % size`,
 * so days are UTC days), with the api's points where it has them and empty ones elsewhere.
 */
export function fillSeries(summary: Pick<Summary, 'bucket' | 'startDate' | 'endDate' | 'series'>): SeriesPoint[] {
  const size = BUCKET_MS[summary.bucket]
  const known = new Map(summary.series.map((p) => [p.time, p]))
  const points: SeriesPoint[] = []
  const first = summary.startDate - (summary.startDate % size)
  for (let time = first; time <= summary.endDate; time += size) {
    points.push(
      known.get(time) ?? {
        time,
        requests: 0,
        failures: 0,
        promptTokens: 0,
        completionTokens: 0,
        latencyP50: null,
        latencyP95: null,
        ttfbP50: null,
      },
    )
    if (points.length > 5000) break // a guard; the api refuses ranges over two years
  }
  return points
}

export type Outcome = 'success' | 'failed'

/** The original's rule: a request failed when it has no end time. */
export function outcome(record: RequestRecord): Outcome {
  return record.endTime === null ? 'failed' : 'success'
}

export function elapsed(record: RequestRecord): number | null {
  return record.endTime === null ? null : record.endTime - record.startTime
}

function csvCell(value: unknown): string {
  if (value === null || value === undefined) return ''
  const text = String(value)
  // A cell starting with one of these runs as a formula in spreadsheets.
  const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text
  return /[",\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe
}

export function toCsv(header: string[], rows: unknown[][]): string {
  return [header, ...rows].map((row) => row.map(csvCell).join(',')).join('\n') + '\n'
}

/** The summary's series (every bucket, gaps filled) as CSV, for "all keys". */
export function summaryCsv(summary: Summary): string {
  const header = [
    'bucketStart',
    'requests',
    'failures',
    'promptTokens',
    'completionTokens',
    'latencyP50Ms',
    'latencyP95Ms',
    'ttfbP50Ms',
  ]
  const rows = fillSeries(summary).map((p) => [
    new Date(p.time).toISOString(),
    p.requests,
    p.failures,
    p.promptTokens,
    p.completionTokens,
    p.latencyP50,
    p.latencyP95,
    p.ttfbP50,
  ])
  return toCsv(header, rows)
}

/** A file name for an export: `llmp-alice-2026-11-22-to-2026-11-29.csv`. */
export function exportName(label: string, range: Range): string {
  const day = (ms: number) => new Date(ms).toISOString().slice(0, 10)
  const safe = label.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '') || 'all'
  return `llmp-${safe}-${day(range.start)}-to-${day(range.end)}.csv`
}
