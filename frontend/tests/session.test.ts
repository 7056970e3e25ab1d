import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, describe, expect, it } from 'vitest'
import { ApiError, createApi } from '../src/api/client'
import { API } from '../src/api/inject'
import App from '../src/App.vue'
import { createSession } from '../src/composables/session'
import LoginView from '../src/views/LoginView.vue'
import { fakeApi, jsonResponse } from './fakes'

afterEach(() => document.body.replaceChildren())

describe('session', () => {
  it('asks the api who is logged in', async () => {
    const api = fakeApi({ me: async () => 'admin' })
    const session = createSession(() => api as never)
    expect(session.state).toBe('checking')
    await session.check()
    expect(session).toMatchObject({ state: 'authenticated', username: 'admin' })
  })

  it('is anonymous without a cookie, and after logout even if the call fails', async () => {
    const api = fakeApi({ me: async () => null, login: async () => 'admin', logout: async () => Promise.reject(new Error('offline')) })
    const session = createSession(() => api as never)
    await session.check()
    expect(session.state).toBe('anonymous')
    await session.login('admin', 'password1')
    expect(session).toMatchObject({ state: 'authenticated', username: 'admin' })
    await expect(session.logout()).rejects.toThrow('offline')
    expect(session).toMatchObject({ state: 'anonymous', username: '' })
  })
})

describe('LoginView', () => {
  it('shows why a login failed, next to the form', async () => {
    const api = fakeApi({ login: async () => Promise.reject(new ApiError(401, 'Invalid credentials')) })
    const session = createSession(() => api as never)
    const view = mount(LoginView, { props: { session }, attachTo: document.body })
    expect(document.activeElement).toBe(view.find('#login-username').element)
    await view.find('#login-username').setValue('admin')
    await view.find('#login-password').setValue('wrong-password')
    await view.find('form').trigger('submit')
    await flushPromises()
    expect(view.find('[role="alert"]').text()).toBe('Invalid credentials')
    expect(view.find('#login-password').attributes('aria-invalid')).toBe('true')
    expect(api.login).toHaveBeenCalledWith('admin', 'wrong-password')
  })

  it('asks for both fields before sending, and explains throttling', async () => {
    const api = fakeApi({ login: async () => Promise.reject(new ApiError(429, 'Too many', 120)) })
    const view = mount(LoginView, { props: { session: createSession(() => api as never) } })
    await view.find('form').trigger('submit')
    expect(view.find('[role="alert"]').text()).toBe('Enter your username and password.')
    expect(api.login).not.toHaveBeenCalled()
    await view.find('#login-username').setValue('admin')
    await view.find('#login-password').setValue('password1')
    await view.find('form').trigger('submit')
    await flushPromises()
    expect(view.find('[role="alert"]').text()).toBe('Too many failed logins. Try again in 2 minutes.')
  })
})

describe('App', () => {
  it('goes back to the login form when any call answers 401', async () => {
    let loggedIn = true
    const fetch = async (input: RequestInfo | URL) => {
      const path = String(input)
      if (!loggedIn) return jsonResponse(401, { error: 'Authentication required' })
      if (path === '/api/me') return jsonResponse(200, { username: 'admin' })
      if (path === '/api/keys') return jsonResponse(200, { success: true, keys: [], usage: {} })
      if (path === '/api/fleet') return jsonResponse(200, { success: true, source: 'TARGET_URLS', upstreams: [], aliases: [] })
      return jsonResponse(200, { success: true, upstreams: [] })
    }
    const api = createApi({ fetch: fetch as typeof globalThis.fetch, onUnauthorized: () => session.expire() })
    const session = createSession(() => api)
    const app = mount(App, { props: { session }, global: { provide: { [API as symbol]: api } }, attachTo: document.body })
    await session.check()
    await flushPromises()
    expect(app.find('[data-testid="who"]').text()).toBe('Logged in as admin')
    expect(document.title).toBe('API keys · llmp admin')

    await app.findAll('[role="tab"]').find((t) => t.text() === 'Upstreams')!.trigger('click')
    await flushPromises()
    expect(window.location.pathname).toBe('/admin/upstreams')
    loggedIn = false
    await app.findAll('button').find((b) => b.text() === 'Refresh')!.trigger('click')
    await flushPromises()
    expect(app.find('#login-username').exists()).toBe(true)
    expect(app.text()).toContain('Your session has ended. Please log in again.')
    expect(window.location.pathname).toBe('/admin/upstreams') // the same place after logging in
  })
})
