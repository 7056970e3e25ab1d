import { afterEach, describe, expect, it } from 'vitest'
import { flushPromises } from '@vue/test-utils'
import type { ModelAlias, UpstreamConfig } from '../src/api/types'
import AliasesCard from '../src/components/AliasesCard.vue'
import { fakeApi, mountWithApi } from './fakes'

const gpu: UpstreamConfig = {
  id: 'gpu', name: 'gpu box', url: 'http://gpu:8000/v1', auth: 'bearer', keyHint: null, concurrency: null, requestsPerMinute: null, tokensPerMinute: null,
  verify: null, caPem: null, proxy: null, keepalive: null, models: null, caFile: null, certFile: null, certKeyFile: null,
}

const chat: ModelAlias = {
  name: 'chat',
  strategy: 'weighted',
  fallback: null,
  deployments: [{ upstream: 'gpu', model: 'llama3', weight: 1, priority: 0 }],
}

afterEach(() => document.body.replaceChildren())

describe('AliasesCard', () => {
  it('saves how deployments of one priority are chosen', async () => {
    const api = fakeApi({ saveAlias: async (alias: ModelAlias) => alias })
    const view = await mountWithApi(AliasesCard, api, { props: { aliases: [chat], upstreams: [gpu], known: {} } })
    expect(view.text()).not.toContain('least busy first')
    await view.findAll('button').find((b) => b.text() === 'Edit')!.trigger('click')
    const strategy = view.findAll('select').find((s) => s.find('option[value="least-busy"]').exists())!
    expect((strategy.element as HTMLSelectElement).value).toBe('weighted')
    await strategy.setValue('least-busy')
    await view.find('form').trigger('submit')
    await flushPromises()
    expect(api.saveAlias.mock.calls[0]![0]).toMatchObject({ name: 'chat', strategy: 'least-busy' })
  })

  it('offers the deployment whose first token comes soonest', async () => {
    const api = fakeApi({ saveAlias: async (alias: ModelAlias) => alias })
    const fastest = { ...chat, strategy: 'latency' as const }
    const view = await mountWithApi(AliasesCard, api, { props: { aliases: [fastest], upstreams: [gpu], known: {} } })
    expect(view.text()).toContain('fastest first')
    await view.findAll('button').find((b) => b.text() === 'Edit')!.trigger('click')
    const strategy = view.findAll('select').find((s) => s.find('option[value="latency"]').exists())!
    expect((strategy.element as HTMLSelectElement).value).toBe('latency')
    await view.find('form').trigger('submit')
    await flushPromises()
    expect(api.saveAlias.mock.calls[0]![0]).toMatchObject({ name: 'chat', strategy: 'latency' })
  })

  it('saves the fallback alias, chosen among the others', async () => {
    const long: ModelAlias = { ...chat, name: 'chat-long' }
    const api = fakeApi({ saveAlias: async (alias: ModelAlias) => alias })
    const view = await mountWithApi(AliasesCard, api, { props: { aliases: [chat, long], upstreams: [gpu], known: {} } })
    await view.findAll('button').find((b) => b.text() === 'Edit')!.trigger('click')
    const fallback = view.findAll('select').find((s) => s.find('option[value="chat-long"]').exists())!
    expect(fallback.findAll('option').map((o) => o.text())).toEqual(['None', 'chat-long'])
    await fallback.setValue('chat-long')
    await view.find('form').trigger('submit')
    await flushPromises()
    expect(api.saveAlias.mock.calls[0]![0]).toMatchObject({ name: 'chat', fallback: 'chat-long' })
  })

  it('says which aliases pick the least busy deployment', async () => {
    const busy = { ...chat, strategy: 'least-busy' as const, fallback: 'chat-long' }
    const view = await mountWithApi(AliasesCard, fakeApi(), { props: { aliases: [busy], upstreams: [gpu], known: {} } })
    expect(view.text()).toContain('least busy first')
    expect(view.text()).toContain('falls back to chat-long')
  })
})
