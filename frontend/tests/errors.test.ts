import { describe, expect, it } from 'vitest'
import { ApiError } from '../src/api/client'
import { errorText } from '../src/lib/errors'

describe('errorText', () => {
  it("says an error's message, and anything else as it is", () => {
    expect(errorText(new ApiError(400, 'Username is required'))).toBe('Username is required')
    expect(errorText(new TypeError('boom'))).toBe('boom')
    expect(errorText('plain')).toBe('plain')
    expect(errorText(404)).toBe('404')
  })
})
