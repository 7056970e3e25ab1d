import { flushPromises } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError } from '../src/api/client'
import type { NginxStatus } from '../src/api/types'
import BusyButton from '../src/components/BusyButton.vue'
import CidrGroupsForm from '../src/components/CidrGroupsForm.vue'
import NginxConfigEditor from '../src/components/NginxConfigEditor.vue'
import { clearNotices, useNotices } from '../src/composables/notices'
import TlsView from '../src/views/TlsView.vue'
import { fakeApi, mountWithApi } from './fakes'

const DAY = 86_400_000

function status(over: Partial<NginxStatus> = {}): NginxStatus {
  return {
    success: true,
    generation: 3,
    appliedGeneration: 3,
    nginx: { ok: true, error: null, at: 1_795_000_000 },
    certificates: [
      { name: 'llm.example.com', domains: ['llm.example.com'], notAfter: new Date(Date.now() + 60 * DAY).toISOString(), lastRenewal: null, lastError: null },
      { name: 'old.example.com', domains: ['old.example.com'], notAfter: new Date(Date.now() - DAY).toISOString(), lastRenewal: null, lastError: 'DNS problem' },
      { name: 'new.example.com', domains: ['new.example.com'], notAfter: null, lastRenewal: null, lastError: null },
    ],
    site: { domains: ['llm.example.com'], cidrGroups: ['10.0.0.0/8'], acmeEmail: 'me@example.com', httpMode: 'serve' },
    ...over,
  }
}

beforeEach(() => clearNotices())
afterEach(() => {
  vi.useRealTimers()
  document.body.replaceChildren()
})

describe('TlsView', () => {
  it('shows the site, the certificates and their expiry', async () => {
    const api = fakeApi({ nginxStatus: async () => status(), getConfig: async () => 'server {}' })
    const view = await mountWithApi(TlsView, api)
    expect(view.text()).toContain('nginx is running the current configuration.')
    const rows = view.findAll('tbody tr')
    expect(rows).toHaveLength(3)
    expect(rows[0]!.find('.badge').classes()).toContain('badge-success')
    expect(rows[0]!.text()).toContain('in 60 days')
    expect(rows[1]!.find('.badge').text()).toMatch(/^Expired/)
    expect(rows[1]!.text()).toContain('DNS problem')
    expect(rows[2]!.find('.badge').text()).toBe('Not issued')
    expect((view.find('#obtain-domains').element as HTMLInputElement).value).toBe('llm.example.com')
    expect((view.find('#cidr-groups').element as HTMLTextAreaElement).value).toBe('10.0.0.0/8')
    expect((view.find('#cidr-http').element as HTMLSelectElement).value).toBe('serve')
  })

  it('retries and removes a certificate never issued, and only such a one', async () => {
    const api = fakeApi({
      nginxStatus: async () => status(),
      getConfig: async () => 'server {}',
      obtainCertificates: async () => Promise.reject(new ApiError(500, 'No certificate for new.example.com: No TXT records found')),
      removeCertificate: async () => 'Removed new.example.com.',
    })
    const view = await mountWithApi(TlsView, api)
    const rows = view.findAll('tbody tr')
    expect(rows[0]!.findAll('button')).toHaveLength(0) // issued: nothing to retry or remove
    expect(rows[1]!.findAll('button')).toHaveLength(0)
    const [retry, remove] = rows[2]!.findAll('button')
    expect(retry!.text()).toBe('Retry new.example.com')
    await retry!.trigger('click')
    await flushPromises()
    expect(api.obtainCertificates).toHaveBeenCalledWith(['new.example.com'])
    expect(useNotices().notices.at(-1)).toMatchObject({ kind: 'error', text: 'new.example.com: No certificate for new.example.com: No TXT records found' })

    await remove!.trigger('click')
    const dialog = view.find('dialog')
    expect(dialog.text()).toContain('Remove this certificate request?')
    expect(api.removeCertificate).not.toHaveBeenCalled()
    await dialog.findAll('button').find((b) => b.text() === 'Remove')!.trigger('click')
    await flushPromises()
    expect(api.removeCertificate).toHaveBeenCalledWith('new.example.com')
    expect(useNotices().notices.at(-1)).toMatchObject({ kind: 'success', text: 'Removed new.example.com.' })
  })

  it('says when the api has no nginx routes', async () => {
    const api = fakeApi({
      nginxStatus: async () => Promise.reject(new ApiError(404, 'Not found')),
      getConfig: async () => Promise.reject(new ApiError(404, 'Not found')),
    })
    const view = await mountWithApi(TlsView, api)
    expect(view.text()).toContain('does not offer TLS and nginx management yet')
  })

  it("shows nginx's refusal of the running config", async () => {
    const refused = status({ nginx: { ok: false, error: 'nginx: [emerg] unknown directive "x"', at: 1_795_000_000 } })
    const view = await mountWithApi(TlsView, fakeApi({ nginxStatus: async () => refused, getConfig: async () => '' }))
    expect(view.find('.alert-error pre').text()).toBe('nginx: [emerg] unknown directive "x"')
  })

  it('obtains a certificate with progress, and checks the domains first', async () => {
    let finish: (message: string) => void = () => {}
    const api = fakeApi({
      nginxStatus: async () => status(),
      getConfig: async () => '',
      obtainCertificates: () => new Promise<string>((resolve) => (finish = resolve)),
    })
    const view = await mountWithApi(TlsView, api)
    const form = view.find('#obtain-domains').element.closest('form')!
    await view.find('#obtain-domains').setValue('llm.example.com, not a domain')
    await form.dispatchEvent(new Event('submit'))
    await flushPromises()
    expect(view.find('#obtain-error').text()).toBe('Not a domain name: not, a, domain')
    expect(api.obtainCertificates).not.toHaveBeenCalled()

    vi.useFakeTimers()
    await view.find('#obtain-domains').setValue('llm.example.com www.llm.example.com')
    await view.find('#obtain-email').setValue('ops@example.com')
    form.dispatchEvent(new Event('submit'))
    await flushPromises()
    expect(api.obtainCertificates).toHaveBeenCalledWith(['llm.example.com', 'www.llm.example.com'], 'ops@example.com')
    await vi.advanceTimersByTimeAsync(5_000)
    const busy = view.findAllComponents(BusyButton).find((b) => b.text().startsWith('Obtaining'))!
    expect(busy.text()).toBe('Obtaining… 5 s')
    expect(busy.attributes('aria-busy')).toBe('true')
    expect(view.find('progress').exists()).toBe(true)
    finish('Certificates obtained successfully.')
    await flushPromises()
    expect(useNotices().notices.map((n) => n.text)).toContain('Certificates obtained successfully.')
    expect(view.find('progress').exists()).toBe(false)
  })
})

describe('CidrGroupsForm', () => {
  const props = { domain: 'llm.example.com', cidrGroups: ['10.0.0.0/8'], httpMode: 'redirect' as const }

  it('refuses what is not a network or a domain, inline', async () => {
    const api = fakeApi()
    const form = await mountWithApi(CidrGroupsForm, api, { props })
    await form.find('#cidr-groups').setValue('10.0.0.0/8\n300.1.1.1/8\nfc00::/7')
    await form.find('#cidr-domain').setValue('')
    await form.find('form').trigger('submit')
    expect(form.find('#cidr-groups-error').text()).toBe('Not an address or CIDR range: 300.1.1.1/8')
    expect(form.find('#cidr-groups').attributes('aria-invalid')).toBe('true')
    expect(form.find('#cidr-domain-error').text()).toBe('Enter the domain this server answers to.')
    expect(api.writeDefaultConfig).not.toHaveBeenCalled()
  })

  it('writes the default config with the groups and the HTTP mode', async () => {
    const api = fakeApi({ writeDefaultConfig: async () => 'Default config written successfully' })
    const form = await mountWithApi(CidrGroupsForm, api, { props })
    await form.find('#cidr-groups').setValue('203.0.113.7/32, 10.0.0.0/8\n::1')
    await form.find('#cidr-http').setValue('serve')
    await form.find('form').trigger('submit')
    await flushPromises()
    expect(api.writeDefaultConfig).toHaveBeenCalledWith('llm.example.com', ['203.0.113.7/32', '10.0.0.0/8', '::1'], 'serve')
    expect(form.emitted('saved')).toHaveLength(1)
  })

  it("shows the server's message when it is not saved", async () => {
    const api = fakeApi({ writeDefaultConfig: async () => Promise.reject(new ApiError(504, 'Saved, but certd has not applied it')) })
    const form = await mountWithApi(CidrGroupsForm, api, { props })
    await form.find('form').trigger('submit')
    await flushPromises()
    expect(form.find('[role="alert"] pre').text()).toBe('Saved, but certd has not applied it')
  })

  it('takes new values from the server, unless the admin is editing', async () => {
    const form = await mountWithApi(CidrGroupsForm, fakeApi(), { props })
    await form.setProps({ cidrGroups: ['192.168.0.0/16'] })
    expect((form.find('#cidr-groups').element as HTMLTextAreaElement).value).toBe('192.168.0.0/16')
    await form.find('#cidr-groups').setValue('172.16.0.0/12')
    await form.setProps({ cidrGroups: ['10.9.0.0/16'] })
    expect((form.find('#cidr-groups').element as HTMLTextAreaElement).value).toBe('172.16.0.0/12')
  })
})

describe('NginxConfigEditor', () => {
  it("keeps the text and shows nginx's own error when the config is refused", async () => {
    const error = 'nginx: [emerg] unknown directive "oops" in server.conf:3'
    const api = fakeApi({
      getConfig: async () => 'server {}\n',
      updateConfig: async () => Promise.reject(new ApiError(400, error)),
    })
    const editor = await mountWithApi(NginxConfigEditor, api)
    const save = () => editor.findAllComponents(BusyButton).find((b) => b.text() === 'Save and apply')!
    expect(save().attributes('disabled')).toBeDefined() // nothing changed yet
    await editor.find('#nginx-config').setValue('server {}\noops;\n')
    await editor.find('form').trigger('submit')
    await flushPromises()
    expect(api.updateConfig).toHaveBeenCalledWith('server {}\noops;\n')
    expect(editor.find('[data-testid="nginx-error"]').text()).toBe(error)
    expect((editor.find('#nginx-config').element as HTMLTextAreaElement).value).toBe('server {}\noops;\n')
    await editor.findAll('button').find((b) => b.text() === 'Discard changes')!.trigger('click')
    expect((editor.find('#nginx-config').element as HTMLTextAreaElement).value).toBe('server {}\n')
    expect(editor.find('[data-testid="nginx-error"]').exists()).toBe(false)
  })

  it('applies a good config', async () => {
    const api = fakeApi({ getConfig: async () => 'a', updateConfig: async () => 'Nginx configuration updated.' })
    const editor = await mountWithApi(NginxConfigEditor, api)
    await editor.find('#nginx-config').setValue('b')
    await editor.find('form').trigger('submit')
    await flushPromises()
    expect(useNotices().notices.map((n) => n.text)).toContain('Nginx configuration updated.')
    expect(editor.emitted('saved')).toHaveLength(1)
    expect(editor.text()).not.toContain('Unsaved changes')
  })
})
