import { mount } from '@vue/test-utils'
import { describe, expect, it } from 'vitest'
import { h } from 'vue'
import FormField from '../src/components/FormField.vue'

function field(props: Record<string, unknown>) {
  return mount(FormField, {
    props: { label: 'Domain', ...props },
    slots: { default: (control: Record<string, unknown>) => h('input', control) },
  })
}

describe('FormField', () => {
  it('ties the label, the hint and the error to the control', () => {
    const view = field({ id: 'domain', hint: 'One per line.', error: 'Not a domain name: x' })
    const input = view.find('input')
    expect(view.find('label').attributes('for')).toBe('domain')
    expect(input.attributes('id')).toBe('domain')
    expect(input.attributes('aria-describedby')).toBe('domain-hint domain-error')
    expect(input.attributes('aria-invalid')).toBe('true')
    expect(view.find('#domain-hint').text()).toBe('One per line.')
    expect(view.find('#domain-error').text()).toBe('Not a domain name: x')
    expect(view.find('#domain-error').attributes('role')).toBe('alert')
  })

  it('says nothing more than its label when there is nothing to say, with an id of its own', () => {
    const view = field({})
    const input = view.find('input')
    expect(input.attributes('id')).toBeTruthy()
    expect(view.find('label').attributes('for')).toBe(input.attributes('id'))
    expect(input.attributes('aria-describedby')).toBeUndefined()
    expect(input.attributes('aria-invalid')).toBeUndefined()
    expect(view.findAll('p')).toHaveLength(0)
  })
})
