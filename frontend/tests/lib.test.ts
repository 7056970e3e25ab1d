import { describe, expect, it } from 'vitest'
import type { RequestRecord, Summary } from '../src/api/types'
import {
  bucketFor,
  DAY,
  elapsed,
  exportName,
  fillSeries,
  HOUR,
  outcome,
  presetRange,
  rangeError,
  summaryCsv,
  toCsv,
} from '../src/lib/analytics'
import { axisDuration, compact, duration, fromLocalInput, maskKey, percent, relative, toLocalInput } from '../src/lib/format'
import { isCidr, isDomain, splitList, usernameErrors } from '../src/lib/validation'

const NOW = Date.UTC(2026, 10, 29, 12, 30)

function record(over: Partial<RequestRecord> = {}): RequestRecord {
  return {
    startTime: NOW,
    endTime: NOW + 250,
    status: 200,
    model: 'm',
    upstream: 'http://10.0.0.2:8000/v1',
    path: '/v1/chat/completions',
    stream: false,
    ttfbMs: 100,
    promptTokens: 7,
    completionTokens: 3,
    bytesIn: 10,
    bytesOut: 20,
    error: null,
    queueMs: null,
    usageEstimated: false,
    endUser: null,
    ...over,
  }
}

describe('usernameErrors', () => {
  it('says what the api would say, every message at once', () => {
    expect(usernameErrors('alice')).toEqual([])
    expect(usernameErrors('  bob42  ')).toEqual([])
    expect(usernameErrors('')).toEqual(['Username is required'])
    expect(usernameErrors('a!')).toEqual([
      'Username must contain only alphanumeric characters',
      'Username must be at least 3 characters long',
    ])
    expect(usernameErrors('x'.repeat(51))).toEqual(['Username must not exceed 50 characters'])
    expect(usernameErrors('john_doe')).toEqual(['Username must contain only alphanumeric characters'])
  })
})

describe('isCidr', () => {
  it.each(['10.0.0.0/8', '192.168.1.7', '0.0.0.0/0', '::1', 'fc00::/7', '2001:db8::/32', '::ffff:10.0.0.1', '1:2:3:4:5:6:7:8/128'])(
    'accepts %s',
    (value) => expect(isCidr(value)).toBe(true),
  )
  it.each(['10.0.0.0/33', '256.1.1.1', '10.0.0', 'fc00::/129', '1::2::3', 'example.com', '10.0.0.0/8/8', '1:2:3:4:5:6:7:8:9', '10.0.0.0/'])(
    'refuses %s',
    (value) => expect(isCidr(value)).toBe(false),
  )
  it('splits lists on lines, commas and spaces', () => {
    expect(splitList(' 10.0.0.0/8,\n192.168.0.0/16  ::1\n\n')).toEqual(['10.0.0.0/8', '192.168.0.0/16', '::1'])
  })
})

describe('isDomain', () => {
  it('takes host names and wildcards, not addresses or junk', () => {
    for (const ok of ['example.com', 'llm.example.test', '*.example.com', 'a-b.c0.io']) expect(isDomain(ok)).toBe(true)
    for (const bad of ['localhost', '-a.com', 'a..com', 'exa mple.com', 'a.com;', '*.', '']) expect(isDomain(bad)).toBe(false)
  })
})

describe('ranges and buckets', () => {
  it('presets end now', () => {
    expect(presetRange('7d', NOW)).toEqual({ start: NOW - 7 * DAY, end: NOW })
    expect(presetRange('24h', NOW)).toEqual({ start: NOW - DAY, end: NOW })
  })
  it('hours up to about a week, then days', () => {
    expect(bucketFor(presetRange('7d', NOW))).toBe('hour')
    expect(bucketFor(presetRange('30d', NOW))).toBe('day')
  })
  it('refuses what the api would refuse', () => {
    expect(rangeError({ start: NOW - DAY, end: NOW }, NOW)).toBeNull()
    expect(rangeError({ start: NOW, end: NOW - 1 }, NOW)).toMatch(/before the end/)
    expect(rangeError({ start: NOW - 400 * DAY, end: NOW }, NOW)).toMatch(/last year/)
    expect(rangeError({ start: NaN, end: NOW }, NOW)).toMatch(/Pick a start/)
  })
})

describe('fillSeries', () => {
  const point = (time: number, requests: number) => ({
    time, requests, failures: 0, promptTokens: 1, completionTokens: 2, latencyP50: 5, latencyP95: 9, ttfbP50: 1,
  })
  it('has every bucket of the range, the empty ones with zero counts and no latency', () => {
    const start = Date.UTC(2026, 10, 29, 9, 15)
    const filled = fillSeries({ bucket: 'hour', startDate: start, endDate: start + 3 * HOUR, series: [point(Date.UTC(2026, 10, 29, 10), 4)] })
    expect(filled.map((p) => new Date(p.time).getUTCHours())).toEqual([9, 10, 11, 12])
    expect(filled.map((p) => p.requests)).toEqual([0, 4, 0, 0])
    expect(filled[0]).toMatchObject({ latencyP50: null, latencyP95: null, ttfbP50: null, promptTokens: 0 })
  })
  it('makes a CSV of the series, gaps included', () => {
    const summary: Summary = {
      success: true,
      bucket: 'day',
      startDate: Date.UTC(2026, 10, 27),
      endDate: Date.UTC(2026, 10, 28, 12),
      totals: { requests: 3, failures: 0, promptTokens: 1, completionTokens: 2, latencyP50: 5, latencyP95: 9 },
      series: [point(Date.UTC(2026, 10, 28), 3)],
      keys: [],
    }
    expect(summaryCsv(summary).split('\n')).toEqual([
      'bucketStart,requests,failures,promptTokens,completionTokens,latencyP50Ms,latencyP95Ms,ttfbP50Ms',
      '2026-11-27T00:00:00.000Z,0,0,0,0,,,',
      '2026-11-28T00:00:00.000Z,3,0,1,2,5,9,1',
      '',
    ])
  })
})

describe('records', () => {
  it('failed means no end time, as in the original', () => {
    expect(outcome(record())).toBe('success')
    expect(elapsed(record())).toBe(250)
    expect(outcome(record({ endTime: null }))).toBe('failed')
    expect(elapsed(record({ endTime: null }))).toBeNull()
  })
})

describe('csv', () => {
  it('quotes what needs quoting and defuses formulas', () => {
    expect(toCsv(['a', 'b'], [['x,y', '=1+1'], ['say "hi"', null]])).toBe('a,b\n"x,y",\'=1+1\n"say ""hi""",\n')
  })
  it('names exports after the key and the days', () => {
    expect(exportName('alice', { start: Date.UTC(2026, 10, 22, 5), end: Date.UTC(2026, 10, 29, 5) })).toBe(
      'llmp-alice-2026-11-22-to-2026-11-29.csv',
    )
    expect(exportName('all keys!', { start: 0, end: DAY })).toBe('llmp-all-keys-1970-01-01-to-1970-01-02.csv')
  })
})

describe('format', () => {
  it('durations', () => {
    expect(duration(null)).toBe('—')
    expect(duration(850.4)).toBe('850 ms')
    expect(duration(1234)).toBe('1.23 s')
    expect(duration(12_345)).toBe('12.3 s')
    expect(duration(125_000)).toBe('2 min 5 s')
    expect(axisDuration(0.5)).toBe('0.5 ms')
    expect(axisDuration(1500)).toBe('1.5 s')
  })
  it('numbers', () => {
    expect(compact(950)).toBe('950')
    expect(compact(7500)).toBe('7.5 k')
    expect(compact(3_100_000)).toBe('3.1 M')
    expect(percent(1, 3)).toBe('33.3 %')
    expect(percent(0, 0)).toBe('—')
    expect(percent(3, 3)).toBe('100 %')
  })
  it('relative times', () => {
    expect(relative(NOW - 10_000, NOW)).toBe('just now')
    expect(relative(NOW - 5 * 60_000, NOW)).toBe('5 minutes ago')
    expect(relative(NOW + 3 * DAY, NOW)).toBe('in 3 days')
    expect(relative(NOW - HOUR, NOW)).toBe('1 hour ago')
  })
  it('datetime-local round trip, in local time', () => {
    const value = toLocalInput(NOW)
    expect(value).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d$/)
    expect(fromLocalInput(value)).toBe(NOW)
    expect(fromLocalInput('')).toBeNull()
    expect(fromLocalInput('2026-13-45T99:99')).toBeNull()
  })
  it('masks keys', () => {
    expect(maskKey('sk-' + 'a'.repeat(60) + 'beef')).toBe('sk-aaaa…beef')
  })
})
