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

  it('lists keys newest first, hidden until shown', async () => {
    const api = fakeApi({ listKeys: async () => [alice, bob] })
    const view = await mountWithApi(KeysView, api)
    const items = view.findAll('.key-item')
    expect(items.map((i) => i.attributes('data-username'))).toEqual(['bob', 'alice'])
    expect(view.text()).not.toContain(alice.key)
    expect(view.text()).toContain('sk-1111…aaaa')
    const show = items[1]!.findAll('button').find((b) => b.text().startsWith('Show'))!
    await show.trigger('click')
    expect(show.attributes('aria-pressed')).toBe('true')
    expect(view.text()).toContain(alice.key)
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
    const api = fakeApi({ listKeys: async () => [alice], createKey: async () => bob })
    const view = await mountWithApi(KeysView, api)
    await view.find('#new-username').setValue(' bob ')
    await view.find('form').trigger('submit')
    await flushPromises()
    expect(api.createKey).toHaveBeenCalledWith('bob')
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
    const dialog = view.find('dialog')

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

  it('asks for analytics of a key', async () => {
    const view = await mountWithApi(KeysView, fakeApi({ listKeys: async () => [alice] }))
    await view.findAll('.key-actions button').find((b) => b.text().startsWith('Analytics'))!.trigger('click')
    expect(view.emitted('analytics')).toEqual([[alice.id]])
  })
})
