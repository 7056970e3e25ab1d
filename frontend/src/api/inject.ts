// The API client reaches components through provide/inject, so tests can hand them a fake.
import { inject, type InjectionKey } from 'vue'
import type { Api } from './client'

export const API: InjectionKey<Api> = Symbol('api')

export function useApi(): Api {
  const api = inject(API)
  if (!api) throw new Error('useApi() needs an Api provided by the app')
  return api
}
