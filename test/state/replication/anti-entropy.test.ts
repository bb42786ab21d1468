// Anti-entropy between in-process sidecars replicating over real mTLS: divergence made by applying
// records straight to one replica's store (bypassing replication) is found by comparing Merkle
// trees and repaired by one round that sends only the differing keys; a peer coming back to life
// gets a round without waiting for the interval.
import { describe, expect, it } from 'vitest';
import type { AntiEntropy } from '../../../src/state/replication/anti-entropy.js';
import type { ContextRecord } from '../../../src/state/record.js';
import { makeVersion, versionNodeTag } from '../../../src/state/version.js';
import { metricValue, until } from '../../helpers/mesh.js';
import { call, clusterPerTest, type Node, type TestCluster } from './cluster.js';

const KEYS = 300;

function aeOf(node: Node): AntiEntropy {
  return node.running!.sidecar.state!.antiEntropy!;
}

function admin(node: Node): string {
  return `http://127.0.0.1:${node.running!.sidecar.ports.admin}`;
}

/** A record stamped by `node`'s clock, as a coordinator there would stamp it. */
function stamped(node: Node, key: string, value: string, tombstone = false): ContextRecord {
  const t = node.running!.sidecar.state!.store.clock.tick();
  return {
    key,
    value: Buffer.from(tombstone ? '' : value),
    contentType: tombstone ? '' : 'text/plain',
    version: makeVersion(t, versionNodeTag(node.id)),
    expiresAt: 0,
    retention: 'normal',
    updatedAt: t.wall,
    ...(tombstone ? { tombstone: true } : {}),
  };
}

async function heldValue(node: Node, key: string): Promise<string | undefined> {
  const record = await aeOf(node).replica.read(key);
  return record && !record.tombstone ? record.value.toString() : record ? '<deleted>' : undefined;
}

describe('anti-entropy', () => {
  const launch = clusterPerTest();

  async function cluster(): Promise<TestCluster> {
    // Rounds only when the test asks (or membership changes): the counts below are one round's.
    const c = await launch(['node-a', 'node-b', 'node-c'], { antiEntropy: { interval: '1h' } });
    return c;
  }

  async function seed(c: TestCluster): Promise<void> {
    const [a] = c.nodes as [Node];
    for (let i = 0; i < KEYS; i += 50) {
      await Promise.all(Array.from({ length: 50 }, (_, j) => call(a.api(), 'PUT', `acme/k${i + j}`, { body: `v${i + j}`, consistency: 'eventual' }).then((r) => expect(r.status).toBe(204))));
    }
    await until(() => c.nodes.every((n) => aeOf(n).index.size === KEYS), 10_000, 'every replica to hold every key');
    // Replication delivers asynchronously: settle until the trees agree.
    await until(async () => (await aeOf(a).requestRound('node-b')).result === 'in_sync', 10_000, 'a and b in sync');
  }

  it('one round repairs keys diverged on either side and sends only those', async () => {
    const c = await cluster();
    const [a, b] = c.nodes as [Node, Node];
    await seed(c);

    // Straight into node-b's store: 5 newer versions and 2 deletions that only b has.
    for (let i = 0; i < 5; i++) expect(await aeOf(b).replica.apply(stamped(b, `acme/k${i}`, `b-newer-${i}`))).toBe('applied');
    for (let i = 5; i < 7; i++) expect(await aeOf(b).replica.apply(stamped(b, `acme/k${i}`, '', true))).toBe('applied');
    // … and 3 keys only node-a has.
    for (let i = 0; i < 3; i++) expect(await aeOf(a).replica.apply(stamped(a, `acme/only-a-${i}`, `a-only-${i}`))).toBe('applied');
    expect(aeOf(a).index.treeFor('node-b').root()).not.toBe(aeOf(b).index.treeFor('node-a').root());

    const stats = await aeOf(a).requestRound('node-b');
    expect(stats.result).toBe('repaired');
    expect(stats.keysDiffering).toBe(10);
    // a sent its copies of the 10 keys and got b's 7: the 300 others stayed home.
    expect(stats.recordsSent).toBe(10);
    expect(stats.recordsReceived).toBe(7);
    expect(stats.repairedHere).toBe(7);
    expect(stats.repairedThere).toBe(3);
    // Only the differing leaves' entries were compared: ~1 key per leaf at this size.
    expect(stats.entriesCompared).toBeLessThan(3 * 10 + 10);
    expect(stats.leavesDiffering).toBeLessThanOrEqual(10);

    for (let i = 0; i < 5; i++) expect(await heldValue(a, `acme/k${i}`)).toBe(`b-newer-${i}`);
    for (let i = 5; i < 7; i++) expect(await heldValue(a, `acme/k${i}`)).toBe('<deleted>');
    for (let i = 0; i < 3; i++) expect(await heldValue(b, `acme/only-a-${i}`)).toBe(`a-only-${i}`);
    expect(await heldValue(b, 'acme/k100')).toBe('v100');
    expect(aeOf(a).index.treeFor('node-b').root()).toBe(aeOf(b).index.treeFor('node-a').root());

    // The pair is in sync now: the next round stops at the root.
    const again = await aeOf(a).requestRound('node-b');
    expect([again.result, again.keysDiffering, again.nodesCompared]).toEqual(['in_sync', 0, 1]);

    // The API reads the repaired state, and the metrics count the round.
    expect((await call(a.api(), 'GET', 'acme/k6', { consistency: 'eventual' })).status).toBe(404);
    expect(await metricValue(admin(a), 'ctxmesh_anti_entropy_rounds_total', { peer: 'node-b', result: 'repaired' })).toBe(1);
    expect(await metricValue(admin(a), 'ctxmesh_anti_entropy_keys_repaired_total', { peer: 'node-b' })).toBe(10);
    expect(await metricValue(admin(a), 'ctxmesh_anti_entropy_bytes_total', { peer: 'node-b', direction: 'sent' })).toBeGreaterThan(0);
  });

  it('answers malformed messages with 400 and a different ring with 409, changing nothing', async () => {
    const c = await cluster();
    const [a] = c.nodes as [Node];
    const router = a.running!.sidecar.peers;
    const handler = (name: string) => router.get(name)!;
    const caller = { spiffeId: 'spiffe://test/x' };
    await expect(Promise.resolve().then(() => handler('ae-summary')(Buffer.from('nope'), caller))).rejects.toMatchObject({ code: 'bad_request' });
    await expect(Promise.resolve().then(() => handler('ae-nodes')(Buffer.from(JSON.stringify({ from: 'node-b', ring: aeOf(a).index.fingerprint, level: 9, indices: [] })), caller))).rejects.toMatchObject({ code: 'bad_request' });
    await expect(Promise.resolve().then(() => handler('ae-records')(Buffer.from([0, 0, 0, 200, 1]), caller))).rejects.toMatchObject({ code: 'bad_request' });
    const mismatch = await handler('ae-summary')(Buffer.from(JSON.stringify({ from: 'node-b', ring: 'other' })), caller);
    expect(mismatch.status).toBe(409);
  });

  it('a peer that comes back to life gets a round at once', async () => {
    const c = await cluster();
    const [a, , n3] = c.nodes as [Node, Node, Node];
    await seed(c);
    const membership = a.running!.sidecar.membership;
    const member = membership.get('node-c')!;

    // node-a declares node-c dead and takes writes node-c does not get.
    membership.upsert({ ...member, state: 'dead', epoch: member.epoch + 1 });
    for (let i = 0; i < 4; i++) await aeOf(a).replica.apply(stamped(a, `acme/while-away-${i}`, `w${i}`));
    expect(await heldValue(n3, 'acme/while-away-0')).toBeUndefined();

    membership.upsert({ ...member, state: 'alive', epoch: member.epoch + 2 });
    await until(async () => (await heldValue(n3, 'acme/while-away-3')) === 'w3', 10_000, 'the returning peer to be repaired');
    // The keys land inside the round: its figures are recorded once it has finished.
    await until(() => aeOf(a).lastRound.get('node-c')?.result === 'repaired', 5_000, 'the round with node-c to be recorded');
    expect(await metricValue(admin(a), 'ctxmesh_anti_entropy_rounds_total', { peer: 'node-c', result: 'repaired' })).toBeGreaterThanOrEqual(1);
  });
});
