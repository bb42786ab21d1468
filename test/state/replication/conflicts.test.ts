// The conflict registry: tracking keys while they have unmerged siblings, listing them, and
// resolving — a resolution that saw every current sibling supersedes them all; one that missed a
// sibling is refused and writes nothing.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MeshError } from '../../../src/errors/table.js';
import { HybridClock } from '../../../src/state/hlc.js';
import { EMPTY_VECTOR, contextOf, encodeContext, stateTag, type Siblings } from '../../../src/state/replication/clock.js';
import { ConflictRegistry, checkResolution } from '../../../src/state/replication/conflicts.js';
import { ConflictResolver, type Payload } from '../../../src/state/replication/merge.js';

const NODES = ['node-a', 'node-b', 'node-c', 'node-d'];
const text = (s: string): Payload => ({ value: Buffer.from(s), contentType: 'text/plain' });

function setup() {
  let now = 1_000;
  const hlc = new HybridClock(() => now);
  const resolver = new ConflictResolver({ policies: [{ prefix: '', strategy: 'siblings' }], maxSiblings: 3 });
  const registry = new ConflictRegistry({ now: () => now });
  /** n writers that never saw each other, reconciled into one state, tracked. */
  const conflicting = (key: string, n: number) => {
    let state: Siblings<Payload> = [];
    for (let i = 0; i < n; i++) {
      now += 1;
      const written = resolver.write(key, [], EMPTY_VECTOR, text(`${key}#${i}`), NODES[i % NODES.length]!, hlc).state;
      const outcome = resolver.reconcile(key, state, written);
      state = outcome.state;
      registry.track(key, state, outcome.conflict);
    }
    return state;
  };
  return { resolver, registry, hlc, conflicting, tick: () => (now += 1) };
}

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (error) {
    if (error instanceof MeshError) return error.code;
    throw error;
  }
  return undefined;
};

describe('ConflictRegistry', () => {
  it('tracks a key from its first conflict until a write settles it', () => {
    const { resolver, registry, hlc, conflicting } = setup();
    const state = conflicting('doc/1', 2);
    const entry = registry.get('doc/1')!;
    expect(entry).toMatchObject({ key: 'doc/1', strategy: 'siblings', reason: 'siblings', etag: stateTag(state), since: 1_002, dropped: 0 });
    expect(entry.siblings.map((s) => s.value.toString())).toEqual(['doc/1#0', 'doc/1#1']);
    expect(registry.track('doc/1', state, resolver.reconcile('doc/1', state, state).conflict)).toBe('unchanged');

    const context = registry.resolve('doc/1', `"${entry.etag}"`);
    const settled = resolver.write('doc/1', state, context, text('winner'), 'node-a', hlc);
    expect(settled.state.map((v) => v.value.value.toString())).toEqual(['winner']);
    expect(registry.track('doc/1', settled.state, settled.conflict)).toBe('cleared');
    expect(registry.get('doc/1')).toBeUndefined();
    expect(code(() => registry.resolve('doc/1', entry.etag))).toBe('not_found');
  });

  it('counts versions the sibling cap dropped and keeps the first time seen', () => {
    const { registry, conflicting } = setup();
    conflicting('doc/2', 5);
    expect(registry.get('doc/2')).toMatchObject({ since: 1_002, dropped: 2 });
    expect(registry.get('doc/2')!.siblings).toHaveLength(3);
  });

  it('lists conflicts by key, filtered by prefix, in pages', () => {
    const { registry, conflicting } = setup();
    for (const key of ['b/2', 'a/1', 'b/1', 'b/3', 'c/1']) conflicting(key, 2);
    expect(registry.list().conflicts.map((c) => c.key)).toEqual(['a/1', 'b/1', 'b/2', 'b/3', 'c/1']);
    const first = registry.list({ prefix: 'b/', limit: 2 });
    expect(first.conflicts.map((c) => c.key)).toEqual(['b/1', 'b/2']);
    expect(first.next).toBe('b/2');
    const second = registry.list({ prefix: 'b/', limit: 2, after: first.next! });
    expect(second).toEqual({ conflicts: [expect.objectContaining({ key: 'b/3', versions: expect.any(Array) })] });
    expect(second.conflicts[0]!.versions).toHaveLength(2);
    expect(code(() => registry.list({ limit: 0 }))).toBe('bad_request');
  });

  it('refuses a resolution made from a stale read, and unreadable ones', () => {
    const { resolver, registry, hlc, conflicting, tick } = setup();
    const before = conflicting('doc/3', 2);
    const staleEtag = stateTag(before)!;
    const staleContext = encodeContext(contextOf(before));
    // A third concurrent write arrives after the client read the siblings.
    tick();
    const third = resolver.write('doc/3', [], EMPTY_VECTOR, text('late'), 'node-c', hlc).state;
    const outcome = resolver.reconcile('doc/3', before, third);
    expect(registry.track('doc/3', outcome.state, outcome.conflict)).toBe('updated');
    expect(code(() => registry.resolve('doc/3', staleEtag))).toBe('precondition_failed');
    expect(code(() => registry.resolve('doc/3', staleContext))).toBe('precondition_failed');
    expect(code(() => registry.resolve('doc/3', '""'))).toBe('bad_request');
    expect(code(() => registry.resolve('doc/3', 'not a context!'))).toBe('bad_request');
    // A context that covers everything (even if it is more than the current siblings) is fine.
    const fresh = registry.get('doc/3')!;
    expect(code(() => registry.resolve('doc/3', fresh.context))).toBeUndefined();
    expect(code(() => registry.resolve('doc/3', `W/"${fresh.etag}"`))).toBeUndefined();
  });

  it('forgets the longest-standing conflict when full', () => {
    const registry = new ConflictRegistry({ maxEntries: 2 });
    const { resolver, conflicting } = setup();
    for (const key of ['k1', 'k2', 'k3']) {
      const state = conflicting(key, 2);
      registry.track(key, state, resolver.reconcile(key, state, state).conflict ?? resolver.reconcile(key, [], state).conflict);
    }
    expect(registry.list().conflicts.map((c) => c.key)).toEqual(['k2', 'k3']);
    expect(registry.forgotten).toBe(1);
  });

  it('property: a resolution that saw every sibling supersedes them all; one that missed any is refused', () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: 6 }), fc.nat(), (n, pick) => {
        const { resolver, hlc, conflicting } = setup();
        const state = conflicting('p/1', n);
        const context = checkResolution(state, encodeContext(contextOf(state)));
        const settled = resolver.write('p/1', state, context, text('w'), 'node-b', hlc).state;
        expect(settled).toHaveLength(1);
        const missing = pick % state.length;
        const partial = contextOf(state.filter((_, i) => i !== missing));
        expect(code(() => checkResolution(state, encodeContext(partial)))).toBe('precondition_failed');
      }),
      { numRuns: 200 },
    );
  });
});
