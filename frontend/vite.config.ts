/// <reference types="vitest/config" />
/// <reference types="node" />
// The admin app is served by the api under /admin/ (also through nginx), so every asset URL
// starts with /admin/. `npm run dev` proxies the API to a running llmp (LLMP_URL, default
// http://127.0.0.1:8080) and keeps the Host header, so the api's same-origin check passes.
// The build also writes a brotli (.br) and a gzip (.gz) copy of each text file worth
// compressing; the api sends them as they are to a browser that takes them (routes/ui.py).
import vue from '@vitejs/plugin-vue'
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { brotliCompressSync, constants, gzipSync } from 'node:zlib'
import { defineConfig, loadEnv, type Plugin } from 'vite'

const COMPRESSIBLE = /\.(js|css|html|svg|json|txt|map)$/
const MIN_BYTES = 1024 // below a packet, compression saves nothing

function* files(folder: string): Generator<string> {
  for (const name of readdirSync(folder)) {
    const path = join(folder, name)
    if (statSync(path).isDirectory()) yield* files(path)
    else yield path
  }
}

/** A .br and a .gz beside each compressible file of the output, when they are smaller. */
function precompress(): Plugin {
  let outDir = 'dist'
  return {
    name: 'llmp-precompress',
    apply: 'build',
    configResolved(config) {
      outDir = config.build.outDir
    },
    closeBundle() {
      for (const path of files(outDir)) {
        if (!COMPRESSIBLE.test(path)) continue
        const content = readFileSync(path)
        if (content.length < MIN_BYTES) continue
        const copies: [string, Buffer][] = [
          ['.br', brotliCompressSync(content, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } })],
          ['.gz', gzipSync(content, { level: 9 })],
        ]
        for (const [suffix, packed] of copies) {
          if (packed.length < content.length) writeFileSync(path + suffix, packed)
        }
      }
    },
  }
}

export default defineConfig(({ mode }) => {
  const target = loadEnv(mode, '.', 'LLMP_').LLMP_URL ?? 'http://127.0.0.1:8080'
  const proxied = { target, changeOrigin: false }
  return {
    base: '/admin/',
    plugins: [vue(), precompress()],
    build: { outDir: 'dist', emptyOutDir: true, target: 'es2022' },
    server: { proxy: { '/auth': proxied, '/api': proxied, '/nginx': proxied } },
    test: { environment: 'happy-dom', include: ['tests/**/*.test.ts'], restoreMocks: true },
  }
})
