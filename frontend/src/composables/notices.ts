// Messages for the whole page, announced by the live regions in NoticeRegion.vue: successes
// politely, errors at once. Each goes away by itself (errors later) or when dismissed.
import { reactive } from 'vue'

export type NoticeKind = 'success' | 'error' | 'info'

export interface Notice {
  id: number
  kind: NoticeKind
  text: string
}

const notices = reactive<Notice[]>([])
let nextId = 1

export function dismiss(id: number): void {
  const index = notices.findIndex((n) => n.id === id)
  if (index >= 0) notices.splice(index, 1)
}

export function notify(text: string, kind: NoticeKind = 'success'): number {
  const id = nextId++
  notices.push({ id, kind, text })
  while (notices.length > 4) notices.shift()
  setTimeout(() => dismiss(id), kind === 'error' ? 12_000 : 5_000)
  return id
}

export function clearNotices(): void {
  notices.splice(0)
}

export function useNotices() {
  return { notices, notify, dismiss }
}
