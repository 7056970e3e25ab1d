// What the charts need beyond uPlot: the x range that leaves room for the first and last bars.
// Pure functions.

/** The bucket size of evenly spaced times (the smallest gap), or `fallback` for fewer than two. */
export function stepOf(times: readonly number[], fallback: number): number {
  let step = Infinity
  for (let i = 1; i < times.length; i++) {
    const gap = times[i]! - times[i - 1]!
    if (gap > 0 && gap < step) step = gap
  }
  return Number.isFinite(step) ? step : fallback
}

/**
 * The x range (in the unit of `min`/`max`) that shows a bar of width `step` centred on each
 * value whole: half a step before the first and after the last. uPlot's own range ends at the
 * first and last values, which cuts their bars in half (today's bar among them).
 */
export function barRange(min: number, max: number, step: number): [number, number] {
  return [min - step / 2, max + step / 2]
}
