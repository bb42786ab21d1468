// Dotted version vectors with HLC dots. The property tests run random histories of a three-replica
// key — clients reading from one replica and writing through another, replicas exchanging whole
// states in any order, wall clocks skewed and stalled — and check the clocks against the ground
// truth: the explicit set of writes each write had seen.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HybridClock } from '../../../src/state/hlc.js';
import {
  ClockError,
  EMPTY_VECTOR,
  advanceFrontier,
  compare,
  compareDots,
  compareVectors,
  contextCoversAll,
  contextIsPlausible,
  contextOf,
  decodeClock,
  decodeContext,
  decodeSiblings,
  decodeVector,
  dotVersion,
  encodeClock,
  encodeContext,
  encodeSiblings,
  encodeVector,
  event,
  frontierFromRecord,
  frontierToRecord,
  joinVectors,
  parseDotVersion,
  stateMatches,
  stateTag,
  sync,
  type Clock,
  type Siblings,
  type VersionVector,
} from '../../../src/state/replication/clock.js';

const NODES = ['node-a', 'node-b', 'node-c'] as const;

type Op =
  | { kind: 'write'; coordinator: number; readFrom: number | null }
  | { kind: 'sync'; from: number; to: number }
  | { kind: 'time'; advanceMs: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('write' as const), coordinator: fc.nat(2), readFrom: fc.option(fc.nat(2), { nil: null }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('sync' as const), from: fc.nat(2), to: fc.nat(2) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('time' as const), advanceMs: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 50 })) }) },
);

interface Write {
  id: number;
  clock: Clock;
  /** Ground truth: every write this one had seen, itself included. */
  history: Set<number>;
}

/** Runs a history; returns every write and every state each replica passed through. */
function simulate(ops: readonly Op[], skewsMs: readonly number[]) {
  let now = 1_700_000_000_000;
  const hlcs = NODES.map((_, i) => new HybridClock(() => now + skewsMs[i]!));
  let states: Array<Siblings<number>> = NODES.map(() => []);
  const received: Array<Set<number>> = NODES.map(() => new Set());
  const writes: Write[] = [];
  const seenStates: Array<Siblings<number>> = [];
  const readThenWrite: Array<{ read: Siblings<number>; written: Clock }> = [];
  for (const op of ops) {
    if (op.kind === 'time') now += op.advanceMs;
    else if (op.kind === 'sync') {
      states[op.to] = sync(states[op.to]!, states[op.from]!);
      for (const id of received[op.from]!) received[op.to]!.add(id);
    } else {
      const read = op.readFrom === null ? [] : states[op.readFrom]!;
      const history = new Set<number>();
      for (const { value } of read) for (const id of writes[value]!.history) history.add(id);
      const id = writes.length;
      history.add(id);
      const { state, written } = event(states[op.coordinator]!, contextOf(read), NODES[op.coordinator]!, hlcs[op.coordinator]!, id);
      writes.push({ id, clock: written.clock, history });
      states = states.map((s, i) => (i === op.coordinator ? state : s));
      received[op.coordinator]!.add(id);
      readThenWrite.push({ read, written: written.clock });
    }
    seenStates.push(...states);
  }
  return { writes, states, received, seenStates, readThenWrite };
}

function truth(a: Write, b: Write): string {
  if (a.id === b.id) return 'equal';
  if (b.history.has(a.id)) return 'before';
  if (a.history.has(b.id)) return 'after';
  return 'concurrent';
}

const historyArb = fc.tuple(fc.array(opArb, { minLength: 1, maxLength: 40 }), fc.array(fc.integer({ min: -30, max: 30 }), { minLength: 3, maxLength: 3 }));
const RUNS = 300;

const dotsOf = (s: Siblings<unknown>) => s.map(({ clock }) => dotVersion(clock.dot));

describe('DVV clocks: properties over random histories', () => {
  it('compare agrees with the ground-truth causal history (so it is a partial order)', () => {
    fc.assert(
      fc.property(historyArb, ([ops, skews]) => {
        const { writes } = simulate(ops, skews);
        for (const a of writes) for (const b of writes) expect(compare(a.clock, b.clock)).toBe(truth(a, b));
      }),
      { numRuns: RUNS },
    );
  });

  it('compare is reflexive, antisymmetric and transitive on produced clocks', () => {
    fc.assert(
      fc.property(historyArb, ([ops, skews]) => {
        const clocks = simulate(ops, skews).writes.map((w) => w.clock);
        const le = (x: Clock, y: Clock) => ['before', 'equal'].includes(compare(x, y));
        for (const a of clocks) {
          expect(compare(a, a)).toBe('equal');
          for (const b of clocks) {
            if (a !== b && le(a, b)) expect(le(b, a)).toBe(false);
            for (const c of clocks) if (le(a, b) && le(b, c)) expect(le(a, c)).toBe(true);
          }
        }
      }),
      { numRuns: 100 },
    );
  });

  it('the HLC order of dots extends causality (last-writer-wins never lets an older write win)', () => {
    fc.assert(
      fc.property(historyArb, ([ops, skews]) => {
        const { writes } = simulate(ops, skews);
        for (const a of writes) for (const b of writes) if (truth(a, b) === 'before') expect(compareDots(a.clock.dot, b.clock.dot)).toBeLessThan(0);
      }),
      { numRuns: RUNS },
    );
  });

  it('each replica holds exactly the writes it received that nothing it received supersedes', () => {
    fc.assert(
      fc.property(historyArb, ([ops, skews]) => {
        const { writes, states, received } = simulate(ops, skews);
        states.forEach((state, i) => {
          const ids = [...received[i]!];
          const maximal = ids.filter((a) => !ids.some((b) => b !== a && writes[b]!.history.has(a)));
          expect(state.map((v) => v.value).sort((x, y) => x - y)).toEqual(maximal.sort((x, y) => x - y));
        });
      }),
      { numRuns: RUNS },
    );
  });

  it('a client that reads then writes supersedes everything it read', () => {
    fc.assert(
      fc.property(historyArb, ([ops, skews]) => {
        for (const { read, written } of simulate(ops, skews).readThenWrite) {
          for (const { clock } of read) expect(compare(clock, written)).toBe('before');
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('sync is commutative, associative and idempotent, and keeps no superseded value', () => {
    fc.assert(
      fc.property(historyArb, fc.array(fc.nat(), { minLength: 3, maxLength: 3 }), ([ops, skews], picks) => {
        const { seenStates } = simulate(ops, skews);
        const [a, b, c] = picks.map((p) => seenStates[p % seenStates.length]!) as [Siblings<number>, Siblings<number>, Siblings<number>];
        expect(dotsOf(sync(a, b))).toEqual(dotsOf(sync(b, a)));
        expect(dotsOf(sync(sync(a, b), c))).toEqual(dotsOf(sync(a, sync(b, c))));
        expect(dotsOf(sync(a, a))).toEqual(dotsOf(a));
        expect(sync(a, a)).toBe(a);
        const merged = sync(sync(a, b), c);
        for (const x of merged) for (const y of merged) if (x !== y) expect(compare(x.clock, y.clock)).toBe('concurrent');
        // Consistent with compare: everything of the inputs is in the result or superseded by it.
        for (const x of [...a, ...b, ...c]) {
          expect(merged.some((y) => ['before', 'equal'].includes(compare(x.clock, y.clock)))).toBe(true);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('the encodings round-trip every produced clock, state and context', () => {
    fc.assert(
      fc.property(historyArb, ([ops, skews]) => {
        const { writes, states } = simulate(ops, skews);
        for (const { clock } of writes) {
          const back = decodeClock(encodeClock(clock));
          expect(compare(back, clock)).toBe('equal');
          expect(compareVectors(back.past, clock.past)).toBe('equal');
          expect(parseDotVersion(dotVersion(clock.dot))).toEqual(clock.dot);
        }
        for (const state of states) {
          const context = contextOf(state);
          expect(compareVectors(decodeContext(encodeContext(context)), context)).toBe('equal');
          const bytes = encodeSiblings(state, (v) => Buffer.from(String(v)));
          const back = decodeSiblings(bytes, (b) => Number(b.toString()));
          expect(back.map((v) => v.value)).toEqual(state.map((v) => v.value));
          expect(stateTag(back)).toBe(stateTag(state));
        }
      }),
      { numRuns: 100 },
    );
  });

  it('decoding arbitrary bytes either yields a vector or throws ClockError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        try {
          decodeVector(Buffer.from(bytes));
        } catch (error) {
          expect(error).toBeInstanceOf(ClockError);
        }
      }),
      { numRuns: 2_000 },
    );
  });
});

describe('DVV clocks: examples', () => {
  const hlc = (start: number) => {
    let now = start;
    return { clock: new HybridClock(() => now), set: (t: number) => (now = t) };
  };

  it('two writers without each other\'s context produce siblings; a reader of both resolves them', () => {
    const a = hlc(1_000);
    const b = hlc(1_000);
    const w1 = event<string>([], EMPTY_VECTOR, 'node-a', a.clock, 'from a');
    const w2 = event<string>([], EMPTY_VECTOR, 'node-b', b.clock, 'from b');
    expect(compare(w1.written.clock, w2.written.clock)).toBe('concurrent');
    const both = sync(w1.state, w2.state);
    expect(both.map((v) => v.value)).toEqual(['from a', 'from b']);
    expect(stateTag(both)).toMatch(/^2~[A-Za-z0-9_-]{16}$/);

    const resolved = event(both, contextOf(both), 'node-a', a.clock, 'resolved');
    expect(resolved.state.map((v) => v.value)).toEqual(['resolved']);
    // node-b still holding its own write takes the resolution and drops it.
    expect(sync(w2.state, resolved.state).map((v) => v.value)).toEqual(['resolved']);
  });

  it('the same coordinator serving two clients that read the same version keeps both writes', () => {
    const a = hlc(5_000);
    const first = event<string>([], EMPTY_VECTOR, 'node-a', a.clock, 'v0');
    const context = contextOf(first.state);
    const x = event(first.state, context, 'node-a', a.clock, 'x');
    const y = event(x.state, context, 'node-a', a.clock, 'y');
    expect(y.state.map((v) => v.value)).toEqual(['x', 'y']);
    expect(contextCoversAll(context, y.state)).toBe(false);
    expect(contextCoversAll(contextOf(y.state), y.state)).toBe(true);
  });

  it('a blind write with the local context overwrites what the node holds', () => {
    const a = hlc(5_000);
    const one = event<string>([], EMPTY_VECTOR, 'node-a', a.clock, 'one');
    const two = event(one.state, contextOf(one.state), 'node-a', a.clock, 'two');
    expect(two.state.map((v) => v.value)).toEqual(['two']);
  });

  it('the ETag of a single value is today\'s version form, and If-Match compares whole states', () => {
    const a = hlc(1_712_000_000_123);
    const { state } = event<string>([], EMPTY_VECTOR, 'node-a', a.clock, 'v');
    expect(stateTag(state)).toBe('1712000000123.0@node-a');
    expect(stateMatches(state, '1712000000123.0@node-a')).toBe(true);
    expect(stateMatches(state, '1712000000123.1@node-a')).toBe(false);
    expect(stateMatches([], '1712000000123.0@node-a')).toBe(false);
    expect(stateTag([])).toBeUndefined();
  });

  it('a coordinator whose wall clock lags still stamps after what the client saw', () => {
    const fast = hlc(10_000);
    const slow = hlc(2_000);
    const w = event<string>([], EMPTY_VECTOR, 'node-a', fast.clock, 'fast');
    const next = event<string>([], contextOf(w.state), 'node-b', slow.clock, 'slow');
    expect(compareDots(w.written.clock.dot, next.written.clock.dot)).toBeLessThan(0);
    expect(next.written.clock.dot.ts).toEqual({ wall: 10_000, logical: 1 });
  });

  it('contexts are short strings, refused when malformed or from the far future', () => {
    const vector: VersionVector = new Map([
      ['node-a', { wall: 1_712_000_000_123, logical: 0 }],
      ['node-b', { wall: 1_712_000_004_000, logical: 3 }],
      ['node-c', { wall: 1_712_000_009_999, logical: 1 }],
    ]);
    const text = encodeContext(vector);
    expect(text.length).toBeLessThan(64);
    expect(compareVectors(decodeContext(text), vector)).toBe('equal');
    expect(() => decodeContext('not base64!')).toThrow(ClockError);
    expect(() => decodeContext(text.slice(0, -3))).toThrow(ClockError);
    expect(() => event([], vector, 'bad tag', new HybridClock(), 'x')).toThrow(ClockError);
    expect(contextIsPlausible(vector, 1_712_000_000_000)).toBe(true);
    expect(contextIsPlausible(vector, 1_711_000_000_000)).toBe(false);
  });

  it('compareVectors and joinVectors', () => {
    const v = (entries: Array<[string, number]>): VersionVector => new Map(entries.map(([n, w]) => [n, { wall: w, logical: 0 }]));
    expect(compareVectors(v([['a', 1]]), v([['a', 2]]))).toBe('before');
    expect(compareVectors(v([['a', 2], ['b', 1]]), v([['a', 2]]))).toBe('after');
    expect(compareVectors(v([['a', 1], ['b', 1]]), v([['a', 2]]))).toBe('concurrent');
    expect(compareVectors(v([]), v([]))).toBe('equal');
    expect(frontierToRecord(joinVectors(v([['a', 1], ['b', 5]]), v([['a', 3]])))).toEqual({ a: '3.0', b: '5.0' });
  });

  it('the frontier records the newest write per node and reads back from a snapshot header', () => {
    const a = hlc(100);
    const b = hlc(50);
    const w1 = event<number>([], EMPTY_VECTOR, 'node-a', a.clock, 1);
    const w2 = event<number>([], contextOf(w1.state), 'node-b', b.clock, 2);
    let frontier = advanceFrontier(EMPTY_VECTOR, w1.written.clock);
    frontier = advanceFrontier(frontier, w2.written.clock);
    const record = frontierToRecord(frontier);
    expect(record).toEqual({ 'node-a': '100.0', 'node-b': '100.1' });
    expect(compareVectors(frontierFromRecord(record), frontier)).toBe('equal');
    expect(() => frontierFromRecord({ 'node-a': 'yesterday' })).toThrow(ClockError);
  });
});
