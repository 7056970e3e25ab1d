import { mount } from '@vue/test-utils'
import { afterEach, describe, expect, it } from 'vitest'
import { ref } from 'vue'
import TabNav from '../src/components/TabNav.vue'
import { parseLocation, pathOf, TABS } from '../src/composables/route'

afterEach(() => document.body.replaceChildren())

function mountTabs() {
  const selected = ref('keys')
  const nav = mount(TabNav, {
    props: { tabs: TABS, selected: selected.value, label: 'Sections', idPrefix: 't' },
    attachTo: document.body,
  })
  return { nav, selected }
}

describe('TabNav', () => {
  it('is one tab stop, the selected tab, tied to the panel', () => {
    const { nav } = mountTabs()
    const tabs = nav.findAll('[role="tab"]')
    expect(tabs.map((t) => t.attributes('tabindex'))).toEqual(['0', '-1', '-1', '-1'])
    expect(tabs[0]!.attributes('aria-selected')).toBe('true')
    expect(tabs[0]!.attributes('aria-controls')).toBe('t-panel')
    expect(nav.find('[role="tablist"]').attributes('aria-label')).toBe('Sections')
  })

  it('moves with the arrow keys, Home and End, wrapping around', async () => {
    const { nav } = mountTabs()
    const tabs = nav.findAll('[role="tab"]')
    await tabs[0]!.trigger('keydown', { key: 'ArrowRight' })
    expect(document.activeElement).toBe(tabs[1]!.element)
    await tabs[0]!.trigger('keydown', { key: 'ArrowLeft' })
    expect(document.activeElement).toBe(tabs[3]!.element)
    await tabs[3]!.trigger('keydown', { key: 'ArrowRight' })
    await tabs[1]!.trigger('keydown', { key: 'End' })
    await tabs[2]!.trigger('keydown', { key: 'Home' })
    await tabs[2]!.trigger('keydown', { key: 'Enter' }) // not a tab key: nothing
    expect(nav.emitted('select')).toEqual([['analytics'], ['tls'], ['keys'], ['tls'], ['keys']])
  })
})

describe('route', () => {
  it('reads and writes /admin/<tab>?<query>, keeping only what the tab allows', () => {
    const key = 'c'.repeat(32)
    expect(parseLocation('/admin/analytics', `?key=${key}`)).toEqual({ tab: 'analytics', query: { key } })
    expect(parseLocation('/admin/', '')).toEqual({ tab: 'keys', query: {} })
    expect(parseLocation('/admin/nope', '?key=../../x')).toEqual({ tab: 'keys', query: {} })
    expect(parseLocation('/admin/analytics', '?key=../../x&period=1y&from=yesterday&other=1')).toEqual({ tab: 'analytics', query: {} })
    const custom = '?period=custom&from=2026-11-20T10:00&to=2026-11-21T10:00'
    expect(parseLocation('/admin/analytics', custom).query).toEqual({ period: 'custom', from: '2026-11-20T10:00', to: '2026-11-21T10:00' })
    expect(pathOf({ tab: 'analytics', query: { period: '30d', key } })).toBe(`/admin/analytics?key=${key}&period=30d`)
    expect(pathOf(parseLocation('/admin/analytics', custom))).toBe(`/admin/analytics${custom.replace(/:/g, '%3A')}`)
    expect(pathOf({ tab: 'tls', query: { key } })).toBe('/admin/tls')
  })
})
