// Formatting for people: dates in local time, durations, counts. Pure functions.

const pad = (n: number) => String(n).padStart(2, '0')

/** `2026-11-29 14:03:07`, local time. */
export function dateTime(ms: number): string {
  const d = new Date(ms)
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
}

/** A duration for a chart axis: `250 ms`, `1.5 s`, `2 min`. */
export function axisDuration(ms: number): string {
  if (ms < 1000) return `${+ms.toFixed(ms < 10 ? 1 : 0)} ms`
  if (ms < 60_000) return `${+(ms / 1000).toFixed(1)} s`
  return `${+(ms / 60_000).toFixed(1)} min`
}

/** `2026-11-29`, local time. */
export function date(ms: number): string {
  return dateTime(ms).slice(0, 10)
}

/** The value of an `<input type="datetime-local">` for a moment: `2026-11-29T14:03`. */
export function toLocalInput(ms: number): string {
  return dateTime(ms).slice(0, 16).replace(' ', 'T')
}

/** The moment an `<input type="datetime-local">` value names, or null if it names none. */
export function fromLocalInput(value: string): number | null {
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(value)) return null
  const ms = new Date(value).getTime() // without a zone, ECMAScript reads local time
  return Number.isNaN(ms) ? null : ms
}

/** `850 ms`, `1.24 s`, `2 min 5 s`; an em dash for nothing. */
export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—'
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`
  const minutes = Math.floor(ms / 60_000)
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`
}

const integer = new Intl.NumberFormat('en-US')

export function count(n: number | null | undefined): string {
  return n === null || n === undefined ? '—' : integer.format(n)
}

/** `12.5 k`, `3.1 M`: for chart axes and tight places. */
export function compact(n: number): string {
  const abs = Math.abs(n)
  if (abs >= 1e6) return `${+(n / 1e6).toFixed(1)} M`
  if (abs >= 1e3) return `${+(n / 1e3).toFixed(1)} k`
  return integer.format(Math.round(n * 100) / 100)
}

export function percent(part: number, whole: number): string {
  if (!whole) return '—'
  const value = (100 * part) / whole
  return `${value >= 99.95 || value === 0 ? value.toFixed(0) : value.toFixed(1)} %`
}

/** `in 3 days`, `5 minutes ago`, `just now`. */
export function relative(ms: number, now: number = Date.now()): string {
  const diff = ms - now
  const abs = Math.abs(diff)
  if (abs < 45_000) return 'just now'
  const units: [number, string][] = [
    [86_400_000, 'day'],
    [3_600_000, 'hour'],
    [60_000, 'minute'],
  ]
  for (const [size, name] of units) {
    if (abs >= size || name === 'minute') {
      const n = Math.round(abs / size)
      const text = `${n} ${name}${n === 1 ? '' : 's'}`
      return diff > 0 ? `in ${text}` : `${text} ago`
    }
  }
  return 'just now'
}

/** The host (and port) of a URL, or the text itself if it is not one. */
export function host(url: string | null | undefined): string {
  if (!url) return '—'
  try {
    return new URL(url).host
  } catch {
    return url
  }
}

/** `sk-1a2b…9f0e`: enough to tell keys apart without showing them. */
export function maskKey(key: string): string {
  return key.length > 14 ? `${key.slice(0, 7)}…${key.slice(-4)}` : key
}
