// Which tab is shown, kept in the address (/admin/<tab>?key=<id>) so a reload or a bookmark
// comes back to it, and the browser's back button moves between tabs.
import { readonly, ref } from 'vue'

export const TABS = [
  { id: 'keys', label: 'API keys' },
  { id: 'analytics', label: 'Analytics' },
  { id: 'upstreams', label: 'Upstreams' },
  { id: 'tls', label: 'TLS & nginx' },
] as const

export type TabId = (typeof TABS)[number]['id']

const BASE = '/admin/' // where the api serves the app (vite.config.ts base)

export interface Location {
  tab: TabId
  key: string
}

export function parseLocation(pathname: string, search: string): Location {
  const rest = pathname.startsWith(BASE) ? pathname.slice(BASE.length) : ''
  const name = rest.split('/')[0] ?? ''
  const tab = TABS.find((t) => t.id === name)?.id ?? 'keys'
  const key = new URLSearchParams(search).get('key') ?? ''
  return { tab, key: /^[a-f0-9]{32}$/.test(key) ? key : '' }
}

export function pathOf(location: Location): string {
  const search = location.tab === 'analytics' && location.key ? `?key=${location.key}` : ''
  return `${BASE}${location.tab}${search}`
}

const current = ref<Location>(parseLocation(window.location.pathname, window.location.search))

window.addEventListener('popstate', () => {
  current.value = parseLocation(window.location.pathname, window.location.search)
})

export function useRoute() {
  function go(tab: TabId, key = ''): void {
    const next = { tab, key }
    if (pathOf(next) !== pathOf(current.value)) window.history.pushState(null, '', pathOf(next))
    current.value = next
  }
  /** Change the address without a history entry (e.g. a new analytics key). */
  function replace(location: Location): void {
    window.history.replaceState(null, '', pathOf(location))
    current.value = location
  }
  return { route: readonly(current), go, replace }
}
