// Versions and session tokens are read by a hand-written scanner (no allocation on the write path):
// it must accept exactly what `<wall>.<logical>` (1-15 and 1-9 ASCII digits) describes, and order
// versions by timestamp, then by the whole string.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseTimestamp } from '../../src/state/hlc.js';
import { compareVersions, versionTimestamp } from '../../src/state/version.js';

const reference = (text: string) => {
  const match = /^(\d{1,15})\.(\d{1,9})$/.exec(text);
  return match ? { wall: Number(match[1]), logical: Number(match[2]) } : undefined;
};

/** Strings near the form: digits, dots, `@`, other characters, in any mix and length. */
const nearly = fc.array(fc.constantFrom('0', '1', '7', '9', '.', '@', 'a', ' ', '٣', '-'), { maxLength: 30 }).map((cs) => cs.join(''));
/** Timestamps from a small range, so that equal walls with different logicals come up. */
const close = fc.tuple(fc.nat({ max: 3 }), fc.nat({ max: 12 })).map(([w, l]) => `${w}.${l}`);
const stamp = fc.tuple(fc.nat({ max: 999_999_999_999_999 }), fc.nat({ max: 999_999_999 })).map(([w, l]) => `${w}.${l}`);

describe('version scanning', () => {
  it('parses exactly what the form describes, to the same numbers', () => {
    fc.assert(
      fc.property(fc.oneof(nearly, stamp, fc.string()), (text) => {
        expect(parseTimestamp(text)).toEqual(reference(text));
        const version = `${text}@node-a`;
        // The timestamp is what stands before the first `@`.
        expect(versionTimestamp(version)).toEqual(reference(version.split('@')[0]!));
      }),
      { numRuns: 3_000 },
    );
    for (const edge of ['1.1', '123456789012345.123456789', '1234567890123456.1', '1.1234567890', '.1', '1.', '01.002', '1.1 ', '１.1']) {
      expect(parseTimestamp(edge)).toEqual(reference(edge));
    }
  });

  it('orders versions by timestamp, then as strings, as before', () => {
    const version = fc.tuple(fc.oneof(close, stamp, nearly), fc.constantFrom('@a', '@b', '', '@node-c')).map(([t, n]) => t + n);
    fc.assert(
      fc.property(version, version, (a, b) => {
        const ta = reference(a.split('@')[0]!);
        const tb = reference(b.split('@')[0]!);
        const byString = a < b ? -1 : a > b ? 1 : 0;
        const expected = ta && tb ? Math.sign(ta.wall - tb.wall || ta.logical - tb.logical) || byString : byString;
        expect(Math.sign(compareVersions(a, b))).toBe(expected);
      }),
      { numRuns: 3_000 },
    );
  });
});
