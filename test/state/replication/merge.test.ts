// The three conflict tiers. Property tests run random histories of one key on three replicas —
// clients reading the (merged) value from one replica and writing through another, appending to
// a conversation and editing fields, replicas reconciling in random order — and check that the
// replicas converge, that no appended message is lost, and that merging is order-independent and
// idempotent. Examples pin the field-level rules, LWW, the non-JSON fallback and the sibling cap.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Json } from '../../../src/state/api/merge-patch.js';
import { HybridClock } from '../../../src/state/hlc.js';
import { EMPTY_VECTOR, contextOf, dotVersion, type Siblings, type VersionVector } from '../../../src/state/replication/clock.js';
import { ConflictResolver, isJsonContentType, type Payload } from '../../../src/state/replication/merge.js';

const NODES = ['node-a', 'node-b', 'node-c'] as const;
const KEY = 'conv/42';

type Edit =
  | { kind: 'append'; text: string }
  | { kind: 'set'; field: number; value: number }
  | { kind: 'delete'; field: number };

type Op =
  | { kind: 'write'; coordinator: number; readFrom: number | null; edit: Edit }
  | { kind: 'sync'; from: number; to: number }
  | { kind: 'time'; advanceMs: number };

const editArb: fc.Arbitrary<Edit> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('append' as const), text: fc.string({ maxLength: 6 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('set' as const), field: fc.nat(2), value: fc.nat(9) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const), field: fc.nat(2) }) },
);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('write' as const), coordinator: fc.nat(2), readFrom: fc.option(fc.nat(2), { nil: null, freq: 6 }), edit: editArb }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('sync' as const), from: fc.nat(2), to: fc.nat(2) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('time' as const), advanceMs: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 20 })) }) },
);

const json = (value: Json, contentType = 'application/json'): Payload => ({ value: Buffer.from(JSON.stringify(value)), contentType });
const parse = (payload: Payload | undefined): { [member: string]: Json } => (payload && !payload.tombstone ? JSON.parse(payload.value.toString()) : {});
const dots = (s: Siblings<Payload>) => s.map(({ clock }) => dotVersion(clock.dot));

function simulate(resolver: ConflictResolver, ops: readonly Op[], skews: readonly number[]) {
  let now = 1_700_000_000_000;
  const hlcs = NODES.map((_, i) => new HybridClock(() => now + skews[i]!));
  const states: Array<Siblings<Payload>> = NODES.map(() => []);
  const appended: string[] = [];
  const seen: Array<Siblings<Payload>> = [];
  for (const op of ops) {
    if (op.kind === 'time') now += op.advanceMs;
    else if (op.kind === 'sync') {
      const outcome = resolver.reconcile(KEY, states[op.to]!, states[op.from]!);
      states[op.to] = outcome.state;
    } else {
      const view = op.readFrom === null ? undefined : resolver.view(KEY, states[op.readFrom]!);
      const doc = parse(view?.value);
      const { edit } = op;
      if (edit.kind === 'append') {
        const id = `m${appended.length}`;
        appended.push(id);
        const messages = Array.isArray(doc['messages']) ? doc['messages'] : [];
        doc['messages'] = [...messages, { id, ts: now, text: edit.text }];
      } else if (edit.kind === 'set') doc[`f${edit.field}`] = edit.value;
      else delete doc[`f${edit.field}`];
      const context: VersionVector = view?.context ?? EMPTY_VECTOR;
      states[op.coordinator] = resolver.write(KEY, states[op.coordinator]!, context, json(doc), NODES[op.coordinator]!, hlcs[op.coordinator]!).state;
    }
    seen.push(...states);
  }
  return { states, appended, seen };
}

/** Every replica reconciles with every other until nothing changes. */
function antiEntropy(resolver: ConflictResolver, states: Array<Siblings<Payload>>): void {
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < states.length; i++) for (let j = 0; j < states.length; j++) states[i] = resolver.reconcile(KEY, states[i]!, states[j]!).state;
  }
}

const historyArb = fc.tuple(fc.array(opArb, { minLength: 1, maxLength: 40 }), fc.array(fc.integer({ min: -20, max: 20 }), { minLength: 3, maxLength: 3 }));
const RUNS = 200;

describe('json-merge: properties over random histories', () => {
  const resolver = new ConflictResolver({ policies: [{ prefix: 'conv/', strategy: 'json-merge' }], maxSiblings: 64 });

  it('replicas converge to the same versions and the same merged value', () => {
    fc.assert(
      fc.property(historyArb, ([ops, skews]) => {
        const { states } = simulate(resolver, ops, skews);
        antiEntropy(resolver, states);
        const views = states.map((s) => resolver.view(KEY, s));
        for (const view of views) {
          expect(dots(view.siblings)).toEqual(dots(views[0]!.siblings));
          expect(view.value?.value.toString()).toBe(views[0]!.value?.value.toString());
          expect(view.conflict).toBe(false);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('a message appended anywhere is in the merged result, once', () => {
    fc.assert(
      fc.property(historyArb, ([ops, skews]) => {
        const { states, appended } = simulate(resolver, ops, skews);
        antiEntropy(resolver, states);
        const messages = (parse(resolver.view(KEY, states[0]!).value)['messages'] ?? []) as Array<{ id: string }>;
        expect(messages.map((m) => m.id).sort()).toEqual([...appended].sort());
      }),
      { numRuns: RUNS },
    );
  });

  it('merging the same states in any order gives the same result; merging twice changes nothing', () => {
    fc.assert(
      fc.property(historyArb, fc.array(fc.nat(), { minLength: 2, maxLength: 5 }), fc.nat(), ([ops, skews], picks, seed) => {
        const { seen } = simulate(resolver, ops, skews);
        const inputs = picks.map((p) => seen[p % seen.length]!);
        const shuffled = [...inputs].sort((a, b) => ((inputs.indexOf(a) * 7919 + seed) % 13) - ((inputs.indexOf(b) * 7919 + seed) % 13));
        const fold = (list: Array<Siblings<Payload>>) => list.reduce<Siblings<Payload>>((acc, s) => resolver.reconcile(KEY, acc, s).state, []);
        const one = fold(inputs);
        const other = fold(shuffled.reverse());
        expect(dots(one)).toEqual(dots(other));
        expect(resolver.view(KEY, one).value?.value.toString()).toBe(resolver.view(KEY, other).value?.value.toString());
        const again = resolver.reconcile(KEY, one, one);
        expect(again.changed).toBe(false);
        expect(again.state).toBe(one);
        expect(resolver.reconcile(KEY, one, inputs[0]!).changed).toBe(false);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('lww: properties', () => {
  const resolver = new ConflictResolver({ defaultStrategy: 'lww' });

  it('every replica keeps one version, and they converge on the newest write by HLC', () => {
    fc.assert(
      fc.property(historyArb, ([ops, skews]) => {
        const { states, seen } = simulate(resolver, ops, skews);
        for (const s of seen) expect(s.length).toBeLessThanOrEqual(1);
        antiEntropy(resolver, states);
        const all = seen.flat().map((v) => v.clock.dot);
        if (all.length === 0) return;
        const newest = all.reduce((a, b) => (a.ts.wall - b.ts.wall || a.ts.logical - b.ts.logical || (a.node < b.node ? -1 : 1)) > 0 ? a : b);
        for (const s of states) expect(dots(s)).toEqual([dotVersion(newest)]);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('conflict tiers: examples', () => {
  const clocks = () => {
    let now = 1_000;
    return { set: (t: number) => (now = t), a: new HybridClock(() => now), b: new HybridClock(() => now), c: new HybridClock(() => now) };
  };

  const resolver = new ConflictResolver({
    policies: [
      { prefix: 'conv/', strategy: 'json-merge' },
      { prefix: 'conv/raw/', strategy: 'siblings' },
      { prefix: 'doc/', strategy: 'siblings' },
    ],
    defaultStrategy: 'lww',
    maxSiblings: 3,
  });

  /** A base written by a, then a and b each edit it without seeing the other: returns the merged view. */
  function concurrentEdits(key: string, base: Json, editA: Json, editB: Json, bLater = true) {
    const t = clocks();
    const first = resolver.write(key, [], EMPTY_VECTOR, json(base), 'node-a', t.a).state;
    const context = contextOf(first);
    t.set(bLater ? 2_000 : 3_000);
    const a = resolver.write(key, first, context, json(editA), 'node-a', t.a).state;
    t.set(bLater ? 3_000 : 2_000);
    const b = resolver.write(key, first, context, json(editB), 'node-b', t.b).state;
    const merged = resolver.reconcile(key, a, b);
    return { merged, view: resolver.view(key, merged.state) };
  }

  it('the longest matching prefix picks the tier', () => {
    expect(resolver.strategyFor('conv/1')).toBe('json-merge');
    expect(resolver.strategyFor('conv/raw/1')).toBe('siblings');
    expect(resolver.strategyFor('session/1')).toBe('lww');
    expect(() => new ConflictResolver({ maxSiblings: 0 })).toThrow(RangeError);
  });

  it('json-merge: a field changed on one side keeps its change; changed on both, the newer write wins', () => {
    const { merged, view } = concurrentEdits(
      'conv/1',
      { title: 't0', owner: 'ann', n: 1, gone: true },
      { title: 't0', owner: 'bob', n: 2, gone: true },
      { title: 't1', owner: 'ann', n: 3 },
    );
    expect(merged.state).toHaveLength(2);
    expect(merged.conflict).toBeUndefined();
    expect(view).toMatchObject({ conflict: false, resolvedBy: 'json-merge' });
    expect(parse(view.value)).toEqual({ title: 't1', owner: 'bob', n: 3 });
    // The other way round in time: a's edit of n is the newer one.
    expect(parse(concurrentEdits('conv/1', { n: 1 }, { n: 2 }, { n: 3 }, false).view.value)).toEqual({ n: 2 });
  });

  it('json-merge: nested objects merge member by member', () => {
    const { view } = concurrentEdits('conv/2', { user: { name: 'a', tz: 'UTC' } }, { user: { name: 'b', tz: 'UTC' } }, { user: { name: 'a', tz: 'CET' } });
    expect(parse(view.value)).toEqual({ user: { name: 'b', tz: 'CET' } });
  });

  it('json-merge: two sidecars appending to one conversation keep both messages, ordered by timestamp', () => {
    const m0 = { id: 'm0', ts: 10, text: 'hi' };
    const { view } = concurrentEdits(
      'conv/3',
      { messages: [m0] },
      { messages: [m0, { id: 'a1', ts: 30, text: 'from a' }] },
      { messages: [m0, { id: 'b1', createdAt: 20, text: 'from b' }] },
    );
    expect((parse(view.value)['messages'] as Array<{ id: string }>).map((m) => m.id)).toEqual(['m0', 'b1', 'a1']);
  });

  it('json-merge: a bare message list as the whole value merges too, with ISO timestamps', () => {
    const m0 = { id: 1, timestamp: '2024-01-01T00:00:00Z' };
    const { view } = concurrentEdits('conv/4', [m0], [m0, { id: 3, timestamp: '2024-01-01T00:00:09Z' }], [m0, { id: 2, timestamp: '2024-01-01T00:00:05Z' }]);
    expect((JSON.parse(view.value!.value.toString()) as Array<{ id: number }>).map((m) => m.id)).toEqual([1, 2, 3]);
  });

  it('json-merge: a conversation created on both sides of a partition keeps both first messages', () => {
    const t = clocks();
    const a = resolver.write('conv/5', [], EMPTY_VECTOR, json({ messages: [{ id: 'x', ts: 1 }] }), 'node-a', t.a).state;
    t.set(5_000);
    const b = resolver.write('conv/5', [], EMPTY_VECTOR, json({ messages: [{ id: 'y', ts: 2 }] }), 'node-b', t.b).state;
    const view = resolver.view('conv/5', resolver.reconcile('conv/5', a, b).state);
    expect(parse(view.value)).toEqual({ messages: [{ id: 'x', ts: 1 }, { id: 'y', ts: 2 }] });
  });

  it('json-merge: a removed message stays removed; a message appended concurrently with the removal stays', () => {
    const t = clocks();
    const base = resolver.write('conv/6', [], EMPTY_VECTOR, json([{ id: 1 }, { id: 2 }]), 'node-a', t.a).state;
    t.set(2_000);
    const b = resolver.write('conv/6', base, contextOf(base), json([{ id: 1 }, { id: 2 }, { id: 3 }]), 'node-b', t.b).state;
    t.set(3_000);
    const a = resolver.write('conv/6', base, contextOf(base), json([{ id: 1 }]), 'node-a', t.a).state;
    const view = resolver.view('conv/6', resolver.reconcile('conv/6', a, b).state);
    expect(JSON.parse(view.value!.value.toString())).toEqual([{ id: 1 }, { id: 3 }]);
    // Re-adding a removed message later brings it back.
    t.set(4_000);
    const readded = resolver.write('conv/6', resolver.reconcile('conv/6', a, b).state, view.context, json([{ id: 1 }, { id: 2 }, { id: 3 }]), 'node-c', t.c).state;
    const later = resolver.view('conv/6', resolver.reconcile('conv/6', readded, a).state);
    expect(JSON.parse(later.value!.value.toString())).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }]);
  });

  it('json-merge: writing with the merged view\'s context collapses the siblings, and later merges still use field stamps', () => {
    const t = clocks();
    const base = resolver.write('conv/7', [], EMPTY_VECTOR, json({ a: 1, b: 1, c: 1 }), 'node-a', t.a).state;
    t.set(2_000);
    const fromA = resolver.write('conv/7', base, contextOf(base), json({ a: 2, b: 1, c: 1 }), 'node-a', t.a).state;
    const fromB = resolver.write('conv/7', base, contextOf(base), json({ a: 1, b: 2, c: 1 }), 'node-b', t.b).state;
    const both = resolver.reconcile('conv/7', fromA, fromB).state;
    const view = resolver.view('conv/7', both);
    expect(parse(view.value)).toEqual({ a: 2, b: 2, c: 1 });
    t.set(3_000);
    const collapsed = resolver.write('conv/7', both, view.context, json({ ...parse(view.value), c: 3 }), 'node-a', t.a).state;
    expect(collapsed).toHaveLength(1);
    // node-c, partitioned since the base, changes b later than anyone.
    t.set(4_000);
    const fromC = resolver.write('conv/7', base, contextOf(base), json({ a: 1, b: 9, c: 1 }), 'node-c', t.c).state;
    const final = resolver.view('conv/7', resolver.reconcile('conv/7', collapsed, fromC).state);
    expect(parse(final.value)).toEqual({ a: 2, b: 9, c: 3 });
  });

  it('json-merge: a deletion of the key wins only when it is the newest version', () => {
    const t = clocks();
    const base = resolver.write('conv/8', [], EMPTY_VECTOR, json({ a: 1 }), 'node-a', t.a).state;
    t.set(2_000);
    const deleted = resolver.write('conv/8', base, contextOf(base), { value: Buffer.alloc(0), contentType: 'application/json', tombstone: true }, 'node-a', t.a).state;
    t.set(3_000);
    const edited = resolver.write('conv/8', base, contextOf(base), json({ a: 2 }), 'node-b', t.b).state;
    expect(parse(resolver.view('conv/8', resolver.reconcile('conv/8', deleted, edited).state).value)).toEqual({ a: 2 });
    t.set(4_000);
    const deletedLater = resolver.write('conv/8', base, contextOf(base), { value: Buffer.alloc(0), contentType: 'application/json', tombstone: true }, 'node-c', t.c).state;
    expect(resolver.view('conv/8', resolver.reconcile('conv/8', edited, deletedLater).state).value?.tombstone).toBe(true);
  });

  it('json-merge falls back to siblings when a version is not JSON, with a conflict record', () => {
    const t = clocks();
    const a = resolver.write('conv/9', [], EMPTY_VECTOR, json({ a: 1 }), 'node-a', t.a).state;
    const b = resolver.write('conv/9', [], EMPTY_VECTOR, { value: Buffer.from('plain words'), contentType: 'text/plain' }, 'node-b', t.b).state;
    const outcome = resolver.reconcile('conv/9', a, b);
    expect(outcome.conflict).toMatchObject({ key: 'conv/9', strategy: 'json-merge', reason: 'not-json' });
    expect(outcome.conflict!.siblings.map((v) => v.value.toString())).toEqual(['{"a":1}', 'plain words']);
    expect(resolver.view('conv/9', outcome.state)).toMatchObject({ conflict: true, resolvedBy: 'none' });
    expect(resolver.view('conv/9', outcome.state).value).toBeUndefined();
    // Bad JSON under a JSON content type falls back the same way.
    const c = resolver.write('conv/9', [], EMPTY_VECTOR, { value: Buffer.from('{oops'), contentType: 'application/json' }, 'node-c', t.c).state;
    expect(resolver.reconcile('conv/9', a, c).conflict?.reason).toBe('not-json');
  });

  it('lww: the newest HLC wins, ties on time broken by node tag, never by arrival order', () => {
    const t = clocks();
    const a = resolver.write('plain', [], EMPTY_VECTOR, json('a'), 'node-a', t.a).state;
    const b = resolver.write('plain', [], EMPTY_VECTOR, json('b'), 'node-b', t.b).state;
    expect(a[0]!.clock.dot.ts).toEqual(b[0]!.clock.dot.ts);
    for (const [x, y] of [[a, b], [b, a]] as const) {
      const outcome = resolver.reconcile('plain', x, y);
      expect(outcome.state.map((v) => v.value.value.toString())).toEqual(['"b"']);
      expect(outcome.conflict).toBeUndefined();
    }
    expect(resolver.reconcile('plain', b, a).changed).toBe(false);
  });

  it('siblings: concurrent versions are kept and reported; past maxSiblings the oldest are dropped and reported', () => {
    const t = clocks();
    let state: Siblings<Payload> = [];
    const reports = [];
    for (let i = 0; i < 5; i++) {
      t.set(1_000 + i);
      const node = NODES[i % 3]!;
      const write = resolver.write('doc/1', [], EMPTY_VECTOR, { value: Buffer.from(`v${i}`), contentType: 'text/plain' }, node, [t.a, t.b, t.c][i % 3]!).state;
      const outcome = resolver.reconcile('doc/1', state, write);
      state = outcome.state;
      reports.push(outcome);
    }
    expect(state.map((v) => v.value.value.toString())).toEqual(['v2', 'v3', 'v4']);
    expect(reports[1]!.conflict?.siblings.map((v) => v.value.toString())).toEqual(['v0', 'v1']);
    expect(reports[3]!.dropped.map((v) => v.value.value.toString())).toEqual(['v0']);
    expect(reports[4]!.conflict?.dropped.map((v) => v.value.toString())).toEqual(['v1']);
    expect(reports[4]!.conflict?.siblings.map((v) => v.version)).toEqual(state.map((v) => dotVersion(v.clock.dot)));
    const view = resolver.view('doc/1', state);
    expect(view.conflict).toBe(true);
    expect(view.value).toBeUndefined();
    expect(view.etag).toMatch(/^3~/);
    // Resolving: a write with the read's context supersedes every sibling.
    const resolved = resolver.write('doc/1', state, view.context, { value: Buffer.from('settled'), contentType: 'text/plain' }, 'node-a', t.a);
    expect(resolved.state.map((v) => v.value.value.toString())).toEqual(['settled']);
    expect(resolved.conflict).toBeUndefined();
  });

  it('recognises JSON content types', () => {
    expect(isJsonContentType('application/json; charset=utf-8')).toBe(true);
    expect(isJsonContentType('application/vnd.ctxmesh.conversation+json')).toBe(true);
    expect(isJsonContentType('text/plain')).toBe(false);
    expect(isJsonContentType('application/jsonx')).toBe(false);
  });
});
