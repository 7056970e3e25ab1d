import { flushPromises } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError } from '../src/api/client'
import type { ApiKey } from '../src/api/types'
import { clearNotices, useNotices } from '../src/composables/notices'
import KeysView from '../src/views/KeysView.vue'
import { fakeApi, mountWithApi } from './fakes'

vi.mock('../src/composables/clipboard', () => ({ copyText: vi.fn(async () => true) }))
const { copyText } = await import('../src/composables/clipboard')

const alice: ApiKey = { id: 'a'.repeat(32), username: 'alice', key: 'sk-' + '1'.repeat(60) + 'aaaa', createdAt: '2026-11-01T10:00:00.000Z' }
const bob: ApiKey = { id: 'b'.repeat(32), username: 'bob', key: 'sk-' + '2'.repeat(60) + 'bbbb', createdAt: '2026-11-02T10:00:00.000Z' }

const texts = () => useNotices().notices.map((n) => n.text)

describe('KeysView', () => {
  beforeEach(() => clearNotices())
  afterEach(() => document.body.replaceChildren())

  it('lists keys newest first (as the api sorts them), hidden until shown', async () => {
    const api = fakeApi({ listKeys: async () => [bob, alice] })
    const view = await mountWithApi(KeysView, api)
    expect(api.listKeys).toHaveBeenCalledWith({ sort: 'createdAt', order: 'desc' })
    const items = view.findAll('.key-item')
    expect(items.map((i) => i.attributes('data-username'))).toEqual(['bob', 'alice'])
    expect(view.text()).not.toContain(alice.key)
    expect(view.text()).toContain('sk-1111…aaaa')
    const show = items[1]!.findAll('button').find((b) => b.text().startsWith('Show'))!
    await show.trigger('click')
    expect(show.attributes('aria-pressed')).toBe('true')
    expect(view.text()).toContain(alice.key)
  })

  it("shows each key's last use, today's usage and budget, and has the api search, filter and sort", async () => {
    const budget = { period: 'month' as const, resetsAt: 0, tokens: 1000, usedTokens: 250, remainingTokens: 750 }
    const many: ApiKey[] = Array.from({ length: 6 }, (_, i) => ({
      ...bob, id: String(i).repeat(32), username: `user${i}`, createdAt: `2026-11-0${i + 1}T10:00:00.000Z`,
      enabled: i !== 3,
      usage: { lastUsed: i === 2 ? Date.now() - 120_000 : null, requestsToday: i, tokensToday: 100 * i, budget: i === 2 ? budget : null },
    }))
    // The fake api answers in the order and with the keys it is asked for.
    const listKeys = async (q: { search?: string; state?: string; sort?: string } = {}) => {
      let found = many.filter((k) => !q.search || k.username.includes(q.search) || k.id.includes(q.search))
      if (q.state === 'disabled') found = found.filter((k) => k.enabled === false)
      return q.sort === 'tokensToday' ? [...found].reverse() : found
    }
    const api = fakeApi({ listKeys })
    const view = await mountWithApi(KeysView, api)
    const names = () => view.findAll('.key-item').map((i) => i.attributes('data-username'))
    const item = (name: string) => view.findAll('.key-item').find((i) => i.attributes('data-username') === name)!
    expect(api.listKeys).toHaveBeenLastCalledWith({ sort: 'createdAt', order: 'desc' })
    expect(item('user2').find('[data-testid="key-usage"]').text()).toMatch(/^Last used 2 minutes ago · today\s+2 requests,\s+200 tokens$/)
    expect(item('user2').find('[data-testid="key-budget"]').text()).toBe('Budget this month: 250 of 1,000 tokens used (750 left)')
    expect(item('user0').find('[data-testid="key-usage"]').text()).toContain('Never used')
    await view.find('#key-sort').setValue('tokensToday')
    await flushPromises()
    expect(api.listKeys).toHaveBeenLastCalledWith({ sort: 'tokensToday', order: 'desc' })
    expect(names()).toEqual(['user5', 'user4', 'user3', 'user2', 'user1', 'user0'])
    await view.find('#key-state').setValue('disabled')
    await flushPromises()
    expect(api.listKeys).toHaveBeenLastCalledWith({ state: 'disabled', sort: 'tokensToday', order: 'desc' })
    expect(names()).toEqual(['user3'])
    expect(view.find('#key-state').exists()).toBe(true) // the tools stay while the list is narrowed
    await view.find('#key-state').setValue('')
    await view.find('#key-filter').setValue('4444')
    await new Promise((resolve) => setTimeout(resolve, 300)) // the search waits for typing to pause
    await flushPromises()
    expect(api.listKeys).toHaveBeenLastCalledWith({ search: '4444', sort: 'tokensToday', order: 'desc' })
    expect(names()).toEqual(['user4'])
    await view.find('#key-filter').setValue('nobody')
    await new Promise((resolve) => setTimeout(resolve, 300))
    await flushPromises()
    expect(view.text()).toContain('No key matches “nobody”')
  })

  it('says so when there are no keys, and when they cannot be read', async () => {
    const empty = await mountWithApi(KeysView, fakeApi({ listKeys: async () => [] }))
    expect(empty.text()).toContain('No API keys yet')
    const broken = await mountWithApi(KeysView, fakeApi({ listKeys: async () => Promise.reject(new ApiError(500, 'Failed to list API keys')) }))
    expect(broken.find('[role="alert"]').text()).toContain('Failed to list API keys')
  })

  it('checks the username before sending it, inline', async () => {
    const api = fakeApi({ listKeys: async () => [] })
    const view = await mountWithApi(KeysView, api)
    await view.find('#new-username').setValue('a!')
    await view.find('form').trigger('submit')
    const input = view.find('#new-username')
    expect(input.attributes('aria-invalid')).toBe('true')
    expect(view.find('#new-username-error').text()).toContain('Username must contain only alphanumeric characters')
    expect(view.find('#new-username-error').text()).toContain('Username must be at least 3 characters long')
    expect(api.createKey).not.toHaveBeenCalled()
    await input.setValue('abc') // typing clears the message
    expect(view.find('#new-username-error').exists()).toBe(false)
  })

  it("shows the server's refusal inline", async () => {
    const api = fakeApi({
      listKeys: async () => [alice],
      createKey: async () => Promise.reject(new ApiError(400, 'API key already exists for this username')),
    })
    const view = await mountWithApi(KeysView, api)
    await view.find('#new-username').setValue('alice')
    await view.find('form').trigger('submit')
    await flushPromises()
    expect(view.find('#new-username-error').text()).toBe('API key already exists for this username')
  })

  it('creates a key, shows it once with a copy button, and adds it to the list', async () => {
    const stored = [alice]
    const api = fakeApi({ listKeys: async () => [...stored], createKey: async () => (stored.push(bob), bob) })
    const view = await mountWithApi(KeysView, api)
    await view.find('#new-username').setValue(' bob ')
    await view.find('form').trigger('submit')
    await flushPromises()
    expect(api.createKey).toHaveBeenCalledWith('bob', {})
    expect(view.find('[data-testid="new-key"]').text()).toBe(bob.key)
    expect((view.find('#new-username').element as HTMLInputElement).value).toBe('')
    expect(view.findAll('.key-item')).toHaveLength(2)
    expect(texts()).toContain('API key created for bob')
    await view.find('.new-key .btn-primary').trigger('click')
    await flushPromises()
    expect(copyText).toHaveBeenCalledWith(bob.key)
    expect(texts()).toContain('Copied the key of bob to the clipboard')
  })

  it('reveals the key when copying fails, and says how to copy by hand', async () => {
    vi.mocked(copyText).mockResolvedValueOnce(false)
    const view = await mountWithApi(KeysView, fakeApi({ listKeys: async () => [alice] }))
    await view.findAll('.key-actions button').find((b) => b.text().startsWith('Copy'))!.trigger('click')
    await flushPromises()
    expect(view.text()).toContain(alice.key)
    expect(useNotices().notices.at(-1)).toMatchObject({ kind: 'error', text: expect.stringContaining('Ctrl+C') })
  })

  it('deletes only after confirmation', async () => {
    const api = fakeApi({ listKeys: async () => [alice, bob], deleteKey: async () => undefined })
    const view = await mountWithApi(KeysView, api)
    const deleteOf = (name: string) =>
      view.findAll('.key-item').find((i) => i.attributes('data-username') === name)!.findAll('button').find((b) => b.text().startsWith('Delete'))!
    const dialog = view.findAll('dialog').find((d) => d.text().includes('Delete this API key?'))!

    await deleteOf('alice').trigger('click')
    await flushPromises()
    expect(dialog.attributes('open')).toBeDefined()
    expect(dialog.text()).toContain('alice')
    await dialog.findAll('button').find((b) => b.text() === 'Cancel')!.trigger('click')
    await flushPromises()
    expect(dialog.attributes('open')).toBeUndefined()
    expect(api.deleteKey).not.toHaveBeenCalled()

    await deleteOf('alice').trigger('click')
    await flushPromises()
    await dialog.findAll('button').find((b) => b.text() === 'Delete key')!.trigger('click')
    await flushPromises()
    expect(api.deleteKey).toHaveBeenCalledWith(alice.id)
    expect(view.findAll('.key-item').map((i) => i.attributes('data-username'))).toEqual(['bob'])
    expect(texts()).toContain('Deleted the key of alice')
  })

  it('creates a further named key for a user with an owner and a note, checked first', async () => {
    const ci: ApiKey = { ...bob, id: 'c'.repeat(32), username: 'alice', name: 'ci', owner: 'ops', note: 'nightly evals' }
    let listed = [alice]
    const api = fakeApi({
      listKeys: async () => listed,
      createKey: async () => {
        listed = [alice, ci]
        return ci
      },
    })
    const view = await mountWithApi(KeysView, api)
    await view.find('#new-username').setValue('alice')
    await view.find('#new-key-name').setValue('has space')
    await view.find('form').trigger('submit')
    expect(view.find('#new-username-error').text()).toContain('starting with a letter or digit')
    expect(api.createKey).not.toHaveBeenCalled()
    await view.find('#new-key-name').setValue(' ci ')
    await view.find('#new-key-owner').setValue('ops')
    await view.find('#new-key-note').setValue('nightly evals')
    await view.find('form').trigger('submit')
    await flushPromises()
    expect(api.createKey).toHaveBeenCalledWith('alice', { name: 'ci', owner: 'ops', note: 'nightly evals' })
    expect(view.find('#created-title').text()).toBe('New key for alice (ci)')
    const item = view.findAll('.key-item').find((i) => i.find('[data-testid="key-name"]').exists())!
    expect(item.find('[data-testid="key-name"]').text()).toBe('ci')
    expect(item.find('[data-testid="key-owner"]').text()).toBe('Owner: ops')
    expect(item.find('[data-testid="key-note"]').text()).toBe('nightly evals')
  })

  it('rotates a key with the chosen overlap and shows the new secret and the old one\'s end', async () => {
    const until = new Date(Date.now() + 86_400_000).toISOString()
    const rotated: ApiKey = { ...alice, key: 'sk-' + '9'.repeat(60) + '9999', previousKeys: [{ key: alice.key, until }] }
    const api = fakeApi({ listKeys: async () => [alice], rotateKey: async () => rotated })
    const view = await mountWithApi(KeysView, api)
    await view.findAll('.key-actions button').find((b) => b.text().startsWith('Rotate'))!.trigger('click')
    await flushPromises()
    const dialog = view.findAll('dialog').find((d) => d.text().includes('Rotate this API key?'))!
    expect(dialog.attributes('open')).toBeDefined()
    await dialog.find('#rotate-overlap').setValue('3600')
    const before = Date.now()
    await dialog.findAll('button').find((b) => b.text() === 'Rotate key')!.trigger('click')
    await flushPromises()
    const [id, asked] = api.rotateKey.mock.calls[0]! as [string, string]
    expect(id).toBe(alice.id)
    expect(Date.parse(asked) - before).toBeGreaterThanOrEqual(3_600_000)
    expect(Date.parse(asked) - Date.now()).toBeLessThanOrEqual(3_600_000)
    expect(view.find('#created-title').text()).toBe('New secret for alice')
    expect(view.find('[data-testid="new-key"]').text()).toBe(rotated.key)
    expect(view.find('[data-testid="key-previous"]').text()).toContain('old secret sk-1111…aaaa works until')
    expect(texts()).toContain('Rotated the key of alice: give its clients the new secret')
  })

  it('rotates at once when asked to, sending no overlap', async () => {
    const api = fakeApi({ listKeys: async () => [alice], rotateKey: async () => ({ ...alice, key: 'sk-new' }) })
    const view = await mountWithApi(KeysView, api)
    await view.findAll('.key-actions button').find((b) => b.text().startsWith('Rotate'))!.trigger('click')
    const dialog = view.findAll('dialog').find((d) => d.text().includes('Rotate this API key?'))!
    await dialog.find('#rotate-overlap').setValue('0')
    await dialog.findAll('button').find((b) => b.text() === 'Rotate key')!.trigger('click')
    await flushPromises()
    expect(api.rotateKey).toHaveBeenCalledWith(alice.id, null)
    expect(view.find('[data-testid="key-previous"]').exists()).toBe(false)
  })

  it("edits a key's details, sending only what changed, and shows the server's refusal", async () => {
    const named: ApiKey = { ...alice, name: 'ci', owner: 'ops' }
    const api = fakeApi({
      listKeys: async () => [named],
      updateKey: vi.fn()
        .mockRejectedValueOnce(new ApiError(400, 'An API key named "prod" already exists for this username'))
        .mockResolvedValueOnce({ ...named, name: 'prod', owner: undefined }),
    })
    const view = await mountWithApi(KeysView, api)
    await view.findAll('.key-actions button').find((b) => b.text().startsWith('Details'))!.trigger('click')
    const form = view.find('form[aria-label="Details of alice (ci)"]')
    const inputs = form.findAll('input')
    await inputs[0]!.setValue('prod')
    await inputs[1]!.setValue('')
    await form.trigger('submit')
    await flushPromises()
    expect(api.updateKey).toHaveBeenCalledWith(alice.id, { name: 'prod', owner: null })
    expect(form.find('[role="alert"]').text()).toContain('already exists')
    await form.trigger('submit')
    await flushPromises()
    expect(view.find('[data-testid="key-name"]').text()).toBe('prod')
    expect(texts()).toContain('Saved the details of alice (prod)')
  })

  it('asks for analytics of a key', async () => {
    const view = await mountWithApi(KeysView, fakeApi({ listKeys: async () => [alice] }))
    await view.findAll('.key-actions button').find((b) => b.text().startsWith('Analytics'))!.trigger('click')
    expect(view.emitted('analytics')).toEqual([[alice.id]])
  })

  describe('access and limits', () => {
    const restricted: ApiKey = {
      ...alice,
      expiresAt: '2999-01-01T00:00:00.000Z',
      models: ['llama3*', 'qwen*'],
      limits: { requestsPerMinute: 60, maxConcurrent: 2 },
    }
    const itemOf = (view: Awaited<ReturnType<typeof mountWithApi>>, name: string) =>
      view.findAll('.key-item').find((i) => i.attributes('data-username') === name)!
    const button = (item: ReturnType<typeof itemOf>, text: string) => item.findAll('button').find((b) => b.text().startsWith(text))!

    it('shows each key its state, models and limits', async () => {
      const expired = { ...bob, expiresAt: '2020-01-01T00:00:00.000Z' }
      const carol = { ...bob, id: 'c'.repeat(32), username: 'carol', enabled: false }
      const view = await mountWithApi(KeysView, fakeApi({ listKeys: async () => [restricted, expired, carol] }))
      const policy = (name: string) => itemOf(view, name).find('[data-testid="key-policy"]')
      expect(policy('alice').find('.badge-success').text()).toBe('Enabled')
      expect(policy('alice').text()).toMatch(/Expires 2999-01-01 \d\d:00:00 \(in \d+ days\)/)
      expect(policy('alice').findAll('.chip').map((c) => c.text())).toEqual(['llama3*', 'qwen*'])
      expect(policy('alice').text()).toContain('Limits: 60 requests/min, 2 at once')
      expect(policy('bob').find('.badge-danger').text()).toMatch(/^Expired 20(19-12-31|20-01-01)/)
      expect(policy('bob').text()).toContain('Models: all')
      expect(policy('bob').text()).toContain('Limits: none')
      expect(policy('carol').find('.badge').text()).toBe('Disabled')
      expect(button(itemOf(view, 'carol'), 'Enable').exists()).toBe(true)
      expect(button(itemOf(view, 'alice'), 'Disable').exists()).toBe(true)
    })

    it('checks the form by the api rules and sends nothing until it is right', async () => {
      const api = fakeApi({ listKeys: async () => [alice] })
      const view = await mountWithApi(KeysView, api)
      await button(itemOf(view, 'alice'), 'Limits').trigger('click')
      const form = view.find('form.policy-form')
      expect(document.activeElement?.getAttribute('type')).toBe('datetime-local')
      await form.find('input[id$="-requestsPerMinute"]').setValue('0')
      await form.find('input[id$="-models"]').setValue('a*, a*')
      await form.trigger('submit')
      expect(api.updateKey).not.toHaveBeenCalled()
      const rpm = form.find('input[id$="-requestsPerMinute"]')
      expect(rpm.attributes('aria-invalid')).toBe('true')
      expect(form.find(`#${rpm.attributes('aria-describedby')}`).text()).toBe('A whole number of 1 or more (empty: no limit).')
      expect(form.text()).toContain('“a*” is listed twice.')
    })

    it('saves only what changed and shows the key as saved', async () => {
      const saved = { ...alice, models: ['llama3*'], limits: { tokensPerDay: 5000 } }
      let stored = alice
      const api = fakeApi({ listKeys: async () => [stored], updateKey: async () => (stored = saved) })
      const view = await mountWithApi(KeysView, api)
      await button(itemOf(view, 'alice'), 'Limits').trigger('click')
      const form = view.find('form.policy-form')
      await form.find('input[id$="-models"]').setValue('llama3*')
      await form.find('input[id$="-tokensPerDay"]').setValue('5000')
      await form.trigger('submit')
      await flushPromises()
      expect(api.updateKey).toHaveBeenCalledWith(alice.id, { models: ['llama3*'], limits: { tokensPerDay: 5000 } })
      expect(view.find('form.policy-form').exists()).toBe(false)
      expect(itemOf(view, 'alice').text()).toContain('Limits: 5,000 tokens/day')
      expect(texts()).toContain('Saved the limits of alice')
    })

    it('refuses an expiry in the past in the form, without sending it', async () => {
      const api = fakeApi({ listKeys: async () => [alice] })
      const view = await mountWithApi(KeysView, api)
      await button(itemOf(view, 'alice'), 'Limits').trigger('click')
      const expires = view.find('input[type="datetime-local"]')
      await expires.setValue('2020-01-01T12:00')
      await view.find('form.policy-form').trigger('submit')
      expect(api.updateKey).not.toHaveBeenCalled()
      expect(expires.attributes('aria-invalid')).toBe('true')
      expect(view.find(`#${expires.attributes('aria-describedby')}`).text()).toBe(
        'That time has passed: pick one in the future (empty: never expires).',
      )
    })

    it("shows the server's refusal in the form, and keeps what was typed", async () => {
      const api = fakeApi({
        listKeys: async () => [alice],
        updateKey: async () => Promise.reject(new ApiError(400, '"expiresAt" must be in ISO 8601 date format')),
      })
      const view = await mountWithApi(KeysView, api)
      await button(itemOf(view, 'alice'), 'Limits').trigger('click')
      await view.find('input[id$="-maxConcurrent"]').setValue('3')
      await view.find('form.policy-form').trigger('submit')
      await flushPromises()
      expect(view.find('form.policy-form [role="alert"]').text()).toBe('"expiresAt" must be in ISO 8601 date format')
      expect((view.find('input[id$="-maxConcurrent"]').element as HTMLInputElement).value).toBe('3')
    })

    it('clears the expiry with Never', async () => {
      let stored = restricted
      const api = fakeApi({ listKeys: async () => [stored], updateKey: async () => (stored = alice) })
      const view = await mountWithApi(KeysView, api)
      await button(itemOf(view, 'alice'), 'Limits').trigger('click')
      const never = view.find('form.policy-form').findAll('button').find((b) => b.text() === 'Never')!
      await never.trigger('click')
      expect((view.find('input[type="datetime-local"]').element as HTMLInputElement).value).toBe('')
      expect(view.find('form.policy-form').findAll('button').some((b) => b.text() === 'Never')).toBe(false)
      await view.find('form.policy-form').trigger('submit')
      await flushPromises()
      expect(api.updateKey).toHaveBeenCalledWith(alice.id, { expiresAt: null })
      expect(itemOf(view, 'alice').text()).not.toContain('Expires')
    })

    it('closes without a request when nothing changed, or on Cancel', async () => {
      const api = fakeApi({ listKeys: async () => [restricted] })
      const view = await mountWithApi(KeysView, api)
      await button(itemOf(view, 'alice'), 'Limits').trigger('click')
      await view.find('form.policy-form').trigger('submit')
      expect(view.find('form.policy-form').exists()).toBe(false)
      await button(itemOf(view, 'alice'), 'Limits').trigger('click')
      await view.find('form.policy-form').findAll('button').find((b) => b.text() === 'Cancel')!.trigger('click')
      expect(view.find('form.policy-form').exists()).toBe(false)
      expect(api.updateKey).not.toHaveBeenCalled()
    })

    it('disables and enables a key at once', async () => {
      const api = fakeApi({
        listKeys: async () => [alice],
        updateKey: async (_id: string, change: { enabled: boolean }) => ({ ...alice, enabled: change.enabled }),
      })
      const view = await mountWithApi(KeysView, api)
      await button(itemOf(view, 'alice'), 'Disable').trigger('click')
      await flushPromises()
      expect(api.updateKey).toHaveBeenLastCalledWith(alice.id, { enabled: false })
      expect(itemOf(view, 'alice').find('.badge').text()).toBe('Disabled')
      expect(texts()).toContain('Disabled the key of alice: its clients are refused')
      await button(itemOf(view, 'alice'), 'Enable').trigger('click')
      await flushPromises()
      expect(api.updateKey).toHaveBeenLastCalledWith(alice.id, { enabled: true })
      expect(itemOf(view, 'alice').find('.badge').text()).toBe('Enabled')
    })

    it('says why a key could not be disabled, and leaves it as it was', async () => {
      const api = fakeApi({
        listKeys: async () => [alice],
        updateKey: async () => Promise.reject(new ApiError(404, 'API key not found')),
      })
      const view = await mountWithApi(KeysView, api)
      await button(itemOf(view, 'alice'), 'Disable').trigger('click')
      await flushPromises()
      expect(useNotices().notices.at(-1)).toMatchObject({ kind: 'error', text: 'Could not change the key of alice: API key not found' })
      expect(itemOf(view, 'alice').find('.badge').text()).toBe('Enabled')
    })
  })
})
