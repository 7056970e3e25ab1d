// Where the admin is, kept in the address (/admin/<tab>?<query>) so that a reload or a bookmark
// comes back to it and the browser's Back and Forward move through it: the tab, and what a
// tab shows (the analytics key and period). Each tab's query is an allowlist of names, each
// with its own check; anything else in the address is dropped.
import { readonly, ref } from 'vue'

export const TABS = [
  { id: 'keys', label: 'API keys' },
  { id: 'analytics', label: 'Analytics' },
  { id: 'upstreams', label: 'Upstreams' },
  { id: 'tls', label: 'TLS & nginx' },
] as const

export type TabId = (typeof TABS)[number]['id']

export type Query = Readonly<Record<string, string>>

const BASE = '/admin/' // where the api serves the app (vite.config.ts base)

const keyId = (v: string) => /^[a-f0-9]{32}$/.test(v)
const localTime = (v: string) => /^\d{4}-\d\d-\d\dT\d\d:\d\d$/.test(v) // <input type="datetime-local">

/** The query each tab keeps, in the order it is written. */
const QUERY: Record<TabId, Record<string, (value: string) => boolean>> = {
  keys: {},
  analytics: {
    key: keyId,
    period: (v) => ['24h', '7d', '30d', 'custom'].includes(v),
    from: localTime,
    to: localTime,
  },
  upstreams: {},
  tls: {},
}

export interface Location {
  tab: TabId
  query: Query
}

/** The names of `query` that `tab` keeps and whose values pass their check, in their order. */
export function cleanQuery(tab: TabId, query: Record<string, string | undefined>): Query {
  const kept: Record<string, string> = {}
  for (const [name, check] of Object.entries(QUERY[tab])) {
    const value = query[name]
    if (value && check(value)) kept[name] = value
  }
  return kept
}

export function parseLocation(pathname: string, search: string): Location {
  const rest = pathname.startsWith(BASE) ? pathname.slice(BASE.length) : ''
  const name = rest.split('/')[0] ?? ''
  const tab = TABS.find((t) => t.id === name)?.id ?? 'keys'
  return { tab, query: cleanQuery(tab, Object.fromEntries(new URLSearchParams(search))) }
}

export function pathOf(location: Location): string {
  const search = new URLSearchParams(cleanQuery(location.tab, location.query)).toString()
  return `${BASE}${location.tab}${search ? `?${search}` : ''}`
}

const current = ref<Location>(parseLocation(window.location.pathname, window.location.search))

window.addEventListener('popstate', () => {
  current.value = parseLocation(window.location.pathname, window.location.search)
})

export function useRoute() {
  /** Go to a tab (and what it shows), as a new history entry unless it is where we are. */
  function go(tab: TabId, query: Record<string, string | undefined> = {}): void {
    const next = { tab, query: cleanQuery(tab, query) }
    if (pathOf(next) !== pathOf(current.value)) window.history.pushState(null, '', pathOf(next))
    current.value = next
  }
  return { route: readonly(current), go }
}
