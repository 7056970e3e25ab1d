import { mount } from '@vue/test-utils'
import { afterEach, describe, expect, it, vi } from 'vitest'

// uPlot draws on a canvas, which happy-dom has not: record what the chart is built with.
const built: { opts: any; data: any }[] = []
vi.mock('uplot', () => {
  class FakePlot {
    static paths = { bars: () => () => null }
    constructor(opts: any, data: any) {
      built.push({ opts, data })
    }
    destroy() {}
    setSize() {}
  }
  return { default: FakePlot }
})
const { default: TimeChart } = await import('../src/components/TimeChart.vue')

const HOUR = 3_600_000

describe('TimeChart', () => {
  afterEach(() => {
    built.length = 0
    document.body.replaceChildren()
  })

  it('leaves half a bucket before the first bar and after the last, so both show whole', () => {
    const times = [10 * HOUR, 11 * HOUR, 12 * HOUR]
    mount(TimeChart, {
      attachTo: document.body,
      props: { title: 'Requests', description: 'x', times, series: [{ label: 'Requests', values: [1, 2, 3], color: '--chart-1' }] },
    })
    const { opts, data } = built.at(-1)!
    expect(data[0]).toEqual([36_000, 39_600, 43_200])
    expect(opts.scales.x.range(null, 36_000, 43_200)).toEqual([36_000 - 1800, 43_200 + 1800])
  })

  it('takes the bucket from its step when there is one value', () => {
    mount(TimeChart, {
      attachTo: document.body,
      props: { title: 'Requests', description: 'x', times: [0], step: 24 * HOUR, series: [{ label: 'R', values: [4], color: '--chart-1' }] },
    })
    expect(built.at(-1)!.opts.scales.x.range(null, 0, 0)).toEqual([-43_200, 43_200])
  })
})
