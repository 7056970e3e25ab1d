// A key's name, owner and note, and its rotation, by the api's rules
// (shared/key_validation.py): checked here so that a mistake is shown before anything is sent.
import type { ApiKey, KeyDetails } from '../api/types'

export const TEXT_LENGTHS = { name: 50, owner: 200, note: 500 } as const
export type DetailName = keyof typeof TEXT_LENGTHS
export type DetailsForm = Record<DetailName, string>
export type DetailsErrors = Partial<Record<DetailName, string>>

const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/

/** How a key is named to a person: its username, and its name when it has one. */
export function keyLabel(key: Pick<ApiKey, 'username' | 'name'>): string {
  return key.name ? `${key.username} (${key.name})` : key.username
}

export function detailsForm(key?: ApiKey): DetailsForm {
  return { name: key?.name ?? '', owner: key?.owner ?? '', note: key?.note ?? '' }
}

export function detailsErrors(form: DetailsForm): DetailsErrors {
  const errors: DetailsErrors = {}
  for (const field of Object.keys(TEXT_LENGTHS) as DetailName[]) {
    const text = form[field].trim()
    if (text.length > TEXT_LENGTHS[field]) errors[field] = `At most ${TEXT_LENGTHS[field]} characters.`
    else if (field === 'name' && text && !KEY_NAME.test(text))
      errors[field] = 'Letters, digits, “.”, “_” and “-”, starting with a letter or digit.'
    else if (CONTROL.test(text)) errors[field] = 'Printable characters only, on one line.'
  }
  return errors
}

/** What changed, for `PATCH /api/keys/{id}` (an emptied field is null), or what was filled in,
 * for a new key (no key given). */
export function detailsChange(form: DetailsForm, key?: ApiKey): KeyDetails {
  const change: KeyDetails = {}
  for (const field of Object.keys(TEXT_LENGTHS) as DetailName[]) {
    const text = form[field].trim()
    if (key === undefined) {
      if (text) change[field] = text
    } else if (text !== (key[field] ?? '')) {
      change[field] = text || null
    }
  }
  return change
}

/** The rotation's overlaps offered: how long the old secret keeps working. */
export const OVERLAPS = [
  { value: 0, label: 'Refuse it at once' },
  { value: 3600, label: 'For 1 hour' },
  { value: 86400, label: 'For 1 day' },
  { value: 7 * 86400, label: 'For 7 days' },
  { value: 30 * 86400, label: 'For 30 days' },
] as const

/** The end of an overlap of `seconds` from `now` (ms), as the api takes it; null: at once. */
export function overlapUntil(seconds: number, now: number = Date.now()): string | null {
  return seconds > 0 ? new Date(now + seconds * 1000).toISOString() : null
}

/** The previous secrets still accepted at `now` (ms). */
export function acceptedPrevious(key: ApiKey, now: number = Date.now()): { key: string; until: number }[] {
  return (key.previousKeys ?? [])
    .map((p) => ({ key: p.key, until: Date.parse(p.until) }))
    .filter((p) => p.until > now)
}
