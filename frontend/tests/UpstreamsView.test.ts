import { afterEach, describe, expect, it } from 'vitest'
import type { Upstream } from '../src/api/types'
import UpstreamsView from '../src/views/UpstreamsView.vue'
import { fakeApi, mountWithApi } from './fakes'

function upstream(over: Partial<Upstream> = {}): Upstream {
  return {
    url: 'http://gpu:8000/v1',
    healthy: true,
    models: ['llama3'],
    in_flight: 2,
    queued: 5,
    concurrency: 2,
    last_ok: null,
    last_error: null,
    ...over,
  }
}

afterEach(() => document.body.replaceChildren())

describe('UpstreamsView', () => {
  it('shows a capped upstream\'s requests at once and its queue', async () => {
    const api = fakeApi({ upstreams: async () => [upstream(), upstream({ url: 'http://cpu:11434/v1', concurrency: null, queued: 0, in_flight: 1 })] })
    const view = await mountWithApi(UpstreamsView, api)
    const [capped, open] = view.findAll('li.card')
    expect(capped!.text()).toContain('2 requests of 2 at a time')
    expect(capped!.text()).toContain('Waiting5 requests')
    expect(open!.text()).toContain('1 request')
    expect(open!.text()).not.toContain('Waiting')
    expect(open!.text()).not.toContain('at a time')
  })
})
