// Mounting a component with a fake API client, and waiting for its promises to settle.
import { flushPromises, mount, type ComponentMountingOptions } from '@vue/test-utils'
import { vi } from 'vitest'
import type { Component } from 'vue'
import type { Api } from '../src/api/client'
import { API } from '../src/api/inject'

export type FakeApi = { [K in keyof Api]: ReturnType<typeof vi.fn> }

/** An Api whose every method is a vi.fn(); `overrides` give the answers a test needs. */
export function fakeApi(overrides: Partial<Record<keyof Api, (...args: never[]) => unknown>> = {}): FakeApi {
  const methods = [
    'login', 'logout', 'me', 'listKeys', 'createKey', 'updateKey', 'rotateKey', 'deleteKey', 'records', 'summary', 'recordsCsv', 'requestLog', 'requestById', 'breakdown',
    'spend', 'prices', 'setPrices',
    'upstreams', 'fleet', 'addUpstream', 'changeUpstream', 'removeUpstream', 'testUpstream', 'saveAlias', 'removeAlias',
    'nginxStatus', 'obtainCertificates', 'removeCertificate', 'renewCertificates', 'writeDefaultConfig',
    'getConfig', 'updateConfig', 'reloadNginx',
  ] as const
  const api = {} as FakeApi
  for (const name of methods) {
    const impl = overrides[name] ?? (() => Promise.reject(new Error(`${name} not expected`)))
    api[name] = vi.fn(impl as (...args: unknown[]) => unknown)
  }
  return api
}

export async function mountWithApi<C extends Component>(
  component: C,
  api: FakeApi,
  options: ComponentMountingOptions<C> = {},
) {
  const wrapper = mount(component, {
    ...options,
    attachTo: document.body,
    global: { ...options.global, provide: { [API as symbol]: api } },
  } as ComponentMountingOptions<C>)
  await flushPromises()
  return wrapper
}

export function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers },
  })
}
