// The quorum rule on its own: majority of the other live members, never fewer than two, newest
// report per observer, inside the suspicion window.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { evaluateQuorum, HealthReportBook, quorumSize, type HealthReport } from '../../xds/health/quorum.js';

const WINDOW_MS = 5_000;
const report = (observer: string, subject: string, status: HealthReport['status'], receivedAt = 0, incarnation = 0): HealthReport => ({
  observer,
  subject,
  status,
  incarnation,
  receivedAt,
});

describe('quorum', () => {
  it('needs a strict majority of the other members, and at least two', () => {
    expect([1, 2, 3, 4, 5, 6].map(quorumSize)).toEqual([2, 2, 2, 3, 3, 4]);
  });

  it('declares with a majority and not with a minority', () => {
    const members = ['a', 'b', 'c', 'd', 'e'];
    const minority = evaluateQuorum({ subject: 'e', members, reports: [report('a', 'e', 'dead'), report('b', 'e', 'suspect')], now: 0, windowMs: WINDOW_MS });
    expect(minority).toMatchObject({ voters: 4, needed: 3, failed: false });
    const majority = evaluateQuorum({
      subject: 'e',
      members,
      reports: [report('a', 'e', 'dead'), report('b', 'e', 'suspect'), report('c', 'e', 'dead')],
      now: 0,
      windowMs: WINDOW_MS,
    });
    expect(majority).toMatchObject({ failed: true, suspecting: ['a', 'b', 'c'] });
  });

  it('lets no single observer evict a member, even in a pair', () => {
    const verdict = evaluateQuorum({ subject: 'b', members: ['a', 'b'], reports: [report('a', 'b', 'dead')], now: 0, windowMs: WINDOW_MS });
    expect(verdict.failed).toBe(false);
  });

  it('ignores reports from non-members, about other subjects, or older than the window', () => {
    const verdict = evaluateQuorum({
      subject: 'c',
      members: ['a', 'b', 'c', 'd'],
      reports: [report('x', 'c', 'dead'), report('a', 'd', 'dead'), report('b', 'c', 'dead', -WINDOW_MS - 1), report('c', 'c', 'dead'), report('d', 'c', 'dead')],
      now: 0,
      windowMs: WINDOW_MS,
    });
    expect(verdict).toMatchObject({ voters: 3, suspecting: ['d'], failed: false });
  });

  it('a minority side of any partition can never declare a majority-side member failed', () => {
    fc.assert(
      fc.property(fc.integer({ min: 3, max: 15 }), fc.integer({ min: 0, max: 1_000 }), (size, seed) => {
        const members = Array.from({ length: size }, (_, i) => `m${i}`);
        // The minority: fewer than half of all members (and the subject sits on the majority side).
        const minoritySize = Math.floor((size - 1) / 2);
        const minority = members.slice(0, minoritySize);
        const subject = members[minoritySize + (seed % (size - minoritySize))]!;
        const reports = minority.map((observer) => report(observer, subject, 'dead'));
        return !evaluateQuorum({ subject, members, reports, now: 0, windowMs: WINDOW_MS }).failed;
      }),
    );
  });

  it('keeps the newest report per observer and subject, refusing a lower incarnation', () => {
    const book = new HealthReportBook();
    expect(book.record(report('a', 'b', 'suspect', 0, 2))).toBe(true);
    expect(book.record(report('a', 'b', 'alive', 1, 1))).toBe(false);
    expect(book.record(report('a', 'b', 'alive', 2, 3))).toBe(true);
    expect(book.about('b')).toEqual([report('a', 'b', 'alive', 2, 3)]);
    book.prune(2 + WINDOW_MS + 1, WINDOW_MS);
    expect(book.about('b')).toEqual([]);
    book.record(report('a', 'b', 'dead'));
    book.record(report('b', 'a', 'dead'));
    book.forget('a');
    expect(book.about('b')).toEqual([]);
    expect(book.about('a')).toEqual([]);
  });
});
