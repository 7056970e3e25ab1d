import { describe, expect, it } from 'vitest'
import { barRange, stepOf } from '../src/lib/chart'

const HOUR = 3600

describe('the bar charts x range', () => {
  it('holds the first and the last bar whole', () => {
    const times = [10 * HOUR, 11 * HOUR, 12 * HOUR]
    const [start, end] = barRange(times[0]!, times[2]!, stepOf(times, HOUR))
    expect(start).toBe(9.5 * HOUR)
    expect(end).toBe(12.5 * HOUR)
  })

  it('takes the step from the values, and the fallback for one value', () => {
    expect(stepOf([0, 86400, 2 * 86400], HOUR)).toBe(86400)
    expect(stepOf([0, HOUR, 3 * HOUR], 1)).toBe(HOUR)
    expect(stepOf([5], HOUR)).toBe(HOUR)
    expect(stepOf([], HOUR)).toBe(HOUR)
    expect(barRange(5, 5, HOUR)).toEqual([5 - HOUR / 2, 5 + HOUR / 2])
  })
})
