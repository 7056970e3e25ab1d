// Checks run in the browser before a form is sent, so a mistake is shown at once and inline.
// The server checks again and has the last word: its message is shown the same way.

/** The api's rules for a key's username, in its words (original-behavior.md 1.4). */
export function usernameErrors(value: string): string[] {
  const name = value.trim()
  if (!name) return ['Username is required']
  const errors: string[] = []
  if (!/^[A-Za-z0-9]+$/.test(name)) errors.push('Username must contain only alphanumeric characters')
  if (name.length < 3) errors.push('Username must be at least 3 characters long')
  if (name.length > 50) errors.push('Username must not exceed 50 characters')
  return errors
}

function ipv4(text: string): boolean {
  const parts = text.split('.')
  return parts.length === 4 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)
}

function ipv6(text: string): boolean {
  if (!/^[0-9a-fA-F:.]+$/.test(text) || text.split('::').length > 2) return false
  let groups = text.split(':')
  const last = groups[groups.length - 1] ?? ''
  let size = 8
  if (last.includes('.')) {
    if (!ipv4(last)) return false
    groups = groups.slice(0, -1)
    size = 6
  }
  const filled = groups.filter((g) => g !== '')
  if (!filled.every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) return false
  return text.includes('::') ? filled.length < size : groups.length === size
}

/** Whether `text` is an IPv4 or IPv6 address, with or without a /prefix. */
export function isCidr(text: string): boolean {
  const [address = '', prefix, ...rest] = text.split('/')
  if (rest.length) return false
  const v4 = ipv4(address)
  if (!v4 && !ipv6(address)) return false
  if (prefix === undefined) return true
  if (!/^\d{1,3}$/.test(prefix)) return false
  return Number(prefix) <= (v4 ? 32 : 128)
}

/** Entries of a list typed one per line, or separated by commas or spaces. */
export function splitList(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean)
}

/** A host name for a certificate: `example.com`, `llm.example.com`, `*.example.com`. */
export function isDomain(text: string): boolean {
  const name = text.startsWith('*.') ? text.slice(2) : text
  if (name.length > 253 || !name.includes('.')) return false
  return name
    .split('.')
    .every((label) => /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(label))
}
