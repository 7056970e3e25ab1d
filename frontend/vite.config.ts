/// <reference types="vitest/config" />
// The admin app is served by the api under /admin/ (also through nginx), so every asset URL
// starts with /admin/. `npm run dev` proxies the API to a running llmp (LLMP_URL, default
// http://127.0.0.1:8080) and keeps the Host header, so the api's same-origin check passes.
import vue from '@vitejs/plugin-vue'
import { defineConfig, loadEnv } from 'vite'

export default defineConfig(({ mode }) => {
  const target = loadEnv(mode, '.', 'LLMP_').LLMP_URL ?? 'http://127.0.0.1:8080'
  const proxied = { target, changeOrigin: false }
  return {
    base: '/admin/',
    plugins: [vue()],
    build: { outDir: 'dist', emptyOutDir: true, target: 'es2022' },
    server: { proxy: { '/auth': proxied, '/api': proxied, '/nginx': proxied } },
    test: { environment: 'happy-dom', include: ['tests/**/*.test.ts'], restoreMocks: true },
  }
})
