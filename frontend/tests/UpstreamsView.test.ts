import { afterEach, describe, expect, it } from 'vitest'
import { flushPromises } from '@vue/test-utils'
import type { Fleet, Upstream, UpstreamConfig } from '../src/api/types'
import UpstreamsView from '../src/views/UpstreamsView.vue'
import { fakeApi, mountWithApi } from './fakes'

function upstream(over: Partial<Upstream> = {}): Upstream {
  return {
    id: 'target-1',
    url: 'http://gpu:8000/v1',
    healthy: true,
    models: ['llama3'],
    in_flight: 2,
    queued: 5,
    concurrency: 2,
    last_ok: null,
    last_error: null,
    circuit: 'serving',
    failures: 0,
    cooling_until: null,
    last_failure: null,
    ...over,
  }
}

function config(over: Partial<UpstreamConfig> = {}): UpstreamConfig {
  return {
    id: 'target-1',
    name: '',
    url: 'http://gpu:8000/v1',
    auth: 'bearer',
    keyHint: '…6789',
    concurrency: 2,
    requestsPerMinute: 600,
    tokensPerMinute: null,
    verify: null,
    caPem: null,
    proxy: null,
    keepalive: null,
    models: null,
    caFile: null,
    certFile: null,
    certKeyFile: null,
    ...over,
  }
}

function fleet(upstreams: UpstreamConfig[]): Fleet {
  return { success: true, source: 'TARGET_URLS', upstreams, aliases: [] }
}

afterEach(() => document.body.replaceChildren())

describe('UpstreamsView', () => {
  it('shows a capped upstream\'s requests at once and its queue', async () => {
    const api = fakeApi({
      upstreams: async () => [upstream(), upstream({ id: 'target-2', url: 'http://cpu:11434/v1', concurrency: null, queued: 0, in_flight: 1 })],
      fleet: async () => fleet([config(), config({ id: 'target-2', url: 'http://cpu:11434/v1', concurrency: null })]),
    })
    const view = await mountWithApi(UpstreamsView, api)
    const [capped, open] = view.findAll('ul.upstreams > li.card')
    expect(capped!.text()).toContain('2 requests of 2 at a time')
    expect(capped!.text()).toContain('Waiting5 requests')
    expect(capped!.text()).toContain('bearer …6789')
    expect(open!.text()).toContain('1 request')
    expect(open!.text()).not.toContain('Waiting')
    expect(open!.text()).not.toContain('at a time')
  })

  it('shows an upstream\'s own request and token limits', async () => {
    const api = fakeApi({
      upstreams: async () => [upstream(), upstream({ id: 'target-2', url: 'http://cpu:11434/v1' })],
      fleet: async () => fleet([
        config({ tokensPerMinute: 200000 }),
        config({ id: 'target-2', url: 'http://cpu:11434/v1', requestsPerMinute: null }),
      ]),
    })
    const view = await mountWithApi(UpstreamsView, api)
    const [limited, open] = view.findAll('ul.upstreams > li.card')
    expect(limited!.text()).toContain('Limits600 requests and 200,000 tokens a minute')
    expect(open!.text()).not.toContain('Limits')
  })

  it('says which upstream is cooling down after failures, and why', async () => {
    const api = fakeApi({
      upstreams: async () => [
        upstream({ circuit: 'cooling', failures: 3, cooling_until: Date.now() / 1000 + 120, last_failure: 'HTTP 500' }),
        upstream({ id: 'target-2', url: 'http://cpu:11434/v1' }),
      ],
      fleet: async () => fleet([config(), config({ id: 'target-2', url: 'http://cpu:11434/v1' })]),
    })
    const view = await mountWithApi(UpstreamsView, api)
    const [cooling, serving] = view.findAll('ul.upstreams > li.card')
    expect(cooling!.text()).toContain('Cooling down')
    expect(cooling!.text()).toContain('Failures in a row3, the last: HTTP 500')
    expect(cooling!.text()).toContain('Probed againin 2 minutes')
    expect(serving!.text()).toContain('Healthy')
    expect(serving!.text()).not.toContain('Failures')
  })

  it('changes an upstream without sending its key unless one is typed', async () => {
    const api = fakeApi({
      upstreams: async () => [upstream()],
      fleet: async () => fleet([config()]),
      changeUpstream: async () => config({ name: 'gpu box' }),
    })
    const view = await mountWithApi(UpstreamsView, api)
    await view.findAll('button').find((b) => b.text() === 'Edit')!.trigger('click')
    await view.find('input[type="text"][maxlength="100"]').setValue('gpu box')
    await view.find('form').trigger('submit')
    await flushPromises()
    const [id, change] = api.changeUpstream.mock.calls[0]!
    expect(id).toBe('target-1')
    expect(change).toMatchObject({ name: 'gpu box', concurrency: 2, requestsPerMinute: 600, tokensPerMinute: null, verify: null, models: null })
    expect(change).not.toHaveProperty('key')
  })

  it('shows what the test found', async () => {
    const api = fakeApi({
      upstreams: async () => [upstream()],
      fleet: async () => fleet([config()]),
      testUpstream: async () => ({
        ok: true,
        models: { ok: true, ms: 12.3, status: 200, models: ['llama3', 'qwen'], error: null },
        request: { ok: true, model: 'llama3', ms: 45.6, status: 200, error: null },
      }),
    })
    const view = await mountWithApi(UpstreamsView, api)
    await view.findAll('button').find((b) => b.text() === 'Test')!.trigger('click')
    await flushPromises()
    const result = view.find('.test-result')
    expect(result.text()).toContain('Lists 2 models (12 ms): llama3, qwen')
    expect(result.text()).toContain('llama3 answered a one-token request in 46 ms')
  })
})
