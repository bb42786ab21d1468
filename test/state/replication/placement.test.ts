// Placement: a key's replicas are the first N distinct members clockwise on hashring's ketama ring
// over the live members, in the ring's own order, and they follow membership changes. The key
// index built on it (anti-entropy's trees and strays) reads the same after any series of writes and
// deletes as one built at once from where they ended, placement changes included.
import fc from 'fast-check';
import HashRing from 'hashring';
import { describe, expect, it } from 'vitest';
import { MutableMembership, type Member } from '../../../src/membership/membership.js';
import { PlacementRing } from '../../../src/state/replication/ring.js';
import { KeyIndex } from '../../../src/state/replication/key-index.js';

const member = (id: string, state: Member['state'] = 'alive'): Member => ({ id, address: `127.0.0.1:${1000 + id.charCodeAt(id.length - 1)}`, state, epoch: 0 });
const KEYS = Array.from({ length: 200 }, (_, i) => `tenant-${i % 7}/session-${i}`);

describe('placement ring', () => {
  it('gives each key the first N distinct members of hashring’s own range, primary first', () => {
    const membership = new MutableMembership(member('node-a'), ['node-b', 'node-c', 'node-d', 'node-e'].map((id) => member(id)));
    const ring = new PlacementRing(membership, 3);
    const reference = new HashRing(['node-a', 'node-b', 'node-c', 'node-d', 'node-e']);
    for (const key of KEYS) {
      const ids = ring.replicas(key).map((m) => m.id);
      expect(ids).toEqual(reference.range(key, 3));
      expect(new Set(ids).size).toBe(3);
    }
    // Every member is a primary for some keys: the ring spreads them.
    expect(new Set(KEYS.map((k) => ring.replicas(k)[0]!.id)).size).toBe(5);
    ring.close();
  });

  it('follows membership: a dead member leaves every replica set, a new one joins, only affected keys move', () => {
    const membership = new MutableMembership(member('node-a'), ['node-b', 'node-c', 'node-d'].map((id) => member(id)));
    const ring = new PlacementRing(membership, 3);
    const changes: Array<readonly string[]> = [];
    ring.on('change', (ids) => changes.push(ids));
    const before = new Map(KEYS.map((k) => [k, ring.replicas(k).map((m) => m.id)]));

    membership.upsert(member('node-c', 'dead'));
    expect(changes).toEqual([['node-a', 'node-b', 'node-d']]);
    for (const key of KEYS) {
      const ids = ring.replicas(key).map((m) => m.id);
      expect(ids).toEqual(new HashRing(['node-a', 'node-b', 'node-d']).range(key, 3));
      expect(ids).not.toContain('node-c');
    }

    membership.upsert(member('node-c', 'alive'));
    membership.upsert(member('node-e'));
    expect(changes.at(-1)).toEqual(['node-a', 'node-b', 'node-c', 'node-d', 'node-e']);
    let moved = 0;
    for (const key of KEYS) {
      const ids = ring.replicas(key).map((m) => m.id);
      expect(ids).toEqual(new HashRing(['node-a', 'node-b', 'node-c', 'node-d', 'node-e']).range(key, 3));
      if (ids.join() !== before.get(key)!.join()) moved++;
    }
    // Consistent hashing: adding one member of five moves some keys, not all of them.
    expect(moved).toBeGreaterThan(0);
    expect(moved).toBeLessThan(KEYS.length);

    // A suspect member still owns its keys; a state change that keeps the live set emits nothing.
    const count = changes.length;
    membership.upsert(member('node-e', 'suspect'));
    expect(changes.length).toBe(count);
    // A member that moved keeps its keys, and every answer names its new address (lookups are kept
    // between ring changes, never across one).
    const keyOfE = KEYS.find((k) => ring.replicas(k).some((m) => m.id === 'node-e'))!;
    membership.upsert({ ...member('node-e'), address: '127.0.0.1:9999' });
    expect(ring.replicas(keyOfE).find((m) => m.id === 'node-e')!.address).toBe('127.0.0.1:9999');
    ring.close();
  });

  it('has fewer replicas than the factor while fewer members are live', () => {
    const membership = new MutableMembership(member('node-a'), [member('node-b')]);
    const ring = new PlacementRing(membership, 3);
    expect(ring.size).toBe(2);
    expect(ring.replicas('acme/x').map((m) => m.id).sort()).toEqual(['node-a', 'node-b']);
    ring.close();
  });

  it('key index: trees and strays after any writes, deletes and placement changes equal a fresh build of the final digests', () => {
    const peers = ['node-b', 'node-c', 'node-d', 'node-e'];
    const op = fc.oneof(
      fc.record({ kind: fc.constant('set' as const), key: fc.integer({ min: 0, max: 40 }), digest: fc.string({ minLength: 1, maxLength: 4 }) }),
      fc.record({ kind: fc.constant('delete' as const), key: fc.integer({ min: 0, max: 40 }) }),
      fc.record({ kind: fc.constant('read' as const), peer: fc.constantFrom(...peers) }),
      fc.record({ kind: fc.constant('flip' as const), peer: fc.constantFrom(...peers) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 80 }), (ops) => {
        const membership = new MutableMembership(member('node-a'), peers.map((id) => member(id)));
        const ring = new PlacementRing(membership, 3);
        const index = new KeyIndex('node-a', ring);
        const digests = new Map<string, string>();
        for (const o of ops) {
          if (o.kind === 'set') {
            index.set(`t/k${o.key}`, o.digest);
            digests.set(`t/k${o.key}`, o.digest);
          } else if (o.kind === 'delete') {
            index.delete(`t/k${o.key}`);
            digests.delete(`t/k${o.key}`);
          } else if (o.kind === 'read') {
            index.treeFor(o.peer).root();
          } else {
            const alive = membership.get(o.peer)!.state === 'alive';
            membership.upsert(member(o.peer, alive ? 'dead' : 'alive'));
            if (index.outdated) index.rebuild();
          }
        }
        const fresh = new KeyIndex('node-a', ring);
        for (const [key, digest] of digests) fresh.set(key, digest);
        for (const peer of peers) expect(index.treeFor(peer).root()).toBe(fresh.treeFor(peer).root());
        expect(index.strayKeys().sort()).toEqual(fresh.strayKeys().sort());
        expect([...index.entries()].sort()).toEqual([...fresh.entries()].sort());
        ring.close();
      }),
      { numRuns: 200 },
    );
  });
});
