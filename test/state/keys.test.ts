// Key syntax: tenant/session[/…] paths of URL-safe segments, as the context API accepts them.
import { describe, expect, it } from 'vitest';
import { decodeKey, keyError, MAX_SEGMENT_BYTES, prefixError, tenantOf } from '../../src/state/api/keys.js';

const MAX_KEY_BYTES = 512;

describe('keyError', () => {
  it.each([
    'acme/session-1',
    'acme/s/turn/42',
    "a/b.c_d~e:f@g!h$i&j'k(l)m*n+o,p;q=r-s",
    'acme/...',
    'acme/.hidden',
    `acme/${'x'.repeat(MAX_SEGMENT_BYTES)}`,
  ])('accepts %s', (key) => {
    expect(keyError(key, MAX_KEY_BYTES)).toBeUndefined();
  });

  it.each([
    ['', /empty/],
    ['acme', /at least two segments/],
    ['acme/', /empty segment/],
    ['/acme/s', /empty segment/],
    ['acme//s', /empty segment/],
    ['acme/./s', /"\." is not allowed/],
    ['acme/..', /"\.\." is not allowed/],
    ['_mesh/s', /reserved/],
    ['acme/s p', /character " "/],
    ['acme/s?x', /character "\?"/],
    ['acme/s#x', /character "#"/],
    ['acme/s%41', /character "%"/],
    ['acme/é', /character "é"/],
    [`acme/${'x'.repeat(MAX_SEGMENT_BYTES + 1)}`, /longer than 128/],
  ])('refuses %j', (key, reason) => {
    expect(keyError(key, MAX_KEY_BYTES)).toMatch(reason);
  });

  it('bounds the whole key by maxKeyBytes', () => {
    const key = `acme/${'a'.repeat(100)}/${'b'.repeat(100)}`;
    expect(keyError(key, key.length)).toBeUndefined();
    expect(keyError(key, key.length - 1)).toMatch(`longer than ${key.length - 1} bytes`);
  });

  it('allows an underscore past the tenant', () => {
    expect(keyError('acme/_private', MAX_KEY_BYTES)).toBeUndefined();
  });
});

describe('prefixError', () => {
  it.each(['acme/', 'acme/sess', 'acme/session-1/', 'acme/s/t', 'acme/.'])('accepts %s', (prefix) => {
    expect(prefixError(prefix, MAX_KEY_BYTES)).toBeUndefined();
  });

  it.each([
    ['acme', /tenant and a "\/"/],
    ['', /tenant and a "\/"/],
    ['/', /empty segment/],
    ['_mesh/', /reserved/],
    ['acme//', /empty segment/],
    ['acme/../x', /not allowed/],
    ['acme/a b', /character " "/],
  ])('refuses %j', (prefix, reason) => {
    expect(prefixError(prefix, MAX_KEY_BYTES)).toMatch(reason);
  });
});

describe('decodeKey and tenantOf', () => {
  it('decodes percent-encoding once and passes plain keys through', () => {
    expect(decodeKey('acme/s%3A1')).toBe('acme/s:1');
    expect(decodeKey('acme%2Fs')).toBe('acme/s');
    expect(decodeKey('acme/%2541')).toBe('acme/%41');
    expect(decodeKey('acme/s')).toBe('acme/s');
  });

  it('returns undefined for malformed encoding', () => {
    expect(decodeKey('acme/%zz')).toBeUndefined();
    expect(decodeKey('acme/%')).toBeUndefined();
  });

  it('the tenant is the first segment', () => {
    expect(tenantOf('acme/s/t')).toBe('acme');
    expect(tenantOf('acme/')).toBe('acme');
  });
});
