import { createApp } from 'vue'
import App from './App.vue'
import { createApi } from './api/client'
import { API } from './api/inject'
import { createSession } from './composables/session'
import './styles.css'

const api = createApi({ onUnauthorized: () => session.expire() })
const session = createSession(() => api)

createApp(App, { session }).provide(API, api).mount('#app')
void session.check()
