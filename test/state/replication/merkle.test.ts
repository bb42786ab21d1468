// Merkle trees for anti-entropy: equal key sets give equal trees whatever the order of writes;
// any single difference is found; and at 1% divergence over 100k keys the walk reaches exactly the
// differing leaves and compares only the children of differing nodes (counts, not times).
import fc from 'fast-check';
import HashRing from 'hashring';
import { describe, expect, it } from 'vitest';
import {
  MERKLE_DEPTH,
  MERKLE_FANOUT,
  MERKLE_LEAVES,
  MerkleError,
  MerkleTree,
  decodeSummary,
  diff,
  diffEntries,
  ringPosition,
  type KeyRange,
  type MerkleDiff,
} from '../../../src/state/replication/merkle.js';

type Op = { kind: 'set'; key: number; digest: number } | { kind: 'delete'; key: number };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('set' as const), key: fc.nat(60), digest: fc.nat(4) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const), key: fc.nat(60) }) },
);

function apply(tree: MerkleTree, ops: readonly Op[]): Map<string, string> {
  const model = new Map<string, string>();
  for (const op of ops) {
    const key = `ctx/${op.key}`;
    if (op.kind === 'set') {
      tree.set(key, `v${op.digest}`);
      model.set(key, `v${op.digest}`);
    } else {
      tree.delete(key);
      model.delete(key);
    }
  }
  return model;
}

function build(entries: Iterable<[string, string]>, range?: KeyRange): MerkleTree {
  const tree = new MerkleTree(range);
  for (const [key, digest] of entries) tree.set(key, digest);
  return tree;
}

/** The peer exchange as the replicator runs it: levels 0-2 first, then one level per round. */
function exchange(a: MerkleTree, b: MerkleTree): { result: MerkleDiff; rounds: number; hashesSent: number } {
  const summary = decodeSummary(a.encodeLevels(0, 2));
  let hashesSent = summary.nodeCount;
  let rounds = 1;
  for (;;) {
    const result = diff(summary, b);
    if (result.request === undefined) return { result, rounds, hashesSent };
    summary.add(decodeSummary(a.encodeNodes(result.request.level, result.request.indices)));
    hashesSent += result.request.indices.length;
    rounds++;
  }
}

describe('MerkleTree: properties', () => {
  it('incremental updates give the same tree as a fresh build of the final key set, in any order', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 80 }), (ops) => {
        const tree = new MerkleTree();
        const model = apply(tree, ops);
        const reversed = build([...model].reverse());
        expect(tree.root()).toBe(reversed.root());
        expect(tree.encodeLevels(0, 3).equals(reversed.encodeLevels(0, 3))).toBe(true);
        // Every leaf a key of the history ever touched (the others are zero in both).
        for (let k = 0; k <= 60; k++) {
          const leaf = tree.leafOf(`ctx/${k}`);
          expect(tree.words(MERKLE_DEPTH, leaf)).toEqual(reversed.words(MERKLE_DEPTH, leaf));
        }
        expect(tree.size).toBe(model.size);
        expect(exchange(tree, reversed).result.leaves).toEqual([]);
        if (model.size === 0) expect(tree.root()).toBe('0000000000000000');
      }),
      { numRuns: 150 },
    );
  });

  it('any single differing key (changed, missing or extra) is found, and only its leaf', () => {
    const base = new Map(Array.from({ length: 500 }, (_, i) => [`conv/${i}`, `d${i}`] as [string, string]));
    const same = build(base);
    fc.assert(
      fc.property(fc.nat(599), fc.constantFrom('change', 'remove'), (n, how) => {
        const key = `conv/${n}`;
        const other = new Map(base);
        if (how === 'remove' && other.has(key)) other.delete(key);
        else other.set(key, 'changed');
        const tree = build(other);
        expect(tree.root()).not.toBe(same.root());
        const { result } = exchange(same, tree);
        expect(result.leaves).toEqual([same.leafOf(key)]);
        expect(diffEntries(same.entriesIn(result.leaves), tree.entriesIn(result.leaves))).toEqual([key]);
        expect(result.ranges).toEqual([same.leafRange(same.leafOf(key))]);
      }),
      { numRuns: 150 },
    );
  });

  it('leaf ranges tile the tree\'s range exactly, for wrapping ranges too', () => {
    fc.assert(
      fc.property(fc.nat(2 ** 32 - 1), fc.nat(2 ** 32 - 1), fc.array(fc.string(), { maxLength: 30 }), (start, end, keys) => {
        const tree = new MerkleTree({ start, end });
        const first = tree.leafRange(0);
        const last = tree.leafRange(MERKLE_LEAVES - 1);
        expect(first.start).toBe(start);
        expect(last.end).toBe(end);
        for (const leaf of [1, 77, MERKLE_LEAVES / 2, MERKLE_LEAVES - 1]) expect(tree.leafRange(leaf).start).toBe(tree.leafRange(leaf - 1).end);
        for (const key of keys) {
          const position = ringPosition(key);
          if (!tree.covers(key)) {
            expect(() => tree.set(key, 'x')).toThrow(MerkleError);
            continue;
          }
          const { start: s, end: e } = tree.leafRange(tree.leafOf(key));
          const width = (e - s + 2 ** 32) % 2 ** 32 || 2 ** 32;
          expect((position - s + 2 ** 32) % 2 ** 32).toBeLessThan(width);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('MerkleTree: 100k keys', () => {
  it('1% divergence: the walk reaches exactly the differing leaves and only children of differing nodes', () => {
    const KEYS = 100_000;
    const a = new MerkleTree();
    const b = new MerkleTree();
    for (let i = 0; i < KEYS; i++) {
      const key = `tenant-${i % 97}/session-${i}`;
      a.set(key, `1712000000${i}.0@node-a`);
      b.set(key, `1712000000${i}.0@node-a`);
    }
    expect(a.root()).toBe(b.root());
    // 1%: 500 keys changed on b, 250 only on a, 250 only on b.
    const differing = new Set<string>();
    for (let i = 0; i < 500; i++) {
      const key = `tenant-${(i * 199) % 97}/session-${(i * 199) % KEYS}`;
      b.set(key, `1712999999${i}.3@node-b`);
      differing.add(key);
    }
    for (let i = 0; i < 250; i++) {
      a.set(`extra-a/${i}`, 'x');
      b.set(`extra-b/${i}`, 'y');
      differing.add(`extra-a/${i}`);
      differing.add(`extra-b/${i}`);
    }
    expect(differing.size).toBe(1_000);

    const { result, rounds, hashesSent } = exchange(a, b);
    const expectedLeaves = [...new Set([...differing].map((key) => a.leafOf(key)))].sort((x, y) => x - y);
    expect(result.leaves).toEqual(expectedLeaves);
    expect(rounds).toBe(3);

    // Nodes compared: every differing node's children, nothing under an equal node.
    const differingAt = (level: number) => new Set(expectedLeaves.map((leaf) => Math.floor(leaf / MERKLE_FANOUT ** (MERKLE_DEPTH - level)))).size;
    let expectedCompared = 1;
    for (let level = 0; level < MERKLE_DEPTH; level++) expectedCompared += MERKLE_FANOUT * differingAt(level);
    expect(result.compared).toBe(expectedCompared);
    expect(hashesSent).toBe(1 + 16 + 256 + MERKLE_FANOUT * (differingAt(2) + differingAt(3)));
    expect(hashesSent).toBeLessThan(25_000);

    // The leaves hold ~1.5% of the keys, and the entry exchange names exactly the differing ones.
    const mine = a.entriesIn(result.leaves);
    const theirs = b.entriesIn(result.leaves);
    expect(mine.length).toBeLessThan(KEYS * 0.03);
    expect(diffEntries(mine, theirs)).toEqual([...differing].sort());
  });
});

describe('MerkleTree: examples', () => {
  it('places keys where hashring (ketama) does', () => {
    const ring = new HashRing([]) as unknown as { hashValue(key: string): number };
    for (const key of ['a', 'tenant-1/session-9', 'ünïcødé', '']) expect(ringPosition(key)).toBe(ring.hashValue(key));
  });

  it('summaries round-trip, and malformed or mismatched ones are refused', () => {
    const tree = build([['k1', 'a'], ['k2', 'b']]);
    const summary = decodeSummary(tree.encodeLevels(0, 1));
    expect(summary.nodeCount).toBe(17);
    expect(diff(summary, tree)).toMatchObject({ leaves: [], compared: 1 });
    const sparse = decodeSummary(tree.encodeNodes(4, [tree.leafOf('k1')]));
    expect(sparse.words(4, tree.leafOf('k1'))).toEqual(tree.words(4, tree.leafOf('k1')));
    expect(() => decodeSummary(Buffer.from('nonsense'))).toThrow(MerkleError);
    expect(() => decodeSummary(tree.encodeLevels(0, 2).subarray(0, 100))).toThrow(MerkleError);
    expect(() => diff(summary, new MerkleTree({ start: 5, end: 9 }))).toThrow(MerkleError);
    expect(() => tree.encodeLevels(0, 5)).toThrow(MerkleError);
    expect(() => new MerkleTree({ start: -1, end: 3 })).toThrow(MerkleError);
  });

  it('setting the same digest twice changes nothing; deleting restores the previous root', () => {
    const tree = build([['k1', 'a']]);
    const before = tree.root();
    tree.set('k1', 'a');
    expect(tree.root()).toBe(before);
    tree.set('k2', 'b');
    expect(tree.root()).not.toBe(before);
    expect(tree.delete('k2')).toBe(true);
    expect(tree.delete('k2')).toBe(false);
    expect(tree.root()).toBe(before);
    expect(tree.digestOf('k1')).toBe('a');
  });
});
