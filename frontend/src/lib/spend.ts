// Spend and prices for the page: how a period and an amount read, and the prices form checked
// by the api's rules (shared/prices.py) before it is sent. Pure functions.

import type { BudgetPeriod, Price, Prices } from '../api/types'

// The api's bounds.
export const MAX_PRICE = 1_000_000
export const MAX_MODELS = 1000
export const MAX_MODEL_NAME = 200

/** An amount in the prices' currency: `12.50 USD`, small ones with four decimals. */
export function money(value: number, currency: string): string {
  const digits = value !== 0 && Math.abs(value) < 1 ? 4 : 2
  return `${value.toFixed(digits)} ${currency}`
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']

/** A spend period by its first millisecond, in UTC like the api's periods: `2026-12-03`,
 * `week of 2026-11-30`, `Dec 2026`. */
export function periodLabel(time: number, period: BudgetPeriod): string {
  const d = new Date(time)
  const day = d.toISOString().slice(0, 10)
  if (period === 'day') return day
  if (period === 'week') return `week of ${day}`
  return `${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()}`
}

/** One model's line of the prices form, as typed. */
export interface PriceLine {
  model: string
  prompt: string
  completion: string
}

export interface PricesForm {
  currency: string
  lines: PriceLine[]
}

export function pricesForm(prices: Prices): PricesForm {
  return {
    currency: prices.currency,
    lines: Object.entries(prices.models).map(([model, p]) => ({ model, prompt: String(p.prompt), completion: String(p.completion) })),
  }
}

function priceError(text: string): string | null {
  const value = text.trim()
  if (!/^\d+(\.\d+)?$/.test(value)) return 'a number such as 0.6'
  if (Number(value) > MAX_PRICE) return `at most ${MAX_PRICE.toLocaleString('en-US')}`
  return null
}

/** What the api would refuse in the form, one message per problem; empty when it is fine. Lines
 * left wholly empty are ignored. */
export function pricesErrors(form: PricesForm): string[] {
  const errors: string[] = []
  if (!/^[A-Z]{3}$/.test(form.currency.trim())) errors.push('The currency is a three-letter code such as USD or EUR.')
  const lines = form.lines.filter((l) => l.model.trim() || l.prompt.trim() || l.completion.trim())
  if (lines.length > MAX_MODELS) errors.push(`At most ${MAX_MODELS} models.`)
  const seen = new Set<string>()
  lines.forEach((line, i) => {
    const model = line.model.trim()
    const name = model ? `“${model}”` : `Line ${i + 1}`
    if (!model) errors.push(`${name}: the model name is missing.`)
    else if (model.length > MAX_MODEL_NAME) errors.push(`${name}: a model name is at most ${MAX_MODEL_NAME} characters.`)
    else if (seen.has(model)) errors.push(`${name} is listed twice.`)
    seen.add(model)
    for (const part of ['prompt', 'completion'] as const) {
      const problem = priceError(line[part])
      if (problem) errors.push(`${name}: the ${part} price must be ${problem}.`)
    }
  })
  return errors
}

/** The prices the form holds (check `pricesErrors` first). */
export function pricesOf(form: PricesForm): Prices {
  const models: Record<string, Price> = {}
  for (const line of form.lines) {
    const model = line.model.trim()
    if (model) models[model] = { prompt: Number(line.prompt.trim()), completion: Number(line.completion.trim()) }
  }
  return { currency: form.currency.trim(), models }
}
