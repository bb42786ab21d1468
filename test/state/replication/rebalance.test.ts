// Rebalancing between in-process sidecars (RF=2 over four, so placement really moves): a member
// leaves while writes go on — its keys are handed to their new replicas and dropped, every key ends
// on exactly its two replicas — then comes back and gets its share again, with nothing lost.
import { describe, expect, it } from 'vitest';
import type { Member } from '../../../src/membership/membership.js';
import type { AntiEntropy } from '../../../src/state/replication/anti-entropy.js';
import { call, clusterPerTest, type Node, type TestCluster } from './cluster.js';

function aeOf(node: Node): AntiEntropy {
  return node.running!.sidecar.state!.antiEntropy!;
}

/** Which nodes hold each key (any state), and whether each holder has the expected value. */
async function placementProblems(c: TestCluster, expected: Map<string, string>, owners: (key: string) => string[]): Promise<string[]> {
  const problems: string[] = [];
  for (const [key, value] of expected) {
    const holders: string[] = [];
    for (const node of c.nodes) {
      if (!node.running) continue;
      const record = await aeOf(node).replica.read(key);
      if (!record) continue;
      holders.push(node.id);
      if (record.tombstone || record.value.toString() !== value) problems.push(`${key} on ${node.id}: ${record.tombstone ? 'deleted' : record.value.toString()} (want ${value})`);
    }
    const want = owners(key).sort();
    if (holders.sort().join() !== want.join()) problems.push(`${key} held by [${holders}] (want [${want}])`);
  }
  return problems;
}

/** Polls until `problems` finds none; on timeout, fails naming the first few. */
async function settle(problems: () => Promise<string[]>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = await problems();
    if (found.length === 0) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${found.length} problems, e.g.\n${found.slice(0, 5).join('\n')}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

describe('rebalancing when members leave and join', () => {
  const launch = clusterPerTest();

  it('hands a leaving member’s keys to their new replicas and takes them back when it returns, under writes', async () => {
    const c = await launch(['node-a', 'node-b', 'node-c', 'node-d'], { factor: 2, peerTimeout: '2s', writeTimeout: '4s', antiEntropy: { interval: '2s' } });
    const [a, b, n3, d] = c.nodes as [Node, Node, Node, Node];
    const acked = new Map<string, string>();
    let n = 0;
    // Writes 20 at a time; one that is not acknowledged (a peer call timing out on a busy machine)
    // is simply not expected anywhere.
    const writeSome = async (count: number, via: Node[]): Promise<void> => {
      for (let done = 0; done < count; done += 20) {
        await Promise.all(
          Array.from({ length: Math.min(20, count - done) }, async () => {
            const id = n++;
            const key = `acme/r${id}`;
            const node = via[id % via.length]!;
            const res = await call(node.api(), 'PUT', key, { body: `v${id}`, consistency: 'session' });
            if (res.status === 204) acked.set(key, `v${id}`);
          }),
        );
      }
    };
    await writeSome(200, [a, b, n3, d]);
    expect(acked.size).toBeGreaterThan(180);
    const ringOf = (node: Node) => node.running!.sidecar.state!.replicator!.ring;
    const ownersNow = (key: string) => ringOf(a).replicas(key).map((m) => m.id);
    await settle(() => placementProblems(c, acked, ownersNow), 15_000, 'every key on its two replicas');
    const heldByD = (await aeOf(d).held('', undefined, 10_000)).keys.length;
    expect(heldByD).toBeGreaterThan(0);

    // node-d leaves: it drains itself out of the ring, the others forget it; writes go on.
    const writing = (async () => {
      for (let round = 0; round < 10; round++) await writeSome(10, [a, b, n3]);
    })();
    const self = d.running!.sidecar.membership.self;
    d.running!.sidecar.membership.upsert({ ...self, state: 'draining', epoch: self.epoch + 1 });
    for (const node of [a, b, n3]) {
      const membership = node.running!.sidecar.membership;
      membership.update(membership.members().filter((m) => m.id !== 'node-d' && m.id !== node.id));
    }
    await writing;
    expect(ringOf(a).liveIds()).toEqual(['node-a', 'node-b', 'node-c']);
    await settle(() => placementProblems(c, acked, ownersNow), 20_000, 'every key on its two replicas among a, b, c');
    expect((await aeOf(d).held('', undefined, 10_000)).keys).toEqual([]);
    expect(aeOf(d).rebalancer.totals.dropped).toBeGreaterThanOrEqual(heldByD);

    // node-d comes back: the others add it, it rejoins the ring, and gets its share streamed back.
    const back: Member = { ...d.running!.sidecar.membership.self, state: 'alive', epoch: self.epoch + 2 };
    d.running!.sidecar.membership.upsert(back);
    for (const node of [a, b, n3]) node.running!.sidecar.membership.upsert(back);
    await writeSome(50, [a, b, n3, d]);
    expect(ringOf(a).liveIds()).toEqual(['node-a', 'node-b', 'node-c', 'node-d']);
    await settle(() => placementProblems(c, acked, ownersNow), 20_000, 'every key on its two replicas among a, b, c, d');
    expect((await aeOf(d).held('', undefined, 10_000)).keys.length).toBeGreaterThan(0);
    // Every acknowledged write reads back through the API.
    for (const [key, value] of acked) expect((await call(b.api(), 'GET', key, { consistency: 'session' })).body).toBe(value);
  }, 90_000);
});
