// Who is logged in. The cookie (HttpOnly) is the session; this only mirrors what the api says:
// `check` asks /api/me at start, a 401 from any call ends the session (`expire`).
import { reactive } from 'vue'
import { ApiError, type Api } from '../api/client'

export type SessionState = 'checking' | 'anonymous' | 'authenticated'

export interface Session {
  state: SessionState
  username: string
  /** why the login form is shown again, if it was not the admin's choice */
  reason: string
  check(): Promise<void>
  login(username: string, password: string): Promise<void>
  logout(): Promise<void>
  expire(): void
}

export function createSession(api: () => Api): Session {
  const session: Session = reactive({
    state: 'checking' as SessionState,
    username: '',
    reason: '',
    async check() {
      try {
        const username = await api().me()
        if (username === null) {
          session.state = 'anonymous'
        } else {
          session.username = username
          session.state = 'authenticated'
        }
      } catch (error) {
        session.state = 'anonymous'
        session.reason = error instanceof ApiError ? error.message : String(error)
      }
    },
    async login(username: string, password: string) {
      session.username = await api().login(username, password)
      session.reason = ''
      session.state = 'authenticated'
    },
    async logout() {
      try {
        await api().logout()
      } finally {
        session.username = ''
        session.reason = ''
        session.state = 'anonymous'
      }
    },
    expire() {
      if (session.state !== 'authenticated') return
      session.state = 'anonymous'
      session.reason = 'Your session has ended. Please log in again.'
    },
  })
  return session
}
